"""The Methods tab: pick a method, see the layers × modules its artifacts changed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from graft.lineage import MethodTouches
from graft.tui.grids import UNTOUCHED, module_columns, short_legend
from graft.tui.widgets.layer_heatmap import grid_table, heat_style
from graft.tui.widgets.wide_table import WideTable


class MethodsView(Vertical):
    """A list of the store's methods over the aggregated grid of the chosen one;
    posts `Chosen` when the highlight moves to a method."""

    class Chosen(Message):
        """The user picked a method to aggregate."""

        def __init__(self, method: str) -> None:
            super().__init__()
            self.method = method

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.method: str | None = None  # the chosen method, shown or loading
        self.touches: MethodTouches | None = None  # what the grid shows

    def compose(self) -> ComposeResult:
        yield OptionList(id="method-list")
        yield Static("no methods recorded yet", id="method-artifacts")
        yield WideTable(id="method-grid")

    @property
    def option_list(self) -> OptionList:
        return self.query_one("#method-list", OptionList)

    def show_methods(self, methods: Iterable[set[str]]) -> None:
        """Offer each distinct method (each artifact's set: `render.made_by`),
        with how many artifacts it made."""
        counts = Counter(m for made_by in methods for m in made_by)
        options = self.option_list
        options.set_options(
            Option(Text.assemble((m, "bold"), f"  {n} artifact{'s' * (n != 1)}"), id=m)
            for m, n in sorted(counts.items())
        )
        if self.method is not None and self.method in counts:  # keep the chosen one lit
            options.highlighted = options.get_option_index(self.method)
        else:
            self.query_one("#method-artifacts", Static).update(
                "pick a method above" if counts else "no methods recorded yet"
            )

    @on(OptionList.OptionHighlighted, "#method-list")
    @on(OptionList.OptionSelected, "#method-list")
    def _picked(self, event: OptionList.OptionHighlighted | OptionList.OptionSelected) -> None:
        event.stop()
        method = event.option.id
        if method is not None and method != self.method:
            self.method = method
            self.post_message(self.Chosen(method))

    def show(self, touches: MethodTouches) -> None:
        self.touches = touches
        n = len(touches.artifacts)
        cells = {(c.layer, c.block, c.module): c for c in touches.cells}
        columns = module_columns(cells)
        legend = short_legend(module for _, module in columns)
        self.query_one("#method-artifacts", Static).update(
            Text.assemble(
                (f"{n} artifact{'s' * (n != 1)} by {touches.method}: ", "bold"),
                ", ".join(touches.artifacts),
                (
                    "\nchanged by n artifacts × mean rel. change (· untouched"
                    + (f"; {legend})" if legend else ")")
                    if cells
                    else "\nno recorded changes against a parent",
                    "italic" if cells else "dim",
                ),
            )
        )
        grid = self.query_one("#method-grid", WideTable)
        if not cells:
            grid.show(None)
            return
        variables = self.app.get_css_variables()
        rows = []
        for layer in self.changed_layers():
            row = [Text("—" if layer is None else str(layer))]
            for block, module in columns:
                cell = cells.get((layer, block, module))
                if cell is None:
                    row.append(Text(UNTOUCHED, style="dim"))
                else:
                    mean = "new" if cell.mean_rel_change is None else f"{cell.mean_rel_change:.2g}"
                    style = heat_style(variables, cell.mean_rel_change)
                    row.append(Text(f"{cell.artifacts}×{mean}", style=style))
            rows.append(row)
        grid.show(grid_table(["LAYER", *(module for _, module in columns)], rows))

    def counts(self) -> dict[tuple[int | None, str], int]:
        """(layer, module) -> how many of the method's artifacts changed it."""
        if self.touches is None:
            return {}
        return {(c.layer, c.module): c.artifacts for c in self.touches.cells}

    def changed_layers(self) -> list[int | None]:
        """The layers any of the method's artifacts changed, in grid order."""
        return sorted({layer for layer, _ in self.counts()}, key=lambda x: (x is not None, x or 0))
