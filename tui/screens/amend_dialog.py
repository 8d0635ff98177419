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
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import Button, Footer, Input, Label, Static
from textual.worker import Worker, WorkerState

from graft import registry
from graft.registry import ArtifactRow, GraftError, Manifest, Store
from graft.tui.screens.add_dialog import suggested_methods

IDLE_HINT = "blank fields stay as they are; enter or ctrl+s amends"


@dataclass(frozen=True)
class AmendRequest:
    """What to change; None leaves it."""

    parent: str | None = None
    method: str | None = None
    name: str | None = None

    def __bool__(self) -> bool:
        return any((self.parent, self.method, self.name))


class AmendDialog(ModalScreen[str | None]):
    """Amend `row`; dismisses with its NAME@N after the change, or None when closed."""

    CSS_PATH = "add_dialog.tcss"
    AUTO_FOCUS = "#parent"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "amend", "Amend"),
        Binding("escape", "cancel", "Cancel", key_display="esc"),
    ]

    class Amended(Message):
        def __init__(self, manifest: Manifest) -> None:
            super().__init__()
            self.manifest = manifest

    class Failed(Message):
        """The registry refused; nothing was recorded."""

        def __init__(self, error: GraftError) -> None:
            super().__init__()
            self.error = error

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
        self.busy = False

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
            yield Static(IDLE_HINT, id="message")
            with Horizontal(id="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Amend", variant="primary", id="amend")
        yield Footer()

    def on_mount(self) -> None:
        if self.row.kind == "merge":
            self.query_one("#method", Input).focus()

    def request(self) -> AmendRequest:
        def field(name: str) -> str | None:
            return self.query_one(f"#{name}", Input).value.strip() or None

        return AmendRequest(field("parent"), field("method"), field("name"))

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

    def on_amend_dialog_failed(self, message: Failed) -> None:
        self._set_busy(False)
        self._show_message(str(message.error), error=True)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        event.stop()  # the app would notify the same error
        if event.state == WorkerState.ERROR:  # not a GraftError: a bug, still shown here
            self._set_busy(False)
            self._show_message(
                f"an internal error ({event.worker.error}); please report it", error=True
            )

    @on(Input.Changed)
    def _edited(self) -> None:
        self._show_message(IDLE_HINT)

    @on(Input.Submitted)
    @on(Button.Pressed, "#amend")
    def _amend_pressed(self) -> None:
        self.action_amend()

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel()

    def _show_message(self, text: str, *, error: bool = False) -> None:
        message = self.query_one("#message", Static)
        message.set_class(error, "-error")
        message.update(text)

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

    def action_cancel(self) -> None:
        if not self.busy:
            self.dismiss(None)
