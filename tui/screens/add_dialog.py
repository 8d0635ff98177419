"""The add dialog: register a file, folder or hf: repo from inside `graft tui`.

The form checks the path as it is typed; `lineage.register` runs in a worker that
posts throttled progress and its outcome; only the handlers change widgets.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.suggester import SuggestFromList
from textual.widget import Widget
from textual.widgets import Button, Footer, Input, Label, ProgressBar, Static

from graft import lineage
from graft.lineage.hub import is_hub_ref
from graft.registry import AddResult, GraftError, Store
from graft.registry.add import OnProgress
from graft.tui.screens.store_dialog import StoreDialog

# Offered for the method field after the store's own methods.
COMMON_METHODS = ("sft", "dpo", "orpo", "kto", "ppo", "lora", "qlora", "dora", "full", "distill")
PROGRESS_INTERVAL = 0.05  # seconds between progress messages: at most ~20 a second
PATH_PLACEHOLDER = "required: a .safetensors file, a folder or hf:ORG/NAME"


@dataclass(frozen=True)
class AddRequest:
    """What the form asks `lineage.register` for; None leaves a field to graft."""

    path: str
    name: str | None = None
    parent: str | None = None
    method: str | None = None


def path_problem(text: str) -> str | None:
    """Why `text` cannot be registered as typed, or None when it is worth trying.

    Hub references pass: only the registry can tell whether they resolve.
    """
    text = text.strip()
    if not text:
        return "enter a path"
    if is_hub_ref(text) or Path(text).expanduser().exists():
        return None
    return f"{text}: no such file or folder; check the path"


def suggested_methods(known: Iterable[str]) -> list[str]:
    """The store's methods first (sorted), then the common ones it lacks."""
    own = sorted(set(known))
    return own + [m for m in COMMON_METHODS if m not in own]


class AddDialog(StoreDialog):
    """Register a path."""

    IDLE_HINT = "enter or ctrl+s adds it; tab moves between the fields"
    AUTO_FOCUS = "#path"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "add", "Add"),
        Binding("escape", "cancel", "Cancel", key_display="esc"),
    ]

    class Progress(Message):
        """Bytes stored so far, of `total`."""

        def __init__(self, done: int, total: int) -> None:
            super().__init__()
            self.done = done
            self.total = total

    class Added(Message):
        """The artifact is registered (or was already)."""

        def __init__(self, result: AddResult) -> None:
            super().__init__()
            self.result = result

    def __init__(
        self, store: Store, *, refs: Iterable[str] = (), methods: Iterable[str] = ()
    ) -> None:
        super().__init__()
        self.store = store
        self.refs = list(refs)
        self.methods = suggested_methods(methods)
        self.path_ok = False
        self._focused: Widget | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog") as dialog:
            dialog.border_title = "Add an artifact"
            with Horizontal(classes="field"):
                yield Label("path", classes="label")
                yield Input(placeholder=PATH_PLACEHOLDER, id="path")
            with Horizontal(classes="field"):
                yield Label("name", classes="label")
                yield Input(placeholder="optional; default: the folder name", id="name")
            with Horizontal(classes="field"):
                yield Label("parent", classes="label")
                example = f", e.g. {self.refs[0]}" if self.refs else ""
                yield Input(
                    placeholder=f"optional: NAME@N{example}",
                    suggester=SuggestFromList(self.refs, case_sensitive=False),
                    id="parent",
                )
            with Horizontal(classes="field"):
                yield Label("method", classes="label")
                yield Input(
                    placeholder=f"optional: {', '.join(self.methods[:4])}, …",
                    suggester=SuggestFromList(self.methods, case_sensitive=False),
                    id="method",
                )
            yield Static(id="message")
            yield ProgressBar(show_eta=False, id="progress")
            with Horizontal(id="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Add", variant="primary", id="add", disabled=True)
        yield Footer()

    def on_mount(self) -> None:
        self._show_message("")

    def request(self) -> AddRequest:
        """The form as typed: blank optional fields become None."""
        path = self.query_one("#path", Input).value.strip()
        if not is_hub_ref(path):
            path = str(Path(path).expanduser())
        return AddRequest(path, self.field("name"), self.field("parent"), self.field("method"))

    # The worker: it registers, never touches widgets, and posts what happened.

    @work(thread=True, exit_on_error=False, exclusive=True, group="add")
    def add_artifact(self, request: AddRequest) -> None:
        try:
            result = lineage.register(
                request.path,
                store=self.store,
                name=request.name,
                parent=request.parent,
                method=request.method,
                on_progress=self._progress_poster(),
            )
        except GraftError as e:
            self.post_message(self.Failed(e))
            return
        self.post_message(self.Added(result))

    def _progress_poster(self) -> OnProgress:
        """A progress callback that posts at most one message per PROGRESS_INTERVAL,
        and always the last one."""
        last = 0.0

        def post(done: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if done >= total or now - last >= PROGRESS_INTERVAL:
                last = now
                self.post_message(self.Progress(done, total))

        return post

    # Handlers: the only place widgets change.

    def on_add_dialog_progress(self, message: Progress) -> None:
        self.query_one(ProgressBar).update(total=message.total, progress=message.done)

    def on_add_dialog_added(self, message: Added) -> None:
        result = message.result
        ref = result.manifest.ref
        if result.existed:
            self.app.notify(
                f"identical content is already registered as {ref}; "
                "name, parent and method were not applied",
                title="graft: already registered",
            )
        else:
            notes = [f"added {ref} ({result.manifest.kind})"]
            declared = result.manifest.meta.get(lineage.DECLARED_BASE)
            if declared and not result.manifest.parents:
                notes.append(
                    f"its files declare base {declared!r}, not registered: adding it links it"
                )
            if result.linked:
                notes.append(
                    f"linked {', '.join(result.linked)} to it: the base their files declare"
                )
            self.app.notify("; ".join(notes), title="graft")
        self._set_busy(False)
        self.dismiss(ref)

    def on_store_dialog_failed(self, message: StoreDialog.Failed) -> None:
        self._set_busy(False)
        self._show_message(str(message.error), error=True)
        if self._focused is not None:  # where the user was, to fix what was wrong
            self._focused.focus()

    @on(Input.Changed, "#path")
    def _path_changed(self, event: Input.Changed) -> None:
        problem = path_problem(event.value)
        self.path_ok = problem is None
        # An empty path only disables Add; a wrong one also says why.
        self._show_message("" if not event.value.strip() else (problem or ""), error=True)
        self._update_controls()

    @on(Input.Changed)
    def _field_changed(self, event: Input.Changed) -> None:
        if event.input.id != "path":  # a failure named a field: it may be fixed now
            path = self.query_one("#path", Input).value
            self._show_message((path.strip() and path_problem(path)) or "", error=True)

    @on(Input.Submitted)
    @on(Button.Pressed, "#add")
    def _add_pressed(self) -> None:
        self.action_add()

    def _set_busy(self, busy: bool) -> None:
        self.busy = busy
        self.set_class(busy, "-busy")
        for field in self.query(Input):
            field.disabled = busy
        self._update_controls()

    def _update_controls(self) -> None:
        self.query_one("#add", Button).disabled = self.busy or not self.path_ok
        self.query_one("#cancel", Button).disabled = self.busy
        self.refresh_bindings()

    # Actions.

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "add":
            return True if self.path_ok and not self.busy else None
        if action == "cancel":  # a registration cannot be interrupted
            return None if self.busy else True
        return True

    def action_add(self) -> None:
        if self.busy:
            return
        if not self.path_ok:  # enter on an empty or wrong path: say what is missing
            path = self.query_one("#path", Input).value
            problem = path_problem(path) if path.strip() else None
            self._show_message(problem or "type the path of a model or adapter first", error=True)
            return
        request = self.request()
        self._focused = self.focused  # disabled fields lose the focus
        self._set_busy(True)
        self.query_one(ProgressBar).update(total=None, progress=0)
        self._show_message(f"adding {request.path}… (cannot be interrupted)")
        self.add_artifact(request)
