"""`--plot FILE` on touched, diff and log: the pictures are read back, pixel by
pixel (PNG) or element by element (SVG), and checked against the numbers."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from matplotlib import colormaps
from matplotlib.colors import to_rgb
from matplotlib.image import imread
from safetensors.torch import load_file, save_file

from graft import lineage
from graft.lineage import LayerGrowth, Series
from graft.registry import Store
from graft.tui import pictures
from tests.conftest import graft_json, make_model
from tests.test_diff import _checkpoint

SVG = "{http://www.w3.org/2000/svg}"


def _pixel(png: Path, where: tuple[float, float]) -> tuple[float, float, float]:
    image = imread(png)
    height, width = image.shape[:2]
    r, g, b = image[round(where[1] * height), round(where[0] * width)][:3]
    return float(r), float(g), float(b)


def _close(a: tuple[float, ...], b: tuple[float, ...], tol: float = 3 / 255) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def _svg(path: Path) -> ET.Element:
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    return root


def _group(root: ET.Element, gid: str) -> ET.Element:
    [group] = [g for g in root.iter(f"{SVG}g") if g.get("id") == gid]
    return group


def _fill(root: ET.Element, gid: str) -> str:
    style = next(_group(root, gid).iter(f"{SVG}path")).get("style", "")
    found = re.search(r"fill:\s*([^;]+)", style)
    assert found, style
    return found.group(1).strip()


def _points(root: ET.Element, gid: str) -> int:
    """How many points the line drawn as `gid` joins."""
    d = next(_group(root, gid).iter(f"{SVG}path")).get("d", "")
    return len(re.findall(r"[ML]", d))


def _texts(root: ET.Element) -> str:
    return "\n".join("".join(t.itertext()) for t in root.iter(f"{SVG}text"))


def _largest(touches: list[dict]) -> dict[tuple[int | None, str], float]:
    out: dict[tuple[int | None, str], float] = {}
    for t in touches:
        key = (t["layer"], t["module"])
        out[key] = max(out.get(key, 0.0), t["rel_change"])
    return out


def test_touched_png_colours_each_cell_by_its_change_and_untouched_grey(graft, store_dir, tmp_path):
    graft("demo")
    png = tmp_path / "sft.png"
    assert f"wrote {png}" in graft("touched", "tiny-llama-sft", "--plot", png).stderr
    assert png.read_bytes().startswith(b"\x89PNG")
    height, width = imread(png).shape[:2]
    assert width >= 300 and height >= 200
    touches = graft_json(graft, "touched", "tiny-llama-sft")
    assert {t["layer"] for t in touches} == {2, 3}  # the sample fine-tune left 0 and 1 alone
    # Where each cell lies: the function draws the same picture and says.
    store = Store.open(store_dir)
    drawn = pictures.touched_heatmap(
        store.resolve_ref("tiny-llama-sft"),
        lineage.touched(store, "tiny-llama-sft"),
        lineage.layers_of(store, "tiny-llama-sft"),
        tmp_path / "again.png",
    )
    assert (tmp_path / "again.png").read_bytes() == png.read_bytes()
    largest = _largest(touches)
    low, high = math.log(min(largest.values())), math.log(max(largest.values()))
    centres = sorted({x for x, _ in drawn.cells.values()})
    half_cell = (centres[1] - centres[0]) / 2
    seen = set()
    for (layer, _, module), (x, y) in drawn.cells.items():
        colour = _pixel(png, (x - 0.8 * half_cell, y))  # beside the value written in the cell
        if layer in (0, 1):
            assert _close(colour, to_rgb(pictures.UNTOUCHED)), (layer, module, colour)
        else:
            fraction = (math.log(largest[(layer, module)]) - low) / (high - low)
            assert _close(colour, colormaps["viridis"](fraction)[:3]), (layer, module, colour)
            seen.add((layer, module))
    assert seen == set(largest)


def test_touched_svg_of_a_generated_fine_tune_marks_untouched_and_reshaped(graft, tmp_path):
    base = make_model(tmp_path / "base", layers=3)
    graft("add", base)
    tuned = _checkpoint(base, tmp_path / "tuned", {1: 0.05})
    weights = load_file(tuned / "model.safetensors")
    weights["model.embed_tokens.weight"] = torch.cat([weights["model.embed_tokens.weight"]] * 2)
    save_file(weights, tuned / "model.safetensors")
    graft("add", tuned, "--parent", "base", "--method", "sft")
    svg = tmp_path / "tuned.svg"
    graft("touched", "tuned", "--plot", svg)
    root = _svg(svg)
    assert _fill(root, "cell-0-q_proj") == pictures.UNTOUCHED
    assert _fill(root, "cell-2-q_proj") == pictures.UNTOUCHED
    changed = _fill(root, "cell-1-q_proj")
    assert changed.startswith("#") and changed != pictures.UNTOUCHED
    hatch = re.fullmatch(r"url\(#(\w+)\)", _fill(root, "cell-none-embed_tokens"))
    assert hatch, "the reshaped embedding is not hatched"
    [pattern] = [p for p in root.iter(f"{SVG}pattern") if p.get("id") == hatch.group(1)]
    assert f'fill="{pictures.RESHAPED}"' in ET.tostring(pattern, encoding="unicode")
    text = _texts(root)
    assert "tuned@1 against base@1, made by sft" in text and "reshaped" in text


def test_method_plot_counts_the_artifacts_in_each_cell(graft, tmp_path):
    graft("demo")
    svg = tmp_path / "lora.svg"
    graft("touched", "--method", "lora", "--plot", svg)
    root = _svg(svg)
    cells = graft_json(graft, "touched", "--method", "lora")["cells"]
    text = _texts(root)
    assert "artifacts: lora-copy@1, lora-reverse@1, lora-count@1" in text
    for c in cells:
        assert f"{c['artifacts']}×{c['mean_rel_change']:.2g}" in text
        assert _fill(root, f"cell-{c['layer']}-{c['module']}") != pictures.UNTOUCHED


def test_diff_plot_shows_the_differing_layers(graft, tmp_path):
    graft("demo")
    png = tmp_path / "diff.png"
    graft("diff", "tiny-llama", "tiny-llama-sft", "--plot", png)
    assert imread(png).shape[1] >= 300
    svg = tmp_path / "diff.svg"
    graft("diff", "tiny-llama", "tiny-llama-sft", "--plot", svg)
    root = _svg(svg)
    assert _fill(root, "cell-0-q_proj") == pictures.UNTOUCHED
    assert _fill(root, "cell-2-q_proj") != pictures.UNTOUCHED
    assert "tiny-llama-sft@1 against tiny-llama@1" in _texts(root)


def test_series_plot_draws_a_line_per_layer_with_a_point_per_checkpoint(graft, tmp_path):
    base = make_model(tmp_path / "base")
    graft("add", base)
    steps = {100: {0: 0.01, 1: 0.005}, 200: {0: 0.02, 1: 0.01}, 300: {0: 0.04, 1: 0.03}}
    parent = "base"
    for i, (step, changes) in enumerate(steps.items()):
        ckpt = _checkpoint(base, tmp_path / "run" / f"checkpoint-{step}", changes)
        state = {"global_step": step, "log_history": [{"step": step, "loss": 3.0 - i}]}
        (ckpt / "trainer_state.json").write_text(json.dumps(state))
        graft("add", ckpt, "--parent", parent)
        parent = f"run/checkpoint-{step}"
    doc = graft_json(graft, "touched", "--series", "run")
    assert doc["steps"] == [100, 200, 300] and doc["losses"] == [3.0, 2.0, 1.0]
    svg = tmp_path / "run.svg"
    graft("touched", "--series", "run", "--plot", svg)
    root = _svg(svg)
    lines = sorted(
        g.get("id") for g in root.iter(f"{SVG}g") if g.get("id", "").startswith("layer-")
    )
    assert lines == ["layer-0", "layer-1"]
    assert _points(root, "layer-0") == _points(root, "layer-1") == 3
    assert _points(root, "loss") == 3
    assert "training loss" in _texts(root)


def test_series_of_many_layers_is_a_step_by_layer_heatmap(tmp_path):
    layers = [LayerGrowth(i, [0.001 * (i + 1), None, 0.003 * (i + 1)]) for i in range(20)]
    s = Series("big", "base@1", ["a@1", "b@1", "c@1"], [10, 20, 30], layers, [None] * 3)
    png = tmp_path / "big.png"
    pictures.series_plot(s, png)
    height, width = imread(png).shape[:2]
    assert width >= 300 and height >= 200
    root = _svg(pictures.series_plot(s, tmp_path / "big.svg").path)
    assert not [g for g in root.iter(f"{SVG}g") if g.get("id", "").startswith("layer-")]
    assert "step" in _texts(root)


def test_log_plot_draws_every_ancestor_and_edge(graft, tmp_path):
    graft("demo")
    svg = tmp_path / "log.svg"
    graft("log", "demo-soup", "--plot", svg)
    text = _texts(_svg(svg))
    for ref in ("demo-soup@1", "tiny-llama@1", "tiny-llama-sft@1", "lora-copy@1"):
        assert ref in text
    assert "merge ties" in text and "weight=0.6" in text and "finetune sft" in text
    png = tmp_path / "kids.png"
    graft("log", "tiny-llama", "--children", "--plot", png)
    height, width = imread(png).shape[:2]
    assert width >= 300 and height >= 200


@pytest.mark.parametrize(
    ("target", "code", "message"),
    [
        ("picture.txt", 2, "cannot draw 'picture.txt'; name a .png or .svg file"),
        ("missing-folder/picture.png", 1, "cannot write"),
    ],
)
def test_a_picture_that_cannot_be_written_is_a_one_line_error(
    graft, tmp_path, target, code, message
):
    graft("demo")
    result = graft("touched", "tiny-llama-sft", "--plot", tmp_path / target, code=code)
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("**/*.png")) and not list(tmp_path.glob("**/*.partial*"))


def test_nothing_changed_is_said_not_drawn(graft, tmp_path):
    graft("add", make_model(tmp_path / "m"))
    result = graft("touched", "m", "--plot", tmp_path / "m.png", code=1)
    assert result.stderr.count("\n") == 1 and "no picture to draw" in result.stderr
    assert not (tmp_path / "m.png").exists()
