"""Tables of artifacts for the CLI: `graft ls`, `graft show`, `graft sql`.

Apart from `render` so that the commands that print no table (`add`, `merge`,
`export`, ...) do not load rich's tables and trees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from graft.tui.render import (
    ARTIFACT_RIGHT,
    adapter_label,
    artifact_cells,
    human_size,
    sql_cells,
)

if TYPE_CHECKING:
    from graft.registry import ArtifactDetail, ArtifactRow, Manifest


def rows_table(columns: list[str], rows: list[tuple[Any, ...]]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for cells in sql_cells(rows):
        table.add_row(*cells)
    return table


def artifact_table(rows: list[ArtifactRow]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    columns, cells = artifact_cells(rows)
    for column in columns:
        table.add_column(column, justify="right" if column in ARTIFACT_RIGHT else "left")
    for r, row in zip(rows, cells, strict=True):
        # Text, not markup: a name like "sft[v2]" is shown as it is. The first
        # cell is NAME@N, with the name in bold here.
        table.add_row(Text.assemble((r.name, "bold"), f"@{r.version}"), *map(Text, row[1:]))
    return table


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
