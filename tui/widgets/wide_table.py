"""A table that may be wider than its pane: it scrolls sideways, and a line under it
names the columns past either edge, since a scrollbar alone is easy to miss (and at
80 columns a layers × modules grid rarely fits)."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.measure import Measurement
from rich.padding import Padding
from rich.table import Table
from textual.app import ComposeResult
from textual.containers import ScrollableContainer, Vertical
from textual.widgets import Static


@dataclass(frozen=True)
class ColumnSpan:
    """Where a column's cells sit, in cells from the table's left edge (end exclusive)."""

    header: str
    start: int
    end: int


def column_spans(table: Table, console: Console) -> list[ColumnSpan]:
    """The span of each column of a box-less `table` drawn at its natural width."""
    _, right, _, left = Padding.unpack(table.padding)
    options = console.options.update_width(10_000)
    last = len(table.columns) - 1
    spans, x = [], 0
    for i, column in enumerate(table.columns):
        width = max(
            Measurement.get(console, options, cell).maximum
            for cell in (column.header, *column.cells)
        )
        x += left if i > 0 or table.pad_edge else 0
        spans.append(ColumnSpan(str(column.header), x, x + width))
        x += width + (right if i < last or table.pad_edge else 0)
    return spans


def hidden_columns(spans: list[ColumnSpan], left: int, width: int) -> tuple[list[str], list[str]]:
    """The columns not wholly inside the window [left, left + width): those cut or
    hidden on the left, and those on the right."""
    before = [s.header for s in spans if s.start < left]
    after = [s.header for s in spans if s.end > left + width and s.start >= left]
    return before, after


SCROLL_HINT = "shift+wheel, or tab to the table and ←/→"


class WideTable(Vertical):
    """A rich table at its natural width in a pane that scrolls both ways, over a
    line saying which columns are out of sight ("→ 3 more columns: gate, up, down")."""

    DEFAULT_CSS = """
    WideTable { height: auto; max-height: 100%; }
    WideTable > ScrollableContainer { height: auto; max-height: 1fr; }
    WideTable > .more { color: $text-accent; text-style: italic; display: none; }
    WideTable > .more.-shown { display: block; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.spans: list[ColumnSpan] = []

    def compose(self) -> ComposeResult:
        with ScrollableContainer():
            yield Static("", classes="body")
        yield Static("", classes="more")

    def on_mount(self) -> None:
        self.watch(self.scroller, "scroll_x", self._mark, init=False)

    @property
    def scroller(self) -> ScrollableContainer:
        return self.query_one(ScrollableContainer)

    @property
    def marker(self) -> str:
        """What the line under the table says; empty when every column is in sight."""
        more = self.query_one(".more", Static)
        return str(more.content) if more.has_class("-shown") else ""

    def show(self, table: Table | None) -> None:
        """Draw `table` (None: nothing)."""
        body = self.query_one(".body", Static)
        self.spans = [] if table is None else column_spans(table, self.app.console)
        body.styles.width = self.spans[-1].end if self.spans else "auto"
        body.update("" if table is None else table)
        self.scroller.scroll_to(0, 0, animate=False)
        self.call_after_refresh(self._mark)

    def on_resize(self) -> None:
        self.call_after_refresh(self._mark)

    def _mark(self) -> None:
        scroller = self.scroller
        before, after = hidden_columns(
            self.spans, round(scroller.scroll_x), scroller.scrollable_content_region.width
        )
        parts = []
        if before:
            parts.append(f"← {_count(before)}")
        if after:
            parts.append(f"→ {_count(after)}: {', '.join(after)}")
        more = self.query_one(".more", Static)
        more.update("   ".join(parts) + (f"  ({SCROLL_HINT})" if parts else ""))
        more.set_class(bool(parts), "-shown")


def _count(headers: list[str]) -> str:
    return f"{len(headers)} more column{'s' * (len(headers) != 1)}"
