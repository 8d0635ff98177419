"""Options shared by the `graft` subcommands."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from graft.registry import Store


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")(f)


def with_store(f: Callable[..., Any]) -> Callable[..., Any]:
    """Pass the opened store (from --store / GRAFT_STORE / the default) as `store`."""

    @functools.wraps(f)
    @click.pass_context
    def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> Any:
        return f(Store.open(ctx.obj["store"]), *args, **kwargs)

    return wrapper
