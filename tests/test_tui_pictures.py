"""The TUI's Series tab and its `p` key, which draws the open tab with the CLI's code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from graft.tui.app import GraftApp
from graft.tui.cli import cli
from graft.tui.widgets import SeriesView
from tests.conftest import make_model
from tests.test_diff import _checkpoint
from tests.test_tui_snapshots import _on

SIZE = (100, 30)
pytestmark = pytest.mark.anyio


def graft(*args: str | Path) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def make_run_store(tmp_path: Path) -> None:
    """base, and run/checkpoint-{100,200,300} each drifting further, with their loss."""
    base = make_model(tmp_path / "base")
    graft("add", base)
    parent = "base"
    for i, step in enumerate((100, 200, 300)):
        ckpt = _checkpoint(
            base, tmp_path / "run" / f"checkpoint-{step}", {0: 0.01 * (i + 1), 1: 0.02 * (i + 1)}
        )
        state = {"global_step": step, "log_history": [{"step": step, "loss": 2.5 - 0.5 * i}]}
        (ckpt / "trainer_state.json").write_text(json.dumps(state))
        graft("add", ckpt, "--parent", parent)
        parent = f"run/checkpoint-{step}"


async def test_series_tab_shows_the_run_of_the_checkpoint(store_dir, tmp_path):
    make_run_store(tmp_path)
    app = GraftApp(store_dir, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        await _on("run/checkpoint-200@1", "series-tab")(pilot)
        view = app.query_one(SeriesView)
        assert view.series is not None
        assert view.series.checkpoints == [f"run/checkpoint-{s}@1" for s in (100, 200, 300)]
        assert [g.layer for g in view.series.layers] == [0, 1]
        assert view.series.losses == [2.5, 2.0, 1.5]
        await _on("base@1", "series-tab")(pilot)
        assert view.series is None  # not a checkpoint: the hint instead


async def test_p_draws_the_open_tab_as_the_cli_does(store_dir, tmp_path, monkeypatch):
    make_run_store(tmp_path)
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    monkeypatch.chdir(pictures)
    app = GraftApp(store_dir, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        await _on("run/checkpoint-300@1", "series-tab")(pilot)
        await pilot.press("p")
        await app.workers.wait_for_complete()
        await _on("run/checkpoint-300@1", "layers-tab")(pilot)
        await pilot.press("p")
        await app.workers.wait_for_complete()
        await _on("base@1", "series-tab")(pilot)
        await pilot.press("p")  # no run: a notice, no file
        await app.workers.wait_for_complete()
        await pilot.pause()
        notices = [n.message for n in app._notifications]
    written = sorted(p.name for p in pictures.iterdir())
    assert written == ["run_checkpoint-300@1-layers.png", "run_checkpoint-300@1-series.png"]
    assert any(m.startswith("wrote ") and m.endswith("-series.png") for m in notices)
    assert any("checkpoint of a run" in m for m in notices)
    height, width = imread(pictures / written[1]).shape[:2]
    assert width >= 300 and height >= 200
    # The same picture as the CLI's: one drawing function for both.
    graft("touched", "--series", "run", "--plot", tmp_path / "cli.png")
    assert (tmp_path / "cli.png").read_bytes() == (pictures / written[1]).read_bytes()
    graft("touched", "run/checkpoint-300", "--plot", tmp_path / "cli-layers.png")
    assert (tmp_path / "cli-layers.png").read_bytes() == (pictures / written[0]).read_bytes()
