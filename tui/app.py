"""`graft tui`: browse artifacts, their lineage and the layers each one touched;
add artifacts and build merges (the screens in `tui.screens`).

Workers read the catalog (each read takes a short-lived connection) and post
messages; the handlers here are the only code that changes widgets.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, ScrollableContainer
from textual.message import Message
from textual.widgets import Footer, Header, Input, Static, TabbedContent, TabPane
from textual.worker import Worker, WorkerState, get_current_worker

from graft import lineage, registry
from graft.registry import ArtifactDetail, ArtifactRow, GraftError, Store
from graft.tui.grids import parents_of
from graft.tui.render import made_by
from graft.tui.screens.add_dialog import AddDialog
from graft.tui.screens.amend_dialog import AmendDialog
from graft.tui.screens.help import HelpScreen
from graft.tui.widgets import (
    ArtifactTree,
    LayerHeatmap,
    MethodsView,
    Overview,
    SeriesView,
    TensorTable,
)
from graft.tui.widgets.series_view import HINT as SERIES_HINT
from graft.tui.widgets.tensor_table import UNCHANGED

REFRESH_SECONDS = 5.0


def picture_path(what: str) -> Path:
    """Where `p` writes a picture of `what`: NAME@N-view.png in the current folder."""
    return Path(re.sub(r"[^\w@.-]+", "_", what) + ".png").absolute()


@dataclass(frozen=True)
class Loaded:
    """Everything the detail tabs show for one artifact."""

    row: ArtifactRow
    detail: ArtifactDetail
    touches: list[lineage.Touch]
    layers: list[int]
    series: lineage.Series | None  # the run, for a checkpoint RUN/checkpoint-N
    series_note: str  # why there is none


TABS = ("overview-tab", "layers-tab", "tensors-tab", "methods-tab", "series-tab")


class GraftApp(App[None]):
    """Artifacts on the left; overview, touched layers and tensors of the selected one,
    and what every artifact of a method touched. `a` adds an artifact, `b` builds a merge."""

    CSS_PATH = "app.tcss"
    TITLE = "graft"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("escape", "clear_filter", "Clear filter", key_display="esc", show=False),
        Binding("a", "add", "Add"),
        Binding("e", "amend", "Amend"),
        Binding("b", "build_merge", "Merge"),
        # Left out of the footer, which has room for 80 columns only without them:
        # the Methods tab has its number key, and the list refreshes itself.
        Binding("m", "methods", "Methods", show=False),
        Binding("r", "refresh", "Refresh", show=False),
        Binding("p", "picture", "Picture"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("1", "tab(1)", "Tabs", key_display="1-5"),
        *(Binding(str(n), f"tab({n})", show=False) for n in range(2, len(TABS) + 1)),
    ]

    class ArtifactsLoaded(Message):
        def __init__(self, rows: list[ArtifactRow], bases: dict[str, str]) -> None:
            super().__init__()
            self.rows = rows
            self.bases = bases

    class DetailLoaded(Message):
        def __init__(self, loaded: Loaded) -> None:
            super().__init__()
            self.loaded = loaded

    class MethodLoaded(Message):
        def __init__(self, touches: lineage.MethodTouches) -> None:
            super().__init__()
            self.touches = touches

    def __init__(self, store_path: Path | None = None, *, poll: bool = True) -> None:
        super().__init__()
        self.store_path = store_path
        self.poll = poll
        self.rows: list[ArtifactRow] | None = None
        self.shown: str | None = None  # ref of the artifact in the tabs
        self.loaded: Loaded | None = None  # what the tabs show
        self.pending: str | None = None  # a new artifact to select once it is listed
        self._store: Store | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            yield ArtifactTree(id="artifacts")
            with TabbedContent(id="tabs"):
                # Long metadata scrolls sideways at 80 columns; the grids say what they hide.
                with TabPane("Overview", id="overview-tab"), ScrollableContainer():
                    yield Overview(id="overview")
                with TabPane("Layers", id="layers-tab"):
                    yield LayerHeatmap(id="heatmap")
                with TabPane("Tensors", id="tensors-tab"):
                    yield TensorTable(id="tensors")
                    yield Static("", id="tensor-detail")
                with TabPane("Methods", id="methods-tab"):
                    yield MethodsView(id="methods")
                with TabPane("Series", id="series-tab"):
                    yield SeriesView(id="series")
        yield Footer(compact=True)  # every key fits in 80 columns

    def on_mount(self) -> None:
        self.query_one(ArtifactTree).tree_view.focus()
        self.load_artifacts()
        if self.poll:
            self.set_interval(REFRESH_SECONDS, self._poll)

    def _poll(self) -> None:
        """The timer's refresh, skipped while a load still runs: a slow catalog read
        is never cancelled by the next tick."""
        if not any(w.group == "artifacts" and not w.is_finished for w in self.workers):
            self.load_artifacts()

    # Workers: they read, never touch widgets, and post what they found.

    def store(self) -> Store:
        if self._store is None:
            self._store = Store.open(self.store_path)
        return self._store

    @work(thread=True, exit_on_error=False, exclusive=True, group="artifacts")
    def load_artifacts(self) -> None:
        store = self.store()
        rows = registry.list_artifacts(store)
        refs = {r.id: r.ref for r in rows}
        # A merge hangs under the parent it was based on.
        bases = {
            refs[child]: refs[parent]
            for child, parent in lineage.base_parents(store).items()
            if child in refs and parent in refs
        }
        if not get_current_worker().is_cancelled:
            self.post_message(self.ArtifactsLoaded(rows, bases))

    @work(thread=True, exit_on_error=False, exclusive=True, group="detail")
    def load_detail(self, row: ArtifactRow) -> None:
        store = self.store()
        detail = registry.show(store, row.ref)
        touches = lineage.touched(store, row.ref)
        layers = lineage.layers_of(store, row.ref)
        series, note = None, ""
        run = lineage.run_of(row.name)
        if run is not None:
            try:
                series = lineage.series(store, run)
            except GraftError as e:
                note = f"run {run}: {e.message}"
        if not get_current_worker().is_cancelled:
            loaded = Loaded(row, detail, touches, layers, series, note)
            self.post_message(self.DetailLoaded(loaded))

    @work(thread=True, exit_on_error=False, exclusive=True, group="method")
    def load_method(self, method: str) -> None:
        touches = lineage.touched_by_method(self.store(), method)
        if not get_current_worker().is_cancelled:
            self.post_message(self.MethodLoaded(touches))

    # Handlers: the only place widgets change.

    def on_graft_app_artifacts_loaded(self, message: ArtifactsLoaded) -> None:
        tree = self.query_one(ArtifactTree)
        if message.rows != self.rows:
            self.rows = message.rows
            tree.show_rows(message.rows, message.bases)
            self._update_lists(message.rows)
        if self.pending is not None and tree.select_ref(self.pending):
            self.pending = None
            tree.tree_view.focus()

    def _update_lists(self, rows: list[ArtifactRow]) -> None:
        self.query_one(MethodsView).show_methods(made_by(r) for r in rows)
        if not rows:
            self.query_one(Overview).say(
                "No artifacts in this store yet: press a to add one (or run "
                "`graft add PATH`), or try `graft tui --demo`."
            )

    @on(ArtifactTree.Filtered)
    def _filtered(self, message: ArtifactTree.Filtered) -> None:
        total = len(self.rows or [])
        noun = f"artifact{'' if total == 1 else 's'}"
        if not message.query:
            self.sub_title = f"{total} {noun}"
            return
        self.sub_title = f"{message.shown} of {total} {noun} shown"
        if not message.shown and total:
            self.shown = self.loaded = None  # what the panes showed is filtered out
            self.query_one(Overview).say(
                f"No artifact matches {message.query!r}: esc clears the filter."
            )
            self.query_one(LayerHeatmap).show([], [], "")
            self.query_one(TensorTable).show(None, [])

    def select_when_listed(self, ref: str) -> None:
        """Reload the list and put the cursor on `ref` (a new artifact) once it is there."""
        self.pending = ref
        self.query_one(ArtifactTree).filter_input.value = ""  # a filter could hide it
        self.load_artifacts()

    def on_graft_app_detail_loaded(self, message: DetailLoaded) -> None:
        loaded = message.loaded
        current = self.query_one(ArtifactTree).current
        if current is None or current.ref != loaded.row.ref:
            return  # the cursor moved on while it loaded
        self.shown = loaded.row.ref
        self.query_one(Overview).show(loaded.detail, loaded.touches)
        parents = ", ".join(parents_of(loaded.touches)) or "no parent"
        caption = f"{loaded.row.ref} vs {parents}: largest rel. change per module (· untouched)"
        self.query_one(LayerHeatmap).show(loaded.touches, loaded.layers, caption)
        self.query_one(TensorTable).show(loaded.detail.manifest, loaded.touches)
        self.query_one(SeriesView).show(loaded.series, loaded.series_note)
        self.loaded = loaded

    def on_graft_app_method_loaded(self, message: MethodLoaded) -> None:
        view = self.query_one(MethodsView)
        if view.method == message.touches.method:  # else another method was chosen meanwhile
            view.show(message.touches)

    @on(TensorTable.Highlighted)
    def _tensor_highlighted(self, message: TensorTable.Highlighted) -> None:
        """The cursor's row in full under the table: a narrow pane cuts names and columns."""
        detail = self.query_one("#tensor-detail", Static)
        if message.row is None:
            detail.update("")
            return
        change, name, shape, dtype, size = message.row
        said = "unchanged" if change == UNCHANGED else f"change {change}"
        detail.update(Text.assemble((name, "bold"), f"\n{shape}  {dtype}  {size}  {said}"))

    @on(MethodsView.Chosen)
    def _method_chosen(self, message: MethodsView.Chosen) -> None:
        self.load_method(message.method)

    @on(ArtifactTree.Selected)
    def _selected(self, message: ArtifactTree.Selected) -> None:
        self.load_detail(message.row)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            self.notify(str(event.worker.error), title="graft: error", severity="error")

    # Actions.

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "clear_filter":  # dimmed while there is no filter to clear
            trees = self.query(ArtifactTree)
            return True if trees and trees.first().filter_input.value else None
        return True

    @on(Input.Changed, "#filter")
    def _filter_changed(self) -> None:
        self.refresh_bindings()

    def action_filter(self) -> None:
        self.query_one(ArtifactTree).filter_input.focus()

    def action_clear_filter(self) -> None:
        tree = self.query_one(ArtifactTree)
        tree.filter_input.value = ""
        tree.tree_view.focus()

    def action_methods(self) -> None:
        self.query_one(TabbedContent).active = "methods-tab"
        self.query_one(MethodsView).option_list.focus()

    def action_tab(self, number: int) -> None:
        if TABS[number - 1] == "methods-tab":
            self.action_methods()
            return
        tabs = self.query_one(TabbedContent)
        focused = self.screen.focused
        if focused is not None and tabs in focused.ancestors:
            # focus left in the old pane would bring that pane back
            self.query_one(ArtifactTree).tree_view.focus()
        tabs.active = TABS[number - 1]

    @on(TabbedContent.TabActivated)
    def _tab_shown(self, event: TabbedContent.TabActivated) -> None:
        options = self.query_one(MethodsView).option_list
        if event.pane.id == "methods-tab" and options.highlighted is None and options.option_count:
            options.highlighted = 0  # however the tab was reached, show the first method

    def action_refresh(self) -> None:
        self.load_artifacts()
        method = self.query_one(MethodsView).method
        if method is not None:
            self.load_method(method)
        if self.shown is not None:
            for row in self.query_one(ArtifactTree).rows:
                if row.ref == self.shown:
                    self.load_detail(row)

    def action_add(self) -> None:
        rows = self.rows or []
        dialog = AddDialog(
            self.store(), refs=[r.ref for r in rows], methods=[r.method for r in rows if r.method]
        )
        self.push_screen(dialog, self._select_new)

    def action_amend(self) -> None:
        current = self.query_one(ArtifactTree).current
        if current is None:
            self.notify("select an artifact to amend first", severity="warning")
            return
        rows = self.rows or []
        dialog = AmendDialog(
            self.store(),
            current,
            refs=[r.ref for r in rows],
            methods=[r.method for r in rows if r.method],
        )
        self.push_screen(dialog, self._select_new)

    def action_build_merge(self) -> None:
        if "graft.tui.screens.merge_builder" not in sys.modules:  # the first time: torch loads
            self.notify("loading the merge engine…", timeout=3)
            self.call_after_refresh(self._open_builder)  # so that the notice shows first
        else:
            self._open_builder()

    def _open_builder(self) -> None:
        from graft.tui.screens.merge_builder import MergeBuilder  # imports torch: only when asked

        tree = self.query_one(ArtifactTree)
        current = tree.current
        parent = None if current is None else tree.parent_of.get(current.ref)
        builder = MergeBuilder(self.store(), self.rows or [], current, parent)
        self.push_screen(builder, self._select_new)

    def _select_new(self, ref: str | None) -> None:
        if ref is not None:
            self.select_when_listed(ref)

    def action_picture(self) -> None:
        """Draw the open tab (Overview: the lineage graph) to a PNG in the current folder."""
        tab = self.query_one(TabbedContent).active
        method = self.query_one(MethodsView).touches
        if tab == "methods-tab":
            if method is None:
                self.notify("choose a method first", severity="warning")
                return
            self.draw_picture(tab, None, method)
        elif self.loaded is None:
            self.notify("select an artifact first", severity="warning")
        elif tab == "series-tab" and self.loaded.series is None:
            self.notify(self.loaded.series_note or SERIES_HINT, severity="warning")
        else:
            self.draw_picture(tab, self.loaded, None)

    @work(thread=True, exit_on_error=False, group="picture")
    def draw_picture(
        self, tab: str, loaded: Loaded | None, method: lineage.MethodTouches | None
    ) -> None:
        from graft.tui import pictures  # matplotlib: only once a picture is asked for

        if method is not None:
            drawn = pictures.method_heatmap(method, picture_path(f"method-{method.method}"))
        else:
            assert loaded is not None
            m = loaded.detail.manifest
            if tab == "series-tab" and loaded.series is not None:
                drawn = pictures.series_plot(loaded.series, picture_path(f"{m.ref}-series"))
            elif tab == "overview-tab":
                me, entries = lineage.log(self.store(), m.ref)
                drawn = pictures.lineage_graph(
                    me, entries, picture_path(f"{m.ref}-lineage"), children=False
                )
            else:
                path = picture_path(f"{m.ref}-layers")
                drawn = pictures.touched_heatmap(m, loaded.touches, loaded.layers, path)
        self.call_from_thread(self.notify, f"wrote {drawn.path}", title="picture")

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.BINDINGS))
