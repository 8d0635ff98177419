"""The amend dialog: fix the parent, method or name of the artifact under the cursor
(`graft amend` from inside `graft tui`); its content and id stay as they are."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.suggester import SuggestFromList
from textual.widgets import Button, Footer, Input, Label, Static

from graft import registry
from graft.registry import ArtifactRow, GraftError, Manifest, Store
from graft.tui.screens.add_dialog import suggested_methods
from graft.tui.screens.store_dialog import StoreDialog


@dataclass(frozen=True)
class AmendRequest:
    """What to change; None leaves it."""

    parent: str | None = None
    method: str | None = None
    name: str | None = None

    def __bool__(self) -> bool:
        return any((self.parent, self.method, self.name))


class AmendDialog(StoreDialog):
    """Amend `row`."""

    IDLE_HINT = "blank fields stay as they are; enter or ctrl+s amends"
    AUTO_FOCUS = "#parent"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "amend", "Amend"),
        Binding("escape", "cancel", "Cancel", key_display="esc"),
    ]

    class Amended(Message):
        def __init__(self, manifest: Manifest) -> None:
            super().__init__()
            self.manifest = manifest

    def __init__(
        self,
        store: Store,
        row: ArtifactRow,
        *,
        refs: Iterable[str] = (),
        methods: Iterable[str] = (),
    ) -> None:
        super().__init__()
        self.store = store
        self.row = row
        self.refs = [r for r in refs if r != row.ref]
        self.methods = suggested_methods(methods)

    def compose(self) -> ComposeResult:
        row = self.row
        with Vertical(id="dialog") as dialog:
            dialog.border_title = f"Amend {row.ref}"
            with Horizontal(classes="field"):
                yield Label("parent", classes="label")
                yield Input(
                    placeholder=(
                        "a merge: its parents are its inputs"
                        if row.kind == "merge"
                        else f"NAME@N; now: {', '.join(row.parents) or 'none'}"
                    ),
                    suggester=SuggestFromList(self.refs, case_sensitive=False),
                    disabled=row.kind == "merge",
                    id="parent",
                )
            with Horizontal(classes="field"):
                yield Label("method", classes="label")
                yield Input(
                    placeholder=f"now: {row.method or 'none'}",
                    suggester=SuggestFromList(self.methods, case_sensitive=False),
                    id="method",
                )
            with Horizontal(classes="field"):
                yield Label("name", classes="label")
                yield Input(
                    placeholder=f"now: {row.name}; a new one gets its next version", id="name"
                )
            yield Static(self.IDLE_HINT, id="message")
            with Horizontal(id="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Amend", variant="primary", id="amend")
        yield Footer()

    def on_mount(self) -> None:
        if self.row.kind == "merge":
            self.query_one("#method", Input).focus()

    def request(self) -> AmendRequest:
        return AmendRequest(self.field("parent"), self.field("method"), self.field("name"))

    @work(thread=True, exit_on_error=False, exclusive=True, group="amend")
    def amend_artifact(self, request: AmendRequest) -> None:
        try:
            manifest = registry.amend(
                self.store,
                self.row.ref,
                parent=request.parent,
                method=request.method,
                name=request.name,
            )
        except GraftError as e:
            self.post_message(self.Failed(e))
            return
        self.post_message(self.Amended(manifest))

    def on_amend_dialog_amended(self, message: Amended) -> None:
        m = message.manifest
        self.app.notify(f"amended {self.row.ref}: now {m.ref}, method {m.method or '-'}")
        self.dismiss(m.ref)

    def on_store_dialog_failed(self, message: StoreDialog.Failed) -> None:
        self._set_busy(False)
        self._show_message(str(message.error), error=True)

    @on(Input.Changed)
    def _edited(self) -> None:
        self._show_message("")

    @on(Input.Submitted)
    @on(Button.Pressed, "#amend")
    def _amend_pressed(self) -> None:
        self.action_amend()

    def _set_busy(self, busy: bool) -> None:
        self.busy = busy
        for button in self.query(Button):
            button.disabled = busy

    def action_amend(self) -> None:
        if self.busy:
            return
        request = self.request()
        if not request:
            self._show_message("nothing to amend: type a parent, a method or a name", error=True)
            return
        self._set_busy(True)
        self._show_message(f"amending {self.row.ref}…")
        self.amend_artifact(request)
