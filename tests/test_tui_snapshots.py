"""Snapshots of the main screens at 100×30, on the demo store (pytest-textual-snapshot).

Update them after an intended change with `pytest tests/test_tui_snapshots.py
--snapshot-update`, and look at the SVGs under tests/__snapshots__/. The Overview
tab shows creation times and the samples' absolute paths, so no snapshot shows it,
not even behind a dialog.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import TabbedContent

import graft.tui.screens.merge_builder  # noqa: F401  loaded, so `b` shows no "loading" notice
from graft.registry import Store
from graft.tui.app import GraftApp
from graft.tui.demo import populate
from graft.tui.widgets import ArtifactTree

SIZE = (100, 30)


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path_factory.mktemp("snapshots") / "store"
    populate(Store.open(path))
    yield path
    mp.undo()


def _on(
    ref: str, tab: str | None = None, keys: tuple[str, ...] = ()
) -> Callable[[Pilot[Any]], Any]:
    """Wait for the catalog, put the cursor on `ref`, open `tab`, press `keys` and
    wait for what they started."""

    async def before(pilot: Pilot[Any]) -> None:
        app = pilot.app
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.query_one(ArtifactTree).select_ref(ref)
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        if tab is not None:
            app.query_one(TabbedContent).active = tab
            await pilot.pause()
            await pilot.wait_for_scheduled_animations()  # the tab's underline slides
        for key in keys:
            await pilot.press(key)
            await pilot.pause()
            await app.workers.wait_for_complete()
            await pilot.pause()

    return before


def test_main_screen_with_the_fine_tune_layers(snap_compare: Any, demo_store: Path) -> None:
    app = GraftApp(demo_store, poll=False)
    assert snap_compare(app, terminal_size=SIZE, run_before=_on("tiny-llama-sft@1", "layers-tab"))


def test_methods_view(snap_compare: Any, demo_store: Path) -> None:
    app = GraftApp(demo_store, poll=False)
    assert snap_compare(app, terminal_size=SIZE, run_before=_on("demo-soup@1", keys=("m",)))


def test_merge_builder(snap_compare: Any, demo_store: Path) -> None:
    app = GraftApp(demo_store, poll=False)
    assert snap_compare(app, terminal_size=SIZE, run_before=_on("lora-copy@1", keys=("b",)))


def test_help_screen(snap_compare: Any, demo_store: Path) -> None:
    app = GraftApp(demo_store, poll=False)
    assert snap_compare(
        app,
        terminal_size=SIZE,
        run_before=_on("tiny-llama@1", "layers-tab", keys=("question_mark",)),
    )


def test_tensors_tab(snap_compare: Any, demo_store: Path) -> None:
    app = GraftApp(demo_store, poll=False)
    assert snap_compare(
        app, terminal_size=SIZE, run_before=_on("tiny-llama-sft@1", "tensors-tab", keys=("tab",))
    )


def test_add_dialog(snap_compare: Any, demo_store: Path) -> None:
    app = GraftApp(demo_store, poll=False)
    assert snap_compare(
        app, terminal_size=SIZE, run_before=_on("tiny-llama@1", "layers-tab", ("a",))
    )


def test_series_tab(snap_compare: Any, store_dir: Path, tmp_path: Path) -> None:
    from tests.test_tui_pictures import make_run_store

    make_run_store(tmp_path)
    app = GraftApp(store_dir, poll=False)
    assert snap_compare(
        app, terminal_size=SIZE, run_before=_on("run/checkpoint-200@1", "series-tab")
    )
