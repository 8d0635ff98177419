"""The Overview tab: what `graft show` says about the artifact, in brief."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.console import Group
from rich.filesize import decimal as human_size
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from graft.lineage import Touch
from graft.registry import ArtifactDetail
from graft.registry.listing import LineageStep
from graft.tui.lineage_views import edge_params
from graft.tui.render import adapter_label


class Overview(Static):
    """Kind, method, id, size, dates, parents, children and shared tensors."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("select an artifact", id=id, classes="-message")
        self.fields: dict[str, str] = {}

    def say(self, message: str) -> None:
        """A message instead of an artifact, wrapped to the pane (fields scroll sideways)."""
        self.fields = {}
        self.add_class("-message")
        self.update(message)

    def show(self, detail: ArtifactDetail, touches: Sequence[Touch]) -> None:
        self.remove_class("-message")
        m = detail.manifest
        parents = [s for s in detail.ancestors if s.depth == 1]
        used = {p.id: p.params for p in m.parents}  # a merge's role and weights per input
        fields = {
            "artifact": m.ref,
            "kind": m.kind,
            "method": m.method or "-",
            **(
                {"adapter": adapter_label(detail.adapter_type, detail.adapter or {})}
                if detail.adapter_type
                else {}
            ),
            "id": m.id,
            "size": f"{human_size(m.size)} in {len(m.files)} files, {len(m.tensors)} tensors",
            "created": m.created_at,
            "source": m.source or "-",
            "parents": "\n".join(_parent(p, used.get(p.id, {})) for p in parents) or "none",
            "children": ", ".join(detail.children) or "none",
        }
        if detail.shared:
            fields["shared"] = "\n".join(
                f"{s.tensors} of {len(m.tensors)} tensors ({human_size(s.nbytes)}) with {s.parent}"
                for s in detail.shared
            )
        if parents:
            against = ", ".join(dict.fromkeys(t.parent for t in touches)) or "its parent"
            fields["changed"] = f"{len({t.tensor for t in touches})} tensors against {against}"
        for key, value in m.meta.items():
            fields[f"meta {key}"] = value
        if detail.amendments:
            fields["amended"] = "\n".join(f"{a.at}: {a.describe()}" for a in detail.amendments)
        self.fields = fields
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        for key, value in fields.items():
            table.add_row(key, Text(value))
        self.update(Group(table))


def _parent(step: LineageStep, params: Mapping[str, object]) -> str:
    how = f"{step.relation}, {edge_params(params)}" if params else step.relation
    return f"{step.ref} ({how})"
