"""The merge builder: compose a merge from registered artifacts, preview its YAML, run it.

The form is a `Draft` (tui.merge_draft), whose checks come from the method registry;
every change re-renders the problems, the YAML preview and the Run action. The merge
runs in a thread worker that posts progress messages and stops at the next tensor
when cancelled; the screen dismisses with the new artifact's ref. Its last target,
`extract`, runs `graft extract` instead: one fine-tune over its base, as a LoRA.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import ClassVar

from rich.syntax import Syntax
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import (
    Button,
    Checkbox,
    Footer,
    Header,
    Input,
    Label,
    ProgressBar,
    Select,
    SelectionList,
    Static,
)
from textual.worker import Worker, WorkerState

from graft.merge import MergeCancelled, MergeOutcome, merge_models, parse_config
from graft.merge.adapters import EXACT_METHODS
from graft.merge.api import ExtractOutcome, extract_adapter
from graft.merge.methods import Param
from graft.merge.results import MergeProgress
from graft.registry import ArtifactRow, GraftError, Store
from graft.registry.fsutil import write_atomic
from graft.tui.merge_draft import (
    DTYPES,
    EXTRACT,
    STARTING_VALUES,
    TARGETS,
    Draft,
    fields_of,
    global_key,
    input_key,
)

DEFAULT_METHOD = "ties"


class MergeBuilder(ModalScreen[str | None]):
    """Choose method, base, inputs and parameters; run the merge; dismiss with its ref.

    Modal (though it fills the screen) so that the main screen's keys stay off.
    """

    CSS_PATH = "merge_builder.tcss"
    SUB_TITLE = "merge builder"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+r", "run", "Run merge"),
        Binding("ctrl+s", "save", "Save YAML"),
        Binding("escape", "cancel", "Cancel merge", key_display="esc"),
        Binding("escape", "close", "Close", key_display="esc"),
    ]

    class Progressed(Message):
        """The running merge wrote another percent of its tensors."""

        def __init__(self, progress: MergeProgress) -> None:
            super().__init__()
            self.progress = progress

    def __init__(
        self,
        store: Store,
        rows: list[ArtifactRow],
        current: ArtifactRow | None = None,
        parent: str | None = None,
    ) -> None:
        """`current` is the artifact under the tree's cursor, `parent` the one it
        is shown under (a merge's base, else its first parent)."""
        super().__init__()
        self.store = store
        self.rows = rows
        self._kinds = {r.ref: r.kind for r in rows}
        self._ready = False  # the form as last checked by `_show_state` has no problems
        self.values: dict[str, str | bool] = {}  # parameter field key → text or switch
        self._input_blocks: dict[str, Vertical] = {}  # the chosen inputs' fields
        self.running = False
        self.preview = ""  # the YAML shown, with the equivalent command
        self._pristine: str | None = None  # the preview as the builder opened
        self._warned = False  # esc once said the draft would be lost
        self._stop = threading.Event()
        self._focused: Widget | None = None
        self._base, self._chosen = _starting_point(rows, current, parent)

    # Layout.

    def compose(self) -> ComposeResult:
        models = [(r.ref, r.ref) for r in self.rows if r.kind != "adapter"]
        yield Header()
        with Horizontal(id="builder"):
            with VerticalScroll(id="form"):
                with Horizontal(classes="row"):
                    yield Label("Method", classes="field")
                    yield Select(
                        [(name, name) for name in TARGETS],
                        value=DEFAULT_METHOD,
                        allow_blank=False,
                        compact=True,
                        id="method",
                    )
                yield Static(id="method-doc")
                with Horizontal(classes="row"):
                    yield Label("Base", classes="field")
                    yield Select(
                        models,
                        value=self._base or Select.NULL,
                        prompt="(none)",
                        compact=True,
                        id="base",
                    )
                yield Label("Inputs: space picks, in merge order", classes="heading")
                yield SelectionList[str](compact=True, id="inputs")
                yield Vertical(id="input-params")
                yield Label("Merge parameters", classes="heading")
                yield Grid(id="global-params")
                with Horizontal(classes="row"):
                    yield Label("Seed", classes="field")
                    yield Input("0", id="seed", name="seed", compact=True)
                    yield Label("dtype", classes="field")
                    yield Select(
                        [(d, d) for d in DTYPES], prompt="as inputs", compact=True, id="dtype"
                    )
                with Horizontal(classes="row"):
                    yield Label("Rank", classes="field")
                    yield Input(
                        placeholder=_rank_hint("linear"),
                        id="rank",
                        name="rank",
                        compact=True,
                    )
                with Horizontal(classes="row"):
                    yield Label("Name", classes="field")
                    yield Input(
                        placeholder="the new artifact's name", id="name", name="name", compact=True
                    )
                with Horizontal(classes="row"):
                    yield Label("Folder", classes="field")
                    yield Input(placeholder="./NAME", id="out-dir", name="folder", compact=True)
                union = Checkbox("union of the inputs' tokenizers", id="union", compact=True)
                union.tooltip = "tokenizer_source: union, for inputs whose vocabularies differ"
                yield union
            with Vertical(id="side"):
                with VerticalScroll(id="yaml-scroll"):
                    yield Static(id="yaml")
                yield Static(id="problems")
                yield Button("Run merge", id="run", variant="primary")
                yield ProgressBar(id="progress", show_eta=False)
                yield Static(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one("#progress", ProgressBar).display = False
        self._offer_inputs(self._chosen)
        await self._method_changed()
        self.query_one("#method", Select).focus()
        self.call_after_refresh(self._remember_pristine)

    def _remember_pristine(self) -> None:
        self._pristine = self.preview

    # The form's state.

    @property
    def method(self) -> str:
        value = self.query_one("#method", Select).value
        return value if isinstance(value, str) else DEFAULT_METHOD

    @property
    def base(self) -> str | None:
        value = self.query_one("#base", Select).value
        return value if isinstance(value, str) else None

    def draft(self) -> Draft:
        dtype = self.query_one("#dtype", Select).value
        return Draft(
            method=self.method,
            base=self.base,
            inputs=tuple(self.query_one("#inputs", SelectionList).selected),
            input_values={k: v for k, v in self.values.items() if isinstance(v, str)},
            global_values={
                k.removeprefix("parameters."): v
                for k, v in self.values.items()
                if k.startswith("parameters.")
            },
            seed=self.query_one("#seed", Input).value,
            rank=self.query_one("#rank", Input).value,
            name=self.query_one("#name", Input).value,
            out_dir=self.query_one("#out-dir", Input).value,
            dtype=dtype if isinstance(dtype, str) else None,
            union=self.query_one("#union", Checkbox).value,
            kinds=self._kinds,
        )

    # Rebuilding the parts of the form that depend on the method, base and inputs.

    @on(Select.Changed, "#method")
    async def _method_changed(self) -> None:
        self._status(Text(""))  # a failure or "saved" is about the draft as it was
        fields = fields_of(self.method)
        self.query_one("#method-doc", Static).update(Text(fields.doc, style="dim"))
        self.query_one("#base", Select).disabled = not fields.uses_base
        self.query_one("#rank", Input).placeholder = _rank_hint(self.method)
        extracts = self.method == EXTRACT
        for unused in ("#seed", "#dtype", "#union"):  # extraction: fp32 factors, no draws
            self.query_one(unused).disabled = extracts
        self.query_one("#run", Button).label = "Run extract" if extracts else "Run merge"
        await self._show_global_params()
        self._offer_inputs()
        await self._show_input_params(rebuild=True)

    @on(Select.Changed, "#base")
    async def _base_changed(self) -> None:
        self._status(Text(""))
        self._offer_inputs()
        await self._show_input_params()

    @on(SelectionList.SelectedChanged, "#inputs")
    async def _inputs_changed(self) -> None:
        self._status(Text(""))
        await self._show_input_params()

    def _offer_inputs(self, chosen: tuple[str, ...] = ()) -> None:
        """Every artifact but the base can be an input; the chosen ones stay chosen."""
        inputs: SelectionList[str] = self.query_one("#inputs", SelectionList)
        chosen = chosen or tuple(inputs.selected)
        base = self.base if fields_of(self.method).uses_base else None
        inputs.clear_options()
        inputs.add_options(
            (Text.assemble(r.ref, (f"  {r.kind}", "dim")), r.ref)
            for r in self.rows
            if r.ref != base
        )
        for ref in chosen:
            if ref != base:
                inputs.select(ref)
        if inputs.option_count:
            inputs.highlighted = 0  # so that space picks at once

    async def _show_input_params(self, *, rebuild: bool = False) -> None:
        """A block of parameter fields per chosen input, in merge order.

        The blocks of inputs still chosen stay as they are, so a field being typed
        in is never replaced; a new method (`rebuild`) brings new fields.
        """
        box = self.query_one("#input-params", Vertical)
        if rebuild:
            await box.remove_children()
            self._input_blocks.clear()
        chosen = self.query_one("#inputs", SelectionList).selected
        for ref in [r for r in self._input_blocks if r not in chosen]:
            await self._input_blocks.pop(ref).remove()
        for ref in chosen:  # a new choice comes last, as in `selected`
            if ref not in self._input_blocks:
                self._input_blocks[ref] = self._input_block(ref)
                await box.mount(self._input_blocks[ref])
        self._show_state()

    def _input_block(self, ref: str) -> Vertical:
        fields: list[Label | Input] = []
        for param in fields_of(self.method).input_params:
            key = input_key(ref, param.name)
            self.values.setdefault(key, STARTING_VALUES.get(param.name, ""))
            fields += [Label(param.name), _param_input(key, str(self.values[key]), param)]
        return Vertical(
            Label(ref, classes="input-ref"),
            Horizontal(*fields, classes="row params"),
            classes="input-block",
        )

    async def _show_global_params(self) -> None:
        """The method's merge-wide parameters, two to a line."""
        box = self.query_one("#global-params", Grid)
        await box.remove_children()
        for param in fields_of(self.method).global_params:
            key = global_key(param.name)
            if param.kind == "bool":  # only a switch the user flipped is in `values`
                value = self.values.get(key, param.default)
                switch = Checkbox(param.name, bool(value), name=key, compact=True)
                switch.tooltip = param.doc
                await box.mount(switch)
            else:
                self.values.setdefault(key, "")
                cell = Horizontal(classes="row")
                await box.mount(cell)
                await cell.mount_all(
                    [Label(param.name), _param_input(key, str(self.values[key]), param)]
                )

    # Every change re-checks the draft.

    @on(Input.Changed)
    def _typed(self, event: Input.Changed) -> None:
        self._status(Text(""))  # a failure or "saved" is about the draft as it was
        if event.input.name and event.input.has_class("param-value"):
            self.values[event.input.name] = event.value
        elif event.input.id == "name":  # the folder follows the name unless one is typed
            folder = self.query_one("#out-dir", Input)
            folder.placeholder = f"./{event.value.strip() or 'NAME'}"
        self._show_state()

    @on(Checkbox.Changed)
    def _switched(self, event: Checkbox.Changed) -> None:
        self._status(Text(""))
        if event.checkbox.name:
            self.values[event.checkbox.name] = event.value
        self._show_state()

    @on(Select.Changed, "#dtype")
    def _dtype_changed(self) -> None:
        self._status(Text(""))
        self._show_state()

    def _show_state(self) -> None:
        draft = self.draft()
        problems = draft.problems()
        if not self.rows:
            problems["inputs"] = "the store has no artifacts yet: esc, then a adds one"
        for field in self.query(Input):
            field.set_class(field.name in problems, "-invalid")
        self.query_one("#inputs").set_class("inputs" in problems, "-invalid")
        self.query_one("#problems", Static).update(
            Text("\n".join(f"✗ {key}: {why}" for key, why in problems.items()), style="red")
            if problems
            else Text("✓ ready to run", style="green")
        )
        self.preview = _preview(draft)
        self.query_one("#yaml", Static).update(Syntax(self.preview, "yaml", word_wrap=True))
        self._ready = not problems
        self.query_one("#run", Button).disabled = self.running or not self._ready
        self.refresh_bindings()

    # Actions.

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel":
            return self.running
        if action == "close":
            return not self.running
        if action == "save" and self.method == EXTRACT:
            return None  # an extraction has no YAML
        if action in ("run", "save"):  # save: not while running (its prompt would sit
            # over the builder when the merge ends), nor with problems (left out of the YAML)
            return None if self.running or not self._ready else True
        return True

    @on(Button.Pressed, "#run")
    def action_run(self) -> None:
        draft = self.draft()
        if self.running or draft.problems():
            return
        self.running = True
        self._focused = self.focused  # given back if the merge fails or is cancelled
        self._stop.clear()
        self.query_one("#form").disabled = True
        bar = self.query_one("#progress", ProgressBar)
        bar.display = True
        bar.update(total=None, progress=0)
        doing = "extracting" if draft.extracts else "merging"
        self._status(Text(f"{doing} into {draft.output} …"))
        self._show_state()
        self.run_merge(draft)

    def action_cancel(self) -> None:
        self._stop.set()
        self._status(Text("cancelling at the next tensor …", style="yellow"))

    def action_close(self) -> None:
        if self.preview != self._pristine and not self._warned:
            self._status(Text("esc again discards this draft (ctrl+s saves it)", "yellow"))
            self._warned = True
            return
        self.dismiss(None)

    def action_save(self) -> None:
        draft = self.draft()
        if self.running or draft.problems() or draft.extracts:
            return

        def save(path: Path | None) -> None:
            if path is None:
                return
            try:
                write_atomic(path, draft.yaml().encode())
            except OSError as e:
                self._status(Text(f"cannot save {path}: {e.strerror}", style="red"))
                return
            self._status(Text(f"saved {path}", style="green"))

        self.app.push_screen(SaveYaml(Path(f"{draft.name.strip() or 'merge'}.yaml")), save)

    # The merge, in a worker.

    @work(thread=True, exit_on_error=False, exclusive=True, group="merge")
    def run_merge(self, draft: Draft) -> MergeOutcome | ExtractOutcome:
        percent = -1

        def progress(p: MergeProgress) -> None:
            nonlocal percent  # at most one message per percent
            now = 100 * p.tensors_done // max(1, p.tensors_total)
            if now != percent:
                percent = now
                self.post_message(self.Progressed(p))

        if draft.extracts:
            assert draft.base is not None
            return extract_adapter(
                draft.inputs[0],
                draft.base,
                draft.output,
                rank=int(draft.rank),
                store=self.store,
                name=draft.name.strip(),
                on_progress=lambda done, total: progress(MergeProgress(done, total, 0, 0, "")),
                should_cancel=self._stop.is_set,
            )
        config = parse_config(draft.document(), source="merge builder")
        return merge_models(
            config,
            draft.output,
            store=self.store,
            name=draft.name.strip(),
            seed=int(draft.seed),
            rank=int(draft.rank) if draft.rank.strip() else None,
            on_progress=progress,
            should_cancel=self._stop.is_set,
        )

    def on_merge_builder_progressed(self, message: Progressed) -> None:
        p = message.progress
        self.query_one("#progress", ProgressBar).update(
            total=p.tensors_total, progress=p.tensors_done
        )
        self._status(Text(f"{p.tensors_done}/{p.tensors_total}  {p.tensor}", style="dim"))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "merge":
            return
        if event.state == WorkerState.SUCCESS:
            outcome = event.worker.result
            assert isinstance(outcome, MergeOutcome | ExtractOutcome)
            assert outcome.manifest is not None
            title = "graft: extracted" if isinstance(outcome, ExtractOutcome) else "graft: merged"
            self.app.notify(_summary(outcome, self.draft().name.strip()), title=title)
            if not self.is_active:  # e.g. the command palette is open over the builder
                self.pop_until_active()
            self.dismiss(outcome.manifest.ref)
        elif event.state == WorkerState.ERROR:
            self.running = False
            self.query_one("#form").disabled = False
            self.query_one("#progress", ProgressBar).display = False
            error = event.worker.error
            self._show_state()
            what = "extraction" if self.method == EXTRACT else "merge"
            if isinstance(error, MergeCancelled):
                self._status(Text(f"{what} cancelled: nothing written or registered", "yellow"))
            else:  # the draft's checks passed, the run did not: not "ready to run"
                self._status(Text(f"{what} failed: {_describe(error)}", style="red"))
                failed = Text("✗ the run failed: see below", style="red")
                self.query_one("#problems", Static).update(failed)
            if self._focused is not None:
                self._focused.focus()

    def on_unmount(self) -> None:
        self._stop.set()  # leaving the app stops a running merge at the next tensor

    def _status(self, text: Text) -> None:
        self._warned = False  # a warning holds until something else is said
        self.query_one("#status", Static).update(text)


class SaveYaml(ModalScreen[Path | None]):
    """Ask where to save the YAML (enter saves, esc does not); an existing file is
    replaced only when enter is pressed again on the same path."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "Don't save")]

    def __init__(self, suggested: Path) -> None:
        super().__init__()
        self.suggested = suggested
        self._confirmed: Path | None = None  # the existing file enter was pressed on

    def compose(self) -> ComposeResult:
        with Vertical(id="save-box"):
            yield Label("Save the merge config as (enter to save, esc to go back)", id="save-ask")
            yield Input(str(self.suggested), id="save-path")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            return
        path = Path(event.value.strip()).expanduser()
        if path.exists() and path != self._confirmed:
            self._confirmed = path
            self.query_one("#save-ask", Label).update(
                f"{path} exists: enter again to replace it, or change the name"
            )
            return
        self.dismiss(path)


def _starting_point(
    rows: list[ArtifactRow], current: ArtifactRow | None, parent: str | None
) -> tuple[str | None, tuple[str, ...]]:
    """Base and inputs to start from: the artifact under the cursor as an input over
    its parent (when that is a full model), or as the base when it is a model at a root."""
    if current is None:
        return None, ()
    if parent is None and current.kind != "adapter":
        return current.ref, ()
    kinds = {r.ref: r.kind for r in rows}
    base = parent if parent is not None and kinds.get(parent, "adapter") != "adapter" else None
    return base, (current.ref,)


def _param_input(key: str, value: str, param: Param) -> Input:
    """A parameter's field, named by its key in `Draft.problems()`."""
    field = Input(
        value,
        placeholder="needed" if param.default is None else f"{param.default}",
        name=key,
        classes="param-value",
        compact=True,
    )
    field.tooltip = param.doc
    return field


def _preview(draft: Draft) -> str:
    """The command and YAML; values with problems are left out of both, and said so."""
    left_out = [k for k in draft.problems() if k not in ("inputs", "base", "name", "folder")]
    note = f"# left out until fixed: {', '.join(left_out)}\n" if left_out else ""
    return f"# {draft.command()}\n{note}{draft.yaml()}"


def _summary(outcome: MergeOutcome | ExtractOutcome, name: str) -> str:
    """What the new artifact is, for the notification after a merge or extraction."""
    m = outcome.manifest
    assert m is not None
    details = ""
    if isinstance(outcome, ExtractOutcome):
        e = outcome.extracted
        text = (
            f"{m.ref}: a rank-{e.rank} LoRA of {len(e.errors)} modules, largest relative "
            f"error {max(e.errors.values()):.3g}, in {e.out_dir}"
        )
    else:
        r = outcome.result
        text = f"{m.ref}: {r.tensors} tensors in {r.seconds:.1f} s, in {r.out_dir}"
        if r.rank is not None:
            details += f"; an adapter of rank {r.rank}"
        if r.truncation_error is not None:
            details += f" (largest relative SVD error {r.truncation_error:.2g})"
    if outcome.existed:  # the registry keeps the first name of identical content
        text += f"; identical to {m.ref}, already registered"
        text += "" if m.name == name else f", so not named {name}"
    return text + details


def _rank_hint(method: str) -> str:
    """What an empty Rank means for a merge of adapters by `method` (fits 80 columns)."""
    if method == EXTRACT:
        return "the adapter's rank (needed)"
    if method in EXACT_METHODS:
        return "adapters; empty: exact (rank sum)"
    return "adapters; empty: rank sum, by SVD"


def _describe(error: BaseException | None) -> str:
    """One line for the user: graft's own message, never a Python class name."""
    if isinstance(error, GraftError):
        return str(error)
    return f"an internal error ({error}); please report it with the config"
