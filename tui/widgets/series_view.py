"""The Series tab: how each layer of a run drifted from its base, checkpoint by checkpoint."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from graft.lineage import Series
from graft.tui.lineage_views import series_table
from graft.tui.widgets.wide_table import WideTable

HINT = "select a checkpoint of a run (RUN/checkpoint-N) to see how its layers drifted"


class SeriesView(Vertical):
    """The run's layers × checkpoints table, with each checkpoint's logged loss."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.series: Series | None = None

    def compose(self) -> ComposeResult:
        yield Static(Text(HINT, style="dim"), classes="caption")
        yield WideTable()
        yield Static("", classes="losses")

    def show(self, series: Series | None, note: str = "") -> None:
        self.series = series
        caption = self.query_one(".caption", Static)
        losses = self.query_one(".losses", Static)
        if series is None:
            caption.update(Text(note or HINT, style="dim"))
            self.query_one(WideTable).show(None)
            losses.update("")
            return
        table = series_table(series)
        caption.update(Text(str(table.title), style="italic"))
        table.title = None  # above the scrolling table, so that it wraps to the pane
        self.query_one(WideTable).show(table)
        steps = [f"{s}: {x:.3g}" for s, x in zip(series.steps, series.losses, strict=True) if x]
        lines = [Text("loss at each step  " + "   ".join(steps), style="italic")] if steps else []
        losses.update(Text("\n").join([*lines, Text("p: draw it to a picture", style="dim")]))
