"""The Layers tab: layers × modules, each cell the largest relative change against the parent."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from rich.console import Console, Group
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from graft.lineage import Touch
from graft.tui.grids import UNTOUCHED, HeatGrid


def heat_style(variables: Mapping[str, str], value: float | None) -> str:
    """The theme's colour for a relative change (None: added or reshaped): hotter when bigger."""
    if value is None:
        return variables.get("accent", "magenta")
    if value < 1e-3:
        return variables.get("primary", "blue")
    if value < 1e-2:
        return variables.get("success", "green")
    if value < 1e-1:
        return variables.get("warning", "yellow")
    return "bold " + variables.get("error", "red")


def unsqueezed(table: Table, console: Console) -> Table:
    """Fix `table` at its natural width, so that a narrow pane scrolls it sideways
    instead of cutting its columns short."""
    wide = console.options.update_width(10_000)
    table.width = Measurement.get(console, wide, table).maximum
    return table


class LayerHeatmap(Static):
    """Renders a `HeatGrid` with the theme's colours: hotter for bigger changes."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("select an artifact", id=id)
        self.grid = HeatGrid()
        self.caption = ""

    def show(self, touches: Sequence[Touch], layers: Iterable[int | None], caption: str) -> None:
        self.grid = HeatGrid.of(touches, layers)
        self.caption = caption
        self.update(self._render_grid())

    def _style(self, value: float | None) -> str:
        return heat_style(self.app.get_css_variables(), value)

    def _render_grid(self) -> Group | Text:
        g = self.grid
        if not g.values:
            return Text(f"{self.caption}\n\nno recorded changes against a parent", style="dim")
        table = Table(box=None, header_style="bold", pad_edge=False)
        table.add_column("LAYER", justify="right")
        for _, module in g.columns:
            table.add_column(module, justify="center")
        for layer, row in zip(g.layers, g.cells(), strict=True):
            out: list[Text] = [Text(row[0])]
            for (block, module), cell in zip(g.columns, row[1:], strict=True):
                if cell == UNTOUCHED:
                    out.append(Text(cell, style="dim"))
                else:
                    out.append(Text(cell, style=self._style(g.values[(layer, block, module)])))
            table.add_row(*out)
        # The caption above the table, not its title: a title wraps to the table's width.
        return Group(Text(self.caption, style="italic"), unsqueezed(table, self.app.console))
