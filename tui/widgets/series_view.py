"""The Series tab: how each layer of a run drifted from its base, checkpoint by checkpoint."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text
from textual.widgets import Static

from graft.lineage import Series
from graft.tui.lineage_views import series_table
from graft.tui.widgets.layer_heatmap import unsqueezed

HINT = "select a checkpoint of a run (RUN/checkpoint-N) to see how its layers drifted"


class SeriesView(Static):
    """The run's layers × checkpoints table, with each checkpoint's logged loss."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(Text(HINT, style="dim"), id=id)
        self.series: Series | None = None

    def show(self, series: Series | None, note: str = "") -> None:
        self.series = series
        if series is None:
            self.update(Text(note or HINT, style="dim"))
            return
        table = unsqueezed(series_table(series), self.app.console)
        losses = [f"{s}: {x:.3g}" for s, x in zip(series.steps, series.losses, strict=True) if x]
        parts: list[RenderableType] = [table]
        if losses:
            parts.append(Text("loss at each step  " + "   ".join(losses), style="italic"))
        parts.append(Text("p: draw it to a picture", style="dim"))
        self.update(Group(*parts))
