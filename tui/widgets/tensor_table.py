"""The Tensors tab: every tensor of the artifact, and whether it changed against the parent
(for an adapter's factors: whether the base tensor they target changed)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.filesize import decimal as human_size
from rich.text import Text
from textual.widgets import DataTable

from lineage import Touch
from lineage.names import adapter_key
from registry import Manifest

# The name last, so that at 80 columns the change and shape still show.
COLUMNS = ("changed", "rel. change", "dtype", "shape", "size", "tensor")


class TensorTable(DataTable[str | Text]):
    """One row per tensor, added in one batch."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, zebra_stripes=True, cursor_type="row")
        self.changed: list[bool] = []

    def on_mount(self) -> None:
        self.add_columns(*COLUMNS)

    def show(self, manifest: Manifest, touches: Sequence[Touch]) -> None:
        by_name = {t.tensor: t for t in touches}
        rows: list[tuple[str | Text, ...]] = []
        self.changed = []
        for _, t in manifest.tensors:
            touch = by_name.get(t.name)
            key = adapter_key(t.name) if touch is None else None
            if key is not None:  # an adapter's A/B factors change the base tensor they target
                touch = by_name.get(key.base_tensor)
            self.changed.append(touch is not None)
            if touch is None:
                changed, rel = Text("·", style="dim"), Text("")
            else:
                changed = Text(touch.status, style="bold")
                rel = Text("" if touch.rel_change is None else format(touch.rel_change, ".3g"))
            shape = "×".join(map(str, t.shape)) or "scalar"
            rows.append((changed, rel, t.dtype, shape, human_size(t.nbytes), t.name))
        self.clear()
        self.add_rows(rows)
