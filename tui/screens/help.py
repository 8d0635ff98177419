"""The help screen: the app's keys, read from its bindings, and what the panels show."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

# Keys the tree and Textual itself handle; they are not in the app's bindings.
TREE_KEYS = (
    ("↑/↓", "move in the tree"),
    ("space/enter", "open or close a node"),
    ("tab", "next panel; on the tab bar ←/→ switch tabs"),
)
PANELS = (
    "Left: every artifact under the parent it came from (a merge under its base).\n"
    "Right: the selected artifact's overview, the layers and tensors it changed, "
    "what each method touched and its checkpoints' series (keys 1-5).\n"
    "Merge builder (b): tab between fields, space picks inputs; ctrl+r runs, "
    "esc cancels a running merge, ctrl+s saves the YAML."
)


class HelpScreen(ModalScreen[None]):
    """The keys of the screen below (its bindings, passed in) and the tree's keys."""

    CSS_PATH = "help.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close", key_display="esc"),
        Binding("q", "close", "Close", show=False),
        Binding("question_mark", "close", "Close", key_display="?", show=False),
    ]

    def __init__(self, bindings: Iterable[BindingType]) -> None:
        super().__init__()
        self.bindings = list(Binding.make_bindings(bindings))

    def rows(self) -> list[tuple[str, str]]:
        """(key, what it does) for each binding, then the tree's keys."""
        keys = [
            (self.app.get_key_display(b), b.description) for b in self.bindings if b.description
        ]
        return keys + list(TREE_KEYS)

    def compose(self) -> ComposeResult:
        rows = self.rows()
        width = max(len(key) for key, _ in rows) + 2
        keys = Text()
        for key, description in rows:
            keys.append(key.ljust(width), style="bold")
            keys.append(f"{description}\n")
        keys.rstrip()
        with Vertical(id="help") as box:
            box.border_title = "graft tui keys"
            yield Static(keys, id="help-keys")
            yield Static(PANELS, id="help-panels")
        yield Footer()

    def action_close(self) -> None:
        self.dismiss(None)
