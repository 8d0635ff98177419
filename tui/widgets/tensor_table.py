"""The Tensors tab: every tensor of the artifact, and whether it changed against the parent
(for an adapter's factors: whether the base tensor they target changed).

In a narrow pane the names give up their start (the end tells a layer's tensors apart),
the header names the columns past the right edge, and the tab shows the cursor's row
in full under the table.

Drawn a screen at a time with Textual's line API: an artifact of tens of thousands of
tensors fills the table in a fraction of a second and scrolls as fast as a small one
(a DataTable measures every cell of every row up front).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.filesize import decimal as human_size
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from graft.lineage import Touch
from graft.lineage.names import adapter_key
from graft.registry import Manifest

# The change and the name first: a narrow pane hides the dtype, shape and size.
# "change" is the relative change, else the status (added, reshaped...), else "·".
COLUMNS = ("change", "tensor", "shape", "dtype", "size")
RIGHT_ALIGNED = {0, 4}
GAP = 2
UNCHANGED = "·"
MIN_NAME = 16  # a name column narrower than this says too little: scroll instead


def fit_name(name: str, width: int) -> str:
    """`name` in at most `width` cells: whole, else "…" and its last dotted parts."""
    if len(name) <= width:
        return name
    tail = name[len(name) - width + 1 :]
    dot = tail.find(".")
    if 0 <= dot < len(tail) // 2:  # start at a whole part when that costs little
        tail = tail[dot + 1 :]
    return "…" + tail


class TensorTable(ScrollView, can_focus=True):
    """One line per tensor under a fixed header; ↑/↓, page keys and the mouse move the cursor."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "move(-1)", "Up", show=False),
        Binding("down", "move(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "move_to(0)", "First", show=False),
        Binding("end", "move_to(-1)", "Last", show=False),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "tensor-table--header",
        "tensor-table--cursor",
        "tensor-table--stripe",
        "tensor-table--changed",
        "tensor-table--unchanged",
    }
    DEFAULT_CSS = """
    TensorTable {
        & > .tensor-table--header { text-style: bold; background: $panel; }
        & > .tensor-table--cursor { background: $block-cursor-blurred-background; }
        &:focus > .tensor-table--cursor {
            background: $block-cursor-background; color: $block-cursor-foreground;
        }
        & > .tensor-table--stripe { background: $surface-lighten-1; }
        & > .tensor-table--changed { text-style: bold; }
        & > .tensor-table--unchanged { color: $text-muted; }
    }
    """

    cursor_row: reactive[int] = reactive(0)

    class Highlighted(Message):
        """The cursor is on `row` (the cells of `COLUMNS`), or on nothing."""

        def __init__(self, row: tuple[str, ...] | None) -> None:
            super().__init__()
            self.row = row

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rows: list[tuple[str, ...]] = []
        self.changed: list[bool] = []
        self._natural = [len(c) for c in COLUMNS]  # each column's widest cell
        self._widths = list(self._natural)  # as drawn: the name column may be narrower

    @property
    def row_count(self) -> int:
        return len(self.rows)

    def show(self, manifest: Manifest | None, touches: Sequence[Touch]) -> None:
        """The tensors of `manifest` (none: an empty table)."""
        by_name = {t.tensor: t for t in touches}
        rows: list[tuple[str, ...]] = []
        changed: list[bool] = []
        for _, t in manifest.tensors if manifest else ():
            touch = by_name.get(t.name)
            key = adapter_key(t.name) if touch is None else None
            if key is not None:  # an adapter's A/B factors change the base tensor they target
                touch = by_name.get(key.base_tensor)
            changed.append(touch is not None)
            if touch is None:
                change = UNCHANGED
            elif touch.rel_change is None:
                change = touch.status
            else:
                change = format(touch.rel_change, ".3g")
            shape = "×".join(map(str, t.shape)) or "scalar"
            rows.append((change, t.name, shape, t.dtype, human_size(t.nbytes)))
        self.rows, self.changed = rows, changed
        self._natural = [
            max([len(COLUMNS[i]), *(len(row[i]) for row in rows)]) for i in range(len(COLUMNS))
        ]
        self._layout()
        self.cursor_row = 0
        self.scroll_to(0, 0, animate=False)
        self.post_message(self.Highlighted(rows[0] if rows else None))
        self.refresh()

    def _layout(self) -> None:
        """Narrow the name column to what the pane leaves beside the change column."""
        room = self.scrollable_content_region.width - self._natural[0] - GAP - 2
        self._widths = list(self._natural)
        if room < self._natural[1] and self.scrollable_content_region.width:
            self._widths[1] = max(MIN_NAME, room)
        self.virtual_size = Size(self._span(len(COLUMNS)), len(self.rows) + 1)  # + the header

    def _span(self, columns: int) -> int:
        """Cells from the left edge to the end of the first `columns` columns, with the
        edge after the last."""
        return 1 + sum(self._widths[:columns]) + GAP * (columns - 1) + (columns == len(COLUMNS))

    # Drawing.

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width  # not under the vertical scrollbar
        if y == 0:
            return self._header(scroll_x, width)
        index = scroll_y + y - 1
        if index >= len(self.rows):
            return Strip.blank(width, self.rich_style)
        return self._row_line(index).crop_extend(scroll_x, scroll_x + width, self.rich_style)

    def _header(self, scroll_x: int, width: int) -> Strip:
        """The column names, with the names of those past the right edge at its end."""
        text = " " + "".join(
            (c.rjust(w) if i in RIGHT_ALIGNED else c.ljust(w)) + " " * GAP
            for i, (c, w) in enumerate(zip(COLUMNS, self._widths, strict=True))
        )
        text = text[scroll_x : scroll_x + width].ljust(width)
        hidden = [c for i, c in enumerate(COLUMNS) if self._span(i + 1) > scroll_x + width]
        if hidden:
            more = f" → {' '.join(hidden)} "
            text = text[: max(0, width - len(more))] + more[-width:]
        if scroll_x > 0:
            text = "←" + text[1:]
        return Strip([Segment(text, self.get_component_rich_style("tensor-table--header"))])

    def _row_line(self, index: int) -> Strip:
        component = (
            "tensor-table--cursor"
            if index == self.cursor_row
            else "tensor-table--stripe"
            if index % 2
            else None
        )
        base = self.rich_style
        if component is not None:
            base = base + self.get_component_rich_style(component)
        mark = "tensor-table--changed" if self.changed[index] else "tensor-table--unchanged"
        change, name, *rest = self.rows[index]
        return self._line(
            (change, fit_name(name, self._widths[1]), *rest),
            base,
            first=self.get_component_rich_style(mark, partial=True),
        )

    def _line(self, cells: Sequence[str], style: Style, first: Style | None = None) -> Strip:
        segments = [Segment(" ", style)]
        for i, (cell, width) in enumerate(zip(cells, self._widths, strict=True)):
            text = cell.rjust(width) if i in RIGHT_ALIGNED else cell.ljust(width)
            cell_style = style + first if i == 0 and first is not None else style
            segments.append(Segment(text, cell_style))
            segments.append(Segment(" " * (GAP if i < len(cells) - 1 else 1), style))
        return Strip(segments)

    # The cursor.

    @property
    def visible_rows(self) -> int:
        """Rows between the header and the horizontal scrollbar, if any."""
        return max(1, self.scrollable_size.height - 1)

    def watch_cursor_row(self, row: int) -> None:
        self._keep_cursor_visible()
        self.refresh()
        if row < len(self.rows):
            self.post_message(self.Highlighted(self.rows[row]))

    def on_resize(self) -> None:
        self._layout()
        self._keep_cursor_visible()

    def _keep_cursor_visible(self) -> None:
        top = self.scroll_offset.y
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False)
        elif self.cursor_row >= top + self.visible_rows:
            self.scroll_to(y=self.cursor_row - self.visible_rows + 1, animate=False)

    def validate_cursor_row(self, row: int) -> int:
        return max(0, min(row, len(self.rows) - 1))

    def action_move(self, step: int) -> None:
        self.cursor_row += step

    def action_page(self, direction: int) -> None:
        self.cursor_row += direction * self.visible_rows

    def action_move_to(self, row: int) -> None:
        self.cursor_row = row if row >= 0 else len(self.rows) - 1

    def on_click(self, event: events.Click) -> None:
        if event.y >= 1:  # not the header
            self.cursor_row = self.scroll_offset.y + event.y - 1
