"""The Layers tab: layers × modules, each cell the largest relative change against the parent."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from graft.lineage import Touch
from graft.tui.grids import UNTOUCHED, HeatGrid, short_legend, short_module
from graft.tui.widgets.wide_table import WideTable


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


def grid_table(header: Sequence[str], rows: Iterable[Sequence[Text]]) -> Table:
    """A layers × modules table: the layer on the right of its column, cells centred,
    module names shortened (`short_module`)."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column(header[0], justify="right", no_wrap=True)
    for module in header[1:]:
        table.add_column(short_module(module), justify="center", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


class LayerHeatmap(Vertical):
    """Renders a `HeatGrid` with the theme's colours: hotter for bigger changes."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.grid = HeatGrid()
        self.caption = ""

    def compose(self) -> ComposeResult:
        yield Static(Text("select an artifact", style="dim"), classes="caption")
        yield WideTable()

    def show(self, touches: Sequence[Touch], layers: Iterable[int | None], caption: str) -> None:
        self.grid = g = HeatGrid.of(touches, layers)
        self.caption = caption
        table = self.query_one(WideTable)
        note = self.query_one(".caption", Static)
        if not g.values:
            note.update(Text(f"{caption}\n\nno recorded changes against a parent", style="dim"))
            table.show(None)
            return
        modules = [module for _, module in g.columns]
        legend = short_legend(modules)
        note.update(Text(caption + (f" ({legend})" if legend else ""), style="italic"))
        variables = self.app.get_css_variables()
        rows = []
        for layer, cells in zip(g.layers, g.cells(), strict=True):
            row = [Text(cells[0])]
            for (block, module), cell in zip(g.columns, cells[1:], strict=True):
                value = g.values.get((layer, block, module))
                style = "dim" if cell == UNTOUCHED else heat_style(variables, value)
                row.append(Text(cell, style=style))
            rows.append(row)
        table.show(grid_table(["LAYER", *modules], rows))
