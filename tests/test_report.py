"""`graft report`: one HTML file, rendered by a real headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from matplotlib.image import imread

from tests.conftest import make_model
from tests.test_diff import _checkpoint

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="chromium is not installed (.ci/setup installs it; CI requires it)",
)


def _chromium(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM, "chromium is missing: .ci/setup installs Debian's chromium"
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def _visible_text(dom: str) -> str:
    body = re.sub(r"<style>.*?</style>", "", dom, flags=re.S)
    return re.sub(r"<[^>]+>", " ", body)


def test_the_page_names_the_artifact_its_parent_and_what_changed(graft, tmp_path):
    graft("demo")
    page = tmp_path / "sft.html"
    assert f"wrote {page}" in graft("report", "tiny-llama-sft", "-o", page).stderr
    text = page.read_text()
    assert not re.search(r"https?://", text), "the page refers to the network"
    assert "<script" not in text and "<link" not in text and "src=" not in text
    assert text.count("<svg") == 2  # the lineage graph and the heatmap
    for module in ("q_proj", "up_proj", "input_layernorm"):
        assert f"<td>{module}</td>" in text
    assert "tiny-llama@1" in text and "model.layers.2.mlp.up_proj.weight" in text


@needs_chromium
def test_chromium_renders_the_page(graft, tmp_path):
    graft("demo")
    page = tmp_path / "sft.html"
    graft("report", "tiny-llama-sft", "-o", page)
    dom = _chromium("--dump-dom", page.as_uri()).stdout
    seen = _visible_text(dom)
    for needle in ("tiny-llama-sft", "tiny-llama@1", "finetune sft", "q_proj", "down_proj"):
        assert needle in seen, needle
    shot = tmp_path / "shot.png"
    _chromium(f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri())
    pixels = imread(shot)
    assert pixels.shape[:2] == (1600, 1200)
    assert len({tuple(p) for p in pixels[::40, ::40].reshape(-1, pixels.shape[2])}) > 10


def test_a_merge_shows_its_recipe_and_inputs(graft, tmp_path):
    graft("demo")
    page = tmp_path / "soup.html"
    graft("report", "demo-soup", "-o", page)
    text = page.read_text()
    assert "merge_method: ties" in text and "density: 0.5" in text
    assert "role=input, weight=0.6, density=0.5" in text
    assert not re.search(r"https?://", text)


def test_a_checkpoint_shows_its_run(graft, tmp_path, monkeypatch):
    base = make_model(tmp_path / "base")
    graft("add", base)
    parent = "base"
    for i, step in enumerate((10, 20)):
        ckpt = _checkpoint(base, tmp_path / "run" / f"checkpoint-{step}", {0: 0.01 * (i + 1)})
        (ckpt / "trainer_state.json").write_text(
            json.dumps({"global_step": step, "log_history": [{"step": step, "loss": 2.0 - i}]})
        )
        graft("add", ckpt, "--parent", parent)
        parent = f"run/checkpoint-{step}"
    monkeypatch.chdir(tmp_path)
    assert "wrote run_checkpoint-20-1.html" in graft("report", "run/checkpoint-20").stderr
    text = (tmp_path / "run_checkpoint-20-1.html").read_text()
    assert "Run run" in text and 'id="layer-0"' in text and 'id="loss"' in text


def test_a_report_that_cannot_be_written_is_a_one_line_error(graft, tmp_path):
    graft("demo")
    result = graft("report", "tiny-llama", "-o", tmp_path / "no" / "r.html", code=1)
    assert result.stderr.startswith("graft: error: cannot write")
    assert result.stderr.count("\n") == 1
    assert "nope" in graft("report", "nope", code=1).stderr


def test_a_model_without_parents_has_no_heatmap(graft, tmp_path):
    graft("add", make_model(tmp_path / "m"))
    page = tmp_path / "m.html"
    graft("report", "m", "-o", page)
    text = page.read_text()
    assert text.count("<svg") == 1  # the lineage graph: nothing to compare with
    assert "<th>kind</th><td>model</td>" in text and "What it changed" not in text
