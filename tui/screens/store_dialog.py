"""What the add and amend dialogs share: a small form whose change to the store runs
in a worker, a message line under it, and esc that closes it unless it is busy."""

from __future__ import annotations

from textual import on
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static
from textual.worker import Worker, WorkerState

from graft.registry import GraftError


class StoreDialog(ModalScreen[str | None]):
    """Dismisses with the artifact's NAME@N after the change, or None when closed."""

    CSS_PATH = "add_dialog.tcss"
    IDLE_HINT = ""  # the message line when there is nothing else to say
    busy = False

    class Failed(Message):
        """The registry refused; nothing was recorded."""

        def __init__(self, error: GraftError) -> None:
            super().__init__()
            self.error = error

    def field(self, name: str) -> str | None:
        """An optional field as typed; blank is None."""
        return self.query_one(f"#{name}", Input).value.strip() or None

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        event.stop()  # the app would notify the same error
        if event.state == WorkerState.ERROR:  # not a GraftError: a bug, still shown here
            self._set_busy(False)
            self._show_message(
                f"an internal error ({event.worker.error}); please report it", error=True
            )

    def _show_message(self, text: str, *, error: bool = False) -> None:
        message = self.query_one("#message", Static)
        message.set_class(error and bool(text), "-error")
        message.update(text or self.IDLE_HINT)

    def _set_busy(self, busy: bool) -> None:
        raise NotImplementedError  # each dialog locks its own controls

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel()

    def action_cancel(self) -> None:
        if not self.busy:
            self.dismiss(None)
