"""Options shared by the `graft` subcommands."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from graft.registry import Store


def plot_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--plot",
        type=click.Path(dir_okay=False, path_type=Path),
        callback=_picture_name,
        metavar="FILE",
        help="Also draw it to FILE (.png or .svg).",
    )(f)


def _picture_name(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None:
        from graft.tui.pictures import PictureError, picture_format  # only with --plot

        try:
            picture_format(value)
        except PictureError as e:
            raise click.BadParameter(str(e), ctx, param) from None
    return value


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")(f)


def with_store(f: Callable[..., Any]) -> Callable[..., Any]:
    """Pass the opened store (from --store / GRAFT_STORE / the default) as `store`."""

    @functools.wraps(f)
    @click.pass_context
    def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> Any:
        return f(Store.open(ctx.obj["store"]), *args, **kwargs)

    return wrapper
