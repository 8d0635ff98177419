"""Terminal rendering for the CLI: tables on stdout, progress and errors on stderr."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.filesize import decimal as human_size
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

if TYPE_CHECKING:
    from graft.merge.results import MergeProgress
    from graft.registry import ArtifactDetail, ArtifactRow, Manifest

# Piped output keeps whole lines instead of squeezing tables to 80 columns. No
# markup: names, paths and tensor names come from users' files and print as
# they are ("x[/]" would otherwise be a markup error); styles are Text spans.
out = Console(highlight=False, markup=False, width=None if sys.stdout.isatty() else 400)
err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)


def error(message: str) -> None:
    """One red line on stderr; control characters in names are shown escaped."""
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    err.print(line, style="red")


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
        console=err,
        transient=True,
        disable=not err.is_terminal,
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
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    task = bar.add_task(description, total=None, rate="")
    started = time.monotonic()

    def update(p: MergeProgress) -> None:
        elapsed = max(time.monotonic() - started, 1e-6)
        rate = f"{human_size(int(p.bytes_done / elapsed))}/s"
        bar.update(task, completed=p.tensors_done, total=p.tensors_total, rate=rate)

    with bar:
        yield update


def rows_table(columns: list[str], rows: list[tuple[Any, ...]]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("NULL" if v is None else str(v) for v in row))
    return table


def artifact_table(rows: list[ArtifactRow]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    where = any(r.where != ["local"] for r in rows)  # only once a remote is fetched
    columns = ("NAME", "KIND", "ID", "TENSORS", "SIZE", "METHOD", "PARENTS", "CREATED")
    for column in (*columns, "WHERE") if where else columns:
        table.add_column(column, justify="right" if column in ("TENSORS", "SIZE") else "left")
    for r in rows:
        cells = (
            r.kind,
            r.id[:12],
            str(r.n_tensors),
            human_size(r.size_bytes),
            method_label(r.method, r.adapter_type),
            ", ".join(r.parents),
            r.created_at.replace("T", " ").removesuffix("Z"),
            *([", ".join(r.where)] if where else []),
        )
        # Text, not markup: a name like "sft[v2]" is shown as it is.
        table.add_row(Text.assemble((r.name, "bold"), f"@{r.version}"), *map(Text, cells))
    return table


def method_label(method: str | None, adapter_type: str | None) -> str:
    """The training method, with the adapter type when it says more: "sft (lora)"."""
    if not adapter_type:
        return method or ""
    if method is None or method in adapter_type.split("+"):
        return adapter_type
    return f"{method} ({adapter_type})"


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


def detail_view(detail: ArtifactDetail, *, tensors: bool) -> list[Any]:
    m = detail.manifest
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("artifact", Text.assemble(m.ref, "  ", (m.id, "dim")))
    summary.add_row("kind", m.kind)
    summary.add_row("method", m.method or "-")
    if detail.adapter_type:
        summary.add_row("adapter", adapter_label(detail.adapter_type, detail.adapter or {}))
    summary.add_row("created", m.created_at)
    summary.add_row("source", m.source or "-")
    summary.add_row(
        "size", f"{human_size(m.size)} in {len(m.files)} files, {len(m.tensors)} tensors"
    )
    u = detail.usage
    summary.add_row("stored", f"{human_size(u.stored_bytes)} ({u.ratio:.2f} of its blobs' bytes)")
    for key, value in m.meta.items():
        summary.add_row(f"meta {key}", value)
    for s in detail.shared:
        summary.add_row(
            "shared",
            f"{s.tensors} of {len(m.tensors)} tensors ({human_size(s.nbytes)}) are {s.parent}'s,"
            " stored once",
        )
    if detail.children:
        summary.add_row("children", ", ".join(detail.children))
    for a in detail.amendments:
        summary.add_row("amended", f"{a.at}: {a.describe()}")
    parts: list[Any] = [summary, "", _lineage_tree(detail), "", _files_table(m)]
    if tensors:
        parts += ["", _tensors_table(m)]
    return parts


def _lineage_tree(detail: ArtifactDetail) -> Tree:
    tree = Tree(Text.assemble(("lineage", "bold"), f" of {detail.manifest.ref}"))
    nodes = {0: tree}
    for step in detail.ancestors:
        how = step.relation + (f" by {step.method}" if step.method else "")
        parent = nodes.get(step.depth - 1, tree)
        label = Text.assemble(step.ref, (f" ({step.kind}, {step.id[:12]})", "dim"), f" ← {how}")
        nodes[step.depth] = parent.add(label)
    if not detail.ancestors:
        tree.add(Text("no recorded parents", style="dim"))
    return tree


def _files_table(m: Manifest) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("FILE")
    table.add_column("SIZE", justify="right")
    table.add_column("TENSORS", justify="right")
    for f in m.files:
        table.add_row(f.path, human_size(f.size), str(len(f.tensors)) if f.is_safetensors else "")
    return table


def _tensors_table(m: Manifest) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("TENSOR", "DTYPE", "SHAPE", "SIZE", "BLOB", "FILE"):
        table.add_column(column, justify="right" if column == "SIZE" else "left")
    for f, t in m.tensors:
        shape = "×".join(map(str, t.shape)) or "scalar"
        table.add_row(t.name, t.dtype, shape, human_size(t.nbytes), t.blob[:12], f.path)
    return table
