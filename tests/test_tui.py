"""The Textual app through Pilot, on one demo-populated store for the module."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console
from rich.table import Table
from textual.widgets import Static, TabbedContent
from textual.widgets._footer import FooterKey

import graft.tui.app as tui_app
from graft import lineage, registry
from graft.lineage.names import adapter_key
from graft.registry import ArtifactRow, Store, StoreError, list_artifacts
from graft.registry.manifest import FileRecord, Manifest, TensorRecord
from graft.tui.app import GraftApp
from graft.tui.cli import cli
from graft.tui.demo import populate
from graft.tui.grids import short_legend, short_module
from graft.tui.widgets import (
    ArtifactTree,
    LayerHeatmap,
    MethodsView,
    Overview,
    TensorTable,
    artifact_tree,
)
from graft.tui.widgets.artifact_tree import main_parents, opened_within, placed
from graft.tui.widgets.tensor_table import fit_name
from graft.tui.widgets.wide_table import WideTable, column_spans, hidden_columns
from tests.procs import GRAFT, graft_env

SAMPLES = Path(__file__).resolve().parent.parent / "sample_artifacts"
SIZE = (100, 30)
pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    path = tmp_path_factory.mktemp("tui") / "store"
    populate(Store.open(path))
    yield path
    mp.undo()


@pytest.fixture
def store_path(demo_store: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GRAFT_STORE", str(demo_store))
    return demo_store


async def _loaded(app: GraftApp, pilot) -> ArtifactTree:  # type: ignore[no-untyped-def]
    await app.workers.wait_for_complete()
    await pilot.pause()
    return app.query_one(ArtifactTree)


async def _select(app: GraftApp, pilot, ref: str) -> None:  # type: ignore[no-untyped-def]
    assert app.query_one(ArtifactTree).select_ref(ref)
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()
    assert app.shown == ref


async def test_tree_hangs_artifacts_under_their_parents(store_path: Path) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        tree = await _loaded(app, pilot)
        shape = tree.structure()
        assert shape[""] == ["tiny-llama@1"]
        assert set(shape["tiny-llama@1"]) == {
            "lora-copy@1",
            "lora-reverse@1",
            "lora-count@1",
            "tiny-llama-sft@1",
            "demo-soup@1",  # under its base, the other parents counted in its label
        }
        soup = next(
            n for n in tree.tree_view.root.children[0].children if n.data.ref == "demo-soup@1"
        )
        assert str(soup.label) == "demo-soup@1  merge  ties  +2 parents"  # fits at 80 columns


async def test_slash_filters_and_keeps_ancestors(store_path: Path) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        tree = await _loaded(app, pilot)
        await pilot.press("slash")
        assert tree.filter_input.has_focus
        await pilot.press(*"LoRA")
        await pilot.pause()
        assert tree.structure() == {
            "": ["tiny-llama@1"],
            "tiny-llama@1": ["lora-copy@1", "lora-reverse@1", "lora-count@1"],
            "lora-copy@1": [],
            "lora-reverse@1": [],
            "lora-count@1": [],
        }
        await pilot.press("escape")
        await pilot.pause()
        assert len(tree.structure()["tiny-llama@1"]) == 5


async def test_a_filter_that_matches_nothing_says_so_and_hides_the_panes(
    store_path: Path,
) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=(80, 24)) as pilot:
        tree = await _loaded(app, pilot)
        total = len(tree.rows)
        assert app.sub_title == f"{total} artifacts" and app.shown is not None
        await pilot.press("slash", *"lora")
        await pilot.pause()
        assert app.sub_title == f"4 of {total} artifacts shown"  # 3 adapters and their base
        await pilot.press(*"zzz")
        await pilot.pause()
        assert tree.structure() == {"": []}
        assert app.sub_title == f"0 of {total} artifacts shown"
        assert app.shown is None
        assert "No artifact matches 'lorazzz'" in str(app.query_one(Overview).render())
        assert app.query_one(TensorTable).row_count == 0
        await pilot.press("escape")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.sub_title == f"{total} artifacts" and app.shown is not None


def test_the_filter_matches_how_an_artifact_was_made() -> None:
    """An adapter made by a merge (kind adapter, method ties) is found by `merge`."""
    from graft.tui.widgets.artifact_tree import matching

    soup = ArtifactRow("id", "soup", 1, "adapter", "", 0, 0, "ties", [], relations=["merge"])
    other = ArtifactRow("id2", "lora", 1, "adapter", "", 0, 0, "lora", [])
    assert matching([soup, other], {}, "merge") == {"soup@1"}
    assert matching([soup, other], {}, "TIES") == {"soup@1"}


def test_first_screen_opens_nodes_breadth_first_within_a_budget() -> None:
    def row(ref: str) -> ArtifactRow:
        name, version = ref.split("@")
        return ArtifactRow("id-" + ref, name, int(version), "model", "", 0, 0, None, [])

    children = {
        None: [row("a@1"), row("b@1")],
        "a@1": [row("a1@1"), row("a2@1")],
        "b@1": [row("b1@1"), row("b2@1"), row("b3@1")],
        "a1@1": [row("a11@1")],
    }
    assert opened_within(children, 100) == {"a@1", "b@1", "a1@1"}
    # 2 roots + a's 2; b's 3 would make 7, so b stays closed and a1's 1 still fits
    assert opened_within(children, 5) == {"a@1", "a1@1"}
    assert opened_within(children, 2) == set()


def test_every_kept_row_is_placed_once_even_in_a_cycle() -> None:
    def row(ref: str, *parents: str) -> ArtifactRow:
        name, version = ref.split("@")
        return ArtifactRow("id-" + ref, name, int(version), "model", "", 0, 0, None, list(parents))

    rows = [row("base@1"), row("ft@1", "base@1"), row("a@1", "b@1"), row("b@1", "a@1")]
    parent_of = main_parents(rows, {})
    assert placed(rows, parent_of, "") == {
        "base@1": None,
        "ft@1": "base@1",
        "a@1": None,  # a cycle: no root leads there, so both are roots
        "b@1": None,
    }
    assert placed(rows, parent_of, "ft") == {"base@1": None, "ft@1": "base@1"}


async def test_a_node_closed_by_hand_stays_closed(store_path: Path) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        tree = await _loaded(app, pilot)
        root = tree.tree_view.root.children[0]
        assert root.is_expanded  # the demo fits the first screen's budget
        tree.tree_view.move_cursor(root)
        await pilot.press("space")
        await pilot.pause()
        await pilot.press("slash", *"lora")  # a filter opens the way to its matches
        await pilot.pause()
        assert tree.tree_view.root.children[0].is_expanded
        await pilot.press("escape")  # cleared: closed again, as the user left it
        await pilot.pause()
        assert not tree.tree_view.root.children[0].is_expanded
        tree.show_rows(list(tree.rows), {"demo-soup@1": "tiny-llama@1"})  # a refresh, too
        await pilot.pause()
        assert not tree.tree_view.root.children[0].is_expanded


async def test_a_large_tree_builds_children_when_opened(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(artifact_tree, "INITIAL_NODES", 3)  # the root, not its 5 children
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        tree = await _loaded(app, pilot)
        root = tree.tree_view.root.children[0]
        assert not root.is_expanded and root.allow_expand and not root.children
        await pilot.press("space")  # opens the node under the cursor
        await pilot.pause()
        assert len(tree.structure()["tiny-llama@1"]) == 5
        await pilot.press("space")
        await pilot.pause()
        assert not root.is_expanded
        tree.show_rows(list(tree.rows), {"demo-soup@1": "tiny-llama@1"})  # closed stays closed
        await pilot.pause()
        assert not tree.tree_view.root.children[0].is_expanded
        await _select(app, pilot, "demo-soup@1")  # opens the path to it
        assert tree.tree_view.root.children[0].is_expanded


async def test_fine_tune_details(store_path: Path) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(app, pilot)
        await _select(app, pilot, "tiny-llama-sft@1")
        overview = app.query_one(Overview)
        assert overview.fields["kind"] == "model" and overview.fields["method"] == "sft"
        assert overview.fields["parents"] == "tiny-llama@1 (finetune)"
        assert overview.fields["shared"] == "21 of 39 tensors (492.8 kB) with tiny-llama@1"

        grid = app.query_one(LayerHeatmap).grid
        assert grid.changed_layers() == [2, 3]
        assert set(grid.layers) >= {0, 1, 2, 3}
        cells = {row[0]: row[1:] for row in grid.cells()}
        assert all(c == "·" for c in cells["0"] + cells["1"])
        assert all(c != "·" for c in cells["2"] + cells["3"])

        table = app.query_one(TensorTable)
        assert table.row_count == 39
        assert sum(table.changed) == 18
        await pilot.press("question_mark")
        await pilot.pause()
        assert type(app.screen).__name__ == "HelpScreen"
        assert ("r", "Refresh") in app.screen.rows()  # type: ignore[attr-defined]


async def test_a_merge_overview_names_each_input_with_its_weights(store_path: Path) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(app, pilot)
        await _select(app, pilot, "demo-soup@1")
        parents = app.query_one(Overview).fields["parents"].splitlines()
        assert sorted(parents) == [
            "lora-copy@1 (merge, role=input, weight=0.4, density=0.5)",
            "tiny-llama-sft@1 (merge, role=input, weight=0.6, density=0.5)",
            "tiny-llama@1 (merge, role=base)",
        ]
        # what changed is measured against the base only, and both panes say so
        assert app.query_one(Overview).fields["changed"].endswith("tensors against tiny-llama@1")
        assert app.query_one(LayerHeatmap).caption.startswith("demo-soup@1 vs tiny-llama@1: ")


async def test_refresh_keeps_selection_and_fits_80x24(store_path: Path) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await _loaded(app, pilot)
        await _select(app, pilot, "demo-soup@1")
        await pilot.press("r")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.shown == "demo-soup@1"
        assert app.query_one(TensorTable).row_count == 39
        # A changed list rebuilds the tree; the cursor stays on the same artifact.
        panel = app.query_one(ArtifactTree)
        panel.show_rows(list(reversed(panel.rows)), {"demo-soup@1": "tiny-llama@1"})
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert panel.current is not None and panel.current.ref == "demo-soup@1"
        assert app.shown == "demo-soup@1"


async def _choose_method(app: GraftApp, pilot, method: str) -> MethodsView:  # type: ignore[no-untyped-def]
    view = app.query_one(MethodsView)
    options = view.option_list
    assert options.has_focus
    for _ in range(options.option_count):
        if options.highlighted_option is not None and options.highlighted_option.id == method:
            break
        await pilot.press("down")
    await pilot.press("enter")
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()
    assert view.touches is not None and view.touches.method == method
    return view


async def test_m_shows_what_every_artifact_of_a_method_touched(store_path: Path) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await _loaded(app, pilot)
        await pilot.press("m")
        await pilot.pause()
        assert app.query_one("#tabs", TabbedContent).active == "methods-tab"
        view = app.query_one(MethodsView)
        # rslora: lora-reverse's adapter type is lora+rslora
        assert [o.id for o in view.option_list.options] == ["lora", "rslora", "sft", "ties"]

        view = await _choose_method(app, pilot, "lora")
        assert view.touches is not None
        assert view.touches.artifacts == ["lora-copy@1", "lora-reverse@1", "lora-count@1"]
        shown = str(view.query_one("#method-artifacts", Static).render())
        assert "lora-copy@1, lora-reverse@1, lora-count@1" in shown
        counts = view.counts()
        assert counts[(0, "q_proj")] == counts[(0, "v_proj")] == 2  # lora-copy, lora-reverse
        assert counts[(0, "gate_proj")] == 2  # lora-reverse, lora-count
        assert counts[(0, "k_proj")] == 1

        view = await _choose_method(app, pilot, "sft")
        assert view.touches is not None and view.touches.artifacts == ["tiny-llama-sft@1"]
        assert view.changed_layers() == [2, 3]
        assert set(view.counts().values()) == {1}
        await pilot.press("r")  # a refresh reloads the chosen method
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert view.method == "sft" and view.changed_layers() == [2, 3]
        assert not [n for n in app._notifications if n.severity == "error"]


WIDE = (160, 24)  # wide enough for whole tensor names


def _text(table: TensorTable, y: int) -> str:
    return "".join(segment.text for segment in table.render_line(y))


async def test_the_tensor_table_draws_a_screen_at_a_time(store_path: Path) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await _loaded(app, pilot)
        await _select(app, pilot, "tiny-llama-sft@1")
        app.query_one(TabbedContent).active = "tensors-tab"
        table = app.query_one(TensorTable)
        table.focus()
        await pilot.pause()
        header = _text(table, 0).split()
        assert header[:2] == ["change", "tensor"]  # the rest may need a scroll sideways
        first = table.rows[0]
        assert _text(table, 1).split()[:2] == list(first[:2])  # the change, then the name
        await pilot.press("down", "down", "down")
        assert table.cursor_row == 3
        await pilot.press("end")
        assert table.cursor_row == 38
        visible = table.visible_rows
        assert visible == table.size.height - 2  # the header, and the horizontal scrollbar
        assert table.scroll_offset.y == 39 - visible  # the last row sits at the bottom
        assert _text(table, visible).split()[1] == table.rows[38][1]  # the change, the name
        await pilot.press("home", "pagedown")
        assert table.cursor_row == visible
        assert await pilot.click(TensorTable, offset=(3, 2))  # the second line under the header
        assert table.cursor_row == table.scroll_offset.y + 1


async def test_the_tensor_table_takes_tens_of_thousands_of_rows(store_path: Path) -> None:
    n = 50_000
    records = tuple(
        TensorRecord(f"model.layers.{i}.w.weight", "BF16", (8, 8), 0, 128, f"{i:032x}")
        for i in range(n)
    )
    manifest = Manifest(
        "0" * 32, "big", 1, "model", "", None, (FileRecord("m.safetensors", 0, "0" * 32, records),)
    )
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=WIDE) as pilot:
        await _loaded(app, pilot)
        app.query_one(TabbedContent).active = "tensors-tab"
        table = app.query_one(TensorTable)
        table.show(manifest, [])
        table.focus()
        await pilot.pause()
        assert table.row_count == n and not any(table.changed)
        await pilot.press("end")
        assert table.cursor_row == n - 1
        assert _text(table, table.size.height - 1).split()[1] == f"model.layers.{n - 1}.w.weight"


async def test_adapter_factors_show_the_change_of_the_tensor_they_target(
    store_path: Path,
) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(app, pilot)
        await _select(app, pilot, "lora-copy@1")
        table = app.query_one(TensorTable)
        touched = {t.tensor: t for t in lineage.touched(Store.open(store_path), "lora-copy@1")}
        assert table.rows and all(table.changed)
        for change, name, *_ in table.rows:
            key = adapter_key(name)
            assert key is not None and key.base_tensor in touched
            expected = touched[key.base_tensor].rel_change
            assert expected is not None and change == format(expected, ".3g")


async def test_every_artifact_opens_without_errors(store_path: Path) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        tree = await _loaded(app, pilot)
        for row in tree.rows:
            await _select(app, pilot, row.ref)
            assert app.query_one(TensorTable).row_count == row.n_tensors
        assert app.query_one(LayerHeatmap).grid.changed_layers()  # demo-soup changed some
        assert not [n for n in app._notifications if n.severity == "error"]


async def test_a_failing_read_becomes_an_error_notification(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(store: Store, ref: str) -> None:
        raise StoreError(f"cannot read {ref}", "run `graft verify`")

    monkeypatch.setattr(registry, "show", broken)
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(app, pilot)
        await app.workers.wait_for_complete()
        await pilot.pause()
        errors = [n.message for n in app._notifications if n.severity == "error"]
        assert errors and "cannot read tiny-llama@1" in errors[0]
        assert app.is_running  # the app stays up


async def test_polling_leaves_an_unchanged_tree_alone(store_path: Path) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        tree = await _loaded(app, pilot)
        first = tree.tree_view.root.children[0]
        app.load_artifacts()  # a refresh, as the 5 s timer starts
        await _loaded(app, pilot)
        assert tree.tree_view.root.children[0] is first


async def test_an_empty_store_says_what_to_do(tmp_path: Path) -> None:
    app = GraftApp(tmp_path / "empty", poll=False)
    async with app.run_test(size=SIZE) as pilot:
        tree = await _loaded(app, pilot)
        assert tree.structure() == {"": []}
        hint = str(app.query_one(Overview).render())
        assert "press a to add one" in hint and "graft add" in hint
        assert app.sub_title == "0 artifacts"
        for size in ((120, 40), (80, 24)):  # the hint wraps in the pane, never cut
            await pilot.resize_terminal(*size)
            await pilot.pause()
            overview = app.query_one(Overview)
            pane = overview.parent
            assert pane is not None and overview.region.right <= pane.region.right
            assert overview.size.height >= 2


async def test_number_keys_switch_tabs_and_the_footer_says_so(store_path: Path) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await _loaded(app, pilot)
        tabs = app.query_one(TabbedContent)
        shown = [b.binding for b in app.active_bindings.values() if b.binding.show]
        footer_keys = {b.key_display for b in shown}
        assert "1-5" in footer_keys
        drawn = {k.key_display: k.region for k in app.query(FooterKey)}
        palette = drawn.pop("^p")  # docked on the right, over whatever runs under it
        assert max(r.right for r in drawn.values()) <= palette.x  # every key in sight
        for key, pane in (("2", "layers-tab"), ("3", "tensors-tab"), ("5", "series-tab")):
            await pilot.press(key)
            await pilot.pause()
            assert tabs.active == pane
        await pilot.press("4")
        await pilot.pause()
        methods = app.query_one(MethodsView).option_list
        assert tabs.active == "methods-tab" and methods.has_focus
        assert methods.highlighted == 0  # a method is shown at once; enter works
        await pilot.press("1")
        await pilot.pause()
        assert tabs.active == "overview-tab"
        await pilot.press("slash", "2")  # in the filter a digit is text, not a tab key
        await pilot.pause()
        assert tabs.active == "overview-tab"
        assert app.query_one(ArtifactTree).filter_input.value == "2"


async def test_the_title_counts_one_artifact_in_the_singular(tmp_path: Path) -> None:
    path = tmp_path / "one"
    lineage.register(SAMPLES / "tiny-llama", store=Store.open(path), name="tiny-llama")
    app = GraftApp(path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(app, pilot)
        assert app.sub_title == "1 artifact"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
def test_cli_help(anyio_backend: str) -> None:
    result = CliRunner().invoke(cli, ["tui", "--help"])
    assert result.exit_code == 0
    assert "--demo" in result.output


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
def test_cli_demo_uses_a_temporary_store(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[tuple[Path, int]] = []

    def fake_run(app: GraftApp) -> None:
        assert app.store_path is not None
        seen.append((app.store_path, len(list_artifacts(Store.open(app.store_path)))))

    monkeypatch.setenv("GRAFT_STORE", str(tmp_path / "mine"))
    monkeypatch.setattr(GraftApp, "run", fake_run)
    result = CliRunner().invoke(cli, ["tui", "--demo"])
    assert result.exit_code == 0, result.output
    [(path, count)] = seen
    assert count == 6
    assert not path.exists()  # removed on exit
    assert not (tmp_path / "mine").exists()  # the user's store is left alone


async def test_artifacts_added_by_another_process_appear_on_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    lineage.register(SAMPLES / "tiny-llama", store=Store.open(store), name="tiny-llama")
    monkeypatch.setattr(tui_app, "REFRESH_SECONDS", 0.2)
    app = GraftApp(store, poll=True)
    async with app.run_test(size=SIZE) as pilot:
        # Polling: a new load cancels one still running, so wait on the tree itself.
        tree = app.query_one(ArtifactTree)
        for _ in range(600):
            await pilot.pause(0.05)
            if tree.rows:
                break
        assert tree.structure() == {"": ["tiny-llama@1"], "tiny-llama@1": []}
        # A real `graft add` next to the polling app: the app holds no lock while idle.
        child = subprocess.Popen(
            [str(GRAFT), "add", str(SAMPLES / "lora-copy"), "--parent", "tiny-llama"],
            env=graft_env(store),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(600):
            await pilot.pause(0.05)
            if child.poll() is not None and len(tree.rows) == 2:
                break
        assert child.wait(timeout=60) == 0, child.stderr.read() if child.stderr else ""
        assert tree.structure()["tiny-llama@1"] == ["lora-copy@1"]


async def test_the_mouse_selects_artifacts_and_tabs(store_path: Path) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        tree = await _loaded(app, pilot)
        line = next(
            i
            for i in range(tree.tree_view.last_line + 1)
            if (node := tree.tree_view.get_node_at_line(i)) and node.data.ref == "tiny-llama-sft@1"
        )
        assert await pilot.click("#artifact-tree", offset=(6, line))
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.shown == "tiny-llama-sft@1"
        assert await pilot.click("#--content-tab-layers-tab")
        await pilot.pause()
        assert app.query_one(TabbedContent).active == "layers-tab"
        assert app.query_one(LayerHeatmap).grid.changed_layers() == [2, 3]


async def test_artifacts_fetched_from_a_remote_open_without_their_weights(
    demo_store: Path, tmp_path: Path
) -> None:
    """A store that only fetched the demo store's artifacts from a shared folder
    shows the same tree, details and touched layers, with no blob stored."""
    shared = tmp_path / "shared"
    shared.mkdir()
    source, fetched = Store.open(demo_store), Store.open(tmp_path / "fetched")
    for s in (source, fetched):
        registry.add_remote(s, "team", shared.as_uri())
    lineage.push(source, [r.ref for r in list_artifacts(source)], "team")
    registry.fetch(fetched, "team")
    app = GraftApp(fetched.root, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        tree = await _loaded(app, pilot)
        assert tree.structure()[""] == ["team:tiny-llama@1"]
        await _select(app, pilot, "team:tiny-llama-sft@1")
        assert app.query_one(Overview).fields["parents"] == "team:tiny-llama@1 (finetune)"
        assert app.query_one(LayerHeatmap).grid.changed_layers() == [2, 3]
        assert app.query_one(TensorTable).row_count == 39
        assert not [n for n in app._notifications if n.severity == "error"]
    assert not list((fetched.root / "blobs").rglob("*"))


# At 80×24 nothing is cut without a word: grids name the columns out of sight,
# tensor names keep their distinctive end and the cursor's row shows in full.
NARROW = (80, 24)


async def test_a_grid_wider_than_the_pane_names_the_columns_out_of_sight(
    store_path: Path,
) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=NARROW) as pilot:
        await _loaded(app, pilot)
        await pilot.press("2")
        await _select(app, pilot, "demo-soup@1")
        heatmap = app.query_one(LayerHeatmap)
        table = heatmap.query_one(WideTable)
        await pilot.pause()
        headers = [s.header for s in table.spans]
        assert headers[:5] == ["LAYER", "k", "o", "q", "v"]  # k_proj... shortened
        assert "_proj dropped" in str(heatmap.query_one(".caption", Static).content)
        window = table.scroller.scrollable_content_region.width
        hidden = [s.header for s in table.spans if s.end > window]
        assert hidden and table.marker.startswith(f"→ {len(hidden)} more columns: ")
        assert table.marker.split(": ", 1)[1].startswith(", ".join(hidden))
        table.scroller.scroll_to(x=table.scroller.max_scroll_x, animate=False)
        await pilot.pause()
        assert table.marker.startswith("← ") and "more columns:" not in table.marker
        await pilot.resize_terminal(200, 24)  # everything fits: the line goes
        await pilot.pause()
        await pilot.pause()
        assert table.marker == ""


async def test_the_methods_grid_names_the_columns_out_of_sight(store_path: Path) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=NARROW) as pilot:
        await _loaded(app, pilot)
        await pilot.press("4")
        view = await _choose_method(app, pilot, "lora")
        await pilot.pause()
        grid = view.query_one(WideTable)
        assert [s.header for s in grid.spans][:5] == ["LAYER", "k", "o", "q", "v"]
        assert grid.marker.startswith("→ ") and "up" in grid.marker


async def test_narrow_tensor_names_keep_their_end_and_the_row_shows_in_full(
    store_path: Path,
) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=NARROW) as pilot:
        await _loaded(app, pilot)
        await _select(app, pilot, "lora-copy@1")
        await pilot.press("3")
        await pilot.pause()
        table = app.query_one(TensorTable)
        header = _text(table, 0)
        assert header.split()[:2] == ["change", "tensor"]
        assert header.rstrip().endswith("→ shape dtype size")  # past the right edge
        a, b = _text(table, 1), _text(table, 2)  # a layer's lora_A and lora_B
        assert a.rstrip().endswith("q_proj.lora_A.weight") and "…" in a
        assert b.rstrip().endswith("q_proj.lora_B.weight")
        table.focus()
        await pilot.press("down")
        detail = str(app.query_one("#tensor-detail", Static).content)
        assert detail.startswith(f"{table.rows[1][1]}\n{table.rows[1][2]}  {table.rows[1][3]}")
        assert "change " + table.rows[1][0] in detail


def test_fit_name_keeps_the_end_and_starts_at_a_whole_part() -> None:
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert fit_name(name, len(name)) == name
    assert fit_name(name, 34) == "…0.self_attn.q_proj.lora_A.weight"
    assert fit_name("abcdefghij", 5) == "…ghij"  # no dot: the last characters
    for width in range(2, len(name)):
        assert len(fit_name(name, width)) <= width and name.endswith(fit_name(name, width)[1:])


def test_module_names_shorten_with_a_legend() -> None:
    modules = ["q_proj", "down_proj", "post_attention_layernorm", "embed_tokens", "lm_head"]
    assert [short_module(m) for m in modules] == ["q", "down", "post_attn_norm", "embed", "lm_head"]
    assert short_legend(modules) == (
        "_proj dropped; norm = layernorm; attn = attention; embed = embed_tokens"
    )
    assert short_legend(["lm_head", "norm"]) == ""


def test_column_spans_match_where_rich_draws_the_headers() -> None:
    console = Console(width=300, record=True)
    table = Table(box=None, pad_edge=False)
    for header in ("LAYER", "k", "gate"):
        table.add_column(header)
    table.add_row("12", "0.013", "x")
    table.add_row("3", "·", "0.5")
    spans = column_spans(table, console)
    console.print(table)
    first = console.export_text().splitlines()[0]
    for span in spans:
        assert first[span.start : span.start + len(span.header)] == span.header
    assert spans[-1].end == len(first.rstrip())
    assert hidden_columns(spans, 0, spans[1].end) == ([], ["gate"])
    assert hidden_columns(spans, spans[1].start, 100) == (["LAYER"], [])
