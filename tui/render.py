"""Terminal rendering for the CLI: tables on stdout, progress and errors on stderr."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from rich.filesize import decimal as human_size

if TYPE_CHECKING:
    from rich.console import Console

    from graft.merge.results import MergeProgress
    from graft.registry import ArtifactRow

    out: Console  # stdout
    err: Console  # stderr


def __getattr__(name: str) -> Console:
    """`out` and `err`, built on first use: importing rich's console takes ~40 ms,
    which `graft ls` piped into a script (plain text, below) never pays."""
    if name == "out":
        return stdout_console()
    if name == "err":
        return stderr_console()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Piped output keeps whole lines instead of squeezing tables to 80 columns. No
# markup: names, paths and tensor names come from users' files and print as
# they are ("x[/]" would otherwise be a markup error); styles are Text spans.
@functools.cache
def stdout_console() -> Console:
    from rich.console import Console

    return Console(highlight=False, markup=False, width=None if sys.stdout.isatty() else 400)


@functools.cache
def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, markup=False, soft_wrap=True)


def stdout_is_terminal() -> bool:
    """Whether stdout gets rich's styled tables: a terminal, or FORCE_COLOR set
    (`graft ls | less -R`), as rich itself decides."""
    return sys.stdout.isatty() or bool(os.environ.get("FORCE_COLOR"))


def print_plain_table(
    columns: Sequence[str], rows: Sequence[Sequence[str]], *, right: Collection[str] = ()
) -> None:
    """Aligned columns two spaces apart, for stdout that is not a terminal: the
    lines rich's borderless table prints there, without loading rich's tables."""
    from rich.cells import cell_len  # display width: a CJK character takes two columns

    columns = [printable(c) for c in columns]
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [
        max([cell_len(c), *(cell_len(row[i]) for row in rows)]) for i, c in enumerate(columns)
    ]

    def line(cells: Sequence[str]) -> str:
        fitted = []
        for column, cell, width in zip(columns, cells, widths, strict=True):
            pad = " " * (width - cell_len(cell))
            fitted.append(pad + cell if column in right else cell + pad)
        return "  ".join(fitted).rstrip()

    sys.stdout.write("".join(line(cells) + "\n" for cells in (columns, *rows)))


def error(message: str) -> None:
    """One red line on stderr; control characters in names are shown escaped."""
    stderr_console().print(printable(message), style="red")


def printable(text: str) -> str:
    """Control characters shown escaped: a name or a value never breaks a line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def print_json(obj: Any) -> None:
    """Plain JSON on stdout (no colour codes), for scripts."""
    print(json.dumps(to_plain(obj), indent=2, default=str))  # str: timestamps, decimals


def to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_plain(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


@contextlib.contextmanager
def progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A byte progress bar on stderr (only when stderr is a terminal)."""
    # A script's or a training job's add: no bar, and no rich.progress.
    if not stderr_console().is_terminal:
        yield lambda done, total: None
        return
    from rich.progress import (  # not at the top: commands that show no bar start faster
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=stderr_console(),
        transient=True,
    )
    task = bar.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield update


@contextlib.contextmanager
def tensor_progress(description: str) -> Iterator[Callable[[MergeProgress], None]]:
    """Tensors done / total and bytes/s on stderr (only when stderr is a terminal)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tensors {task.fields[rate]}"),
        TimeRemainingColumn(),
        console=stderr_console(),
        transient=True,
        disable=not stderr_console().is_terminal,
    )
    task = bar.add_task(description, total=None, rate="")
    started = time.monotonic()

    def update(p: MergeProgress) -> None:
        elapsed = max(time.monotonic() - started, 1e-6)
        rate = f"{human_size(int(p.bytes_done / elapsed))}/s"
        bar.update(task, completed=p.tensors_done, total=p.tensors_total, rate=rate)

    with bar:
        yield update


def method_label(method: str | None, adapter_type: str | None) -> str:
    """The training method, with the adapter type when it says more: "sft (lora)"."""
    if not adapter_type:
        return method or ""
    if method is None or method in adapter_type.split("+"):
        return adapter_type
    return f"{method} ({adapter_type})"


ARTIFACT_COLUMNS = ("NAME", "KIND", "ID", "TENSORS", "SIZE", "METHOD", "PARENTS", "CREATED")
ARTIFACT_RIGHT = frozenset({"TENSORS", "SIZE"})


def artifact_cells(rows: Sequence[ArtifactRow]) -> tuple[list[str], list[list[str]]]:
    """The columns of `graft ls` and each row's cells; WHERE once a remote is fetched."""
    where = any(r.where != ["local"] for r in rows)
    columns = [*ARTIFACT_COLUMNS, *(["WHERE"] if where else [])]
    cells = [
        [
            r.ref,
            r.kind,
            r.id[:12],
            str(r.n_tensors),
            human_size(r.size_bytes),
            method_label(r.method, r.adapter_type),
            ", ".join(r.parents),
            r.created_at.replace("T", " ").removesuffix("Z"),
            *([", ".join(r.where)] if where else []),
        ]
        for r in rows
    ]
    return columns, cells


def sql_cells(rows: Sequence[Sequence[object]]) -> list[list[str]]:
    """A query's rows as text, NULL shown as such."""
    return [["NULL" if v is None else str(v) for v in row] for row in rows]


def made_by(row: ArtifactRow) -> set[str]:
    """The methods `touched --method` finds the artifact by: its own, its adapter type's."""
    return {m for m in (row.method, *(row.adapter_type or "").split("+")) if m}


def adapter_label(adapter_type: str, config: dict[str, Any]) -> str:
    """ "lora r=8 alpha=16 on q_proj, v_proj" from adapter_config.json."""
    parts = [adapter_type]
    parts += [f"r={config['r']}"] if "r" in config else []
    parts += [f"alpha={config['lora_alpha']}"] if "lora_alpha" in config else []
    targets = config.get("target_modules")
    if isinstance(targets, list):
        parts.append("on " + ", ".join(sorted(map(str, targets))))
    elif isinstance(targets, str):
        parts.append(f"on {targets}")
    return " ".join(parts)
