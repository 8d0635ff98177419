"""`graft diff A B` and `graft touched --series RUN`."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import SAMPLES, graft_json, make_model


def test_diff_of_the_sample_fine_tune_against_its_base(graft):
    graft("demo")
    doc = graft_json(graft, "diff", "tiny-llama", "tiny-llama-sft")
    assert (doc["a"], doc["b"]) == ("tiny-llama@1", "tiny-llama-sft@1")
    assert {t["layer"] for t in doc["tensors"]} == {2, 3} and len(doc["tensors"]) == 18
    every = graft_json(graft, "diff", "tiny-llama", "tiny-llama-sft", "--all")["tensors"]
    assert len(every) == 39 and sum(t["status"] == "identical" for t in every) == 21
    result = graft("diff", "tiny-llama", "tiny-llama-sft")
    assert "18 differ, 21 identical" in result.stderr
    assert "model.layers.2.mlp.up_proj.weight" in result.stdout
    # diffs are cached beside the parent deltas but never shown as parents
    assert [t["parent"] for t in graft_json(graft, "touched", "tiny-llama-sft")] == [
        "tiny-llama@1"
    ] * 18


def test_diff_of_an_adapter_against_its_base_uses_the_factors(graft):
    graft("add", SAMPLES / "tiny-llama")
    graft("add", SAMPLES / "lora-copy", "--parent", "tiny-llama")
    rows = graft_json(graft, "diff", "tiny-llama", "lora-copy")["tensors"]
    assert len(rows) == 8 and all(r["rank"] == 4 for r in rows)


def test_diff_reports_a_resized_vocabulary_as_reshaped(graft, tmp_path):
    base = make_model(tmp_path / "base")
    weights = load_file(base / "model.safetensors")
    weights["model.embed_tokens.weight"] = torch.cat([weights["model.embed_tokens.weight"]] * 2)
    (tmp_path / "bigger").mkdir()
    save_file(weights, tmp_path / "bigger" / "model.safetensors")
    graft("add", base)
    graft("add", tmp_path / "bigger")
    [row] = graft_json(graft, "diff", "base", "bigger")["tensors"]
    assert (row["status"], row["old_shape"], row["new_shape"]) == ("reshaped", [32, 16], [64, 16])


def test_diff_with_no_tensor_names_in_common_is_a_clear_error(graft, tmp_path):
    graft("add", make_model(tmp_path / "m"))
    (tmp_path / "other").mkdir()
    save_file({"encoder.w": torch.ones(2)}, tmp_path / "other" / "model.safetensors")
    graft("add", tmp_path / "other")
    result = graft("diff", "m", "other", code=1)
    assert result.stderr.startswith("graft: error: m@1 and other@1 have no tensor names in common")
    assert len(result.stderr.strip().splitlines()) == 1
    graft("diff", "m", "nope", code=1)


def _checkpoint(base, folder, changes: dict[int, float]):
    """A copy of `base` whose layer i's q_proj moved by scale·noise."""
    weights = load_file(base / "model.safetensors")
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(16, 16, generator=g)
    for layer, scale in changes.items():
        weights[f"model.layers.{layer}.self_attn.q_proj.weight"] += scale * noise
    folder.mkdir(parents=True)
    save_file(weights, folder / "model.safetensors")
    return folder


def test_series_shows_each_layer_growing_step_by_step(graft, tmp_path):
    base = make_model(tmp_path / "base")
    graft("add", base)
    steps = {100: {0: 0.01}, 200: {0: 0.02, 1: 0.01}, 300: {0: 0.04, 1: 0.03}}
    parent = "base"
    for step, changes in steps.items():
        ckpt = _checkpoint(base, tmp_path / "run-a" / f"checkpoint-{step}", changes)
        graft("add", ckpt, "--parent", parent, "--method", "sft")
        parent = f"run-a/checkpoint-{step}"
    doc = graft_json(graft, "touched", "--series", "run-a")
    assert doc["base"] == "base@1"
    assert doc["checkpoints"] == [f"run-a/checkpoint-{s}@1" for s in steps]
    growth = {g["layer"]: g["rel_change"] for g in doc["layers"]}
    assert set(growth) == {0, 1}
    assert growth[1][0] is None
    for layer in (0, 1):
        values = [v for v in growth[layer] if v is not None]
        assert values == sorted(values) and len(set(values)) == len(values)
    assert growth[0][1] == pytest.approx(2 * growth[0][0], rel=1e-5)  # linear in the step
    assert "run run-a: mean rel. change" in graft("touched", "--series", "run-a").stdout


def test_series_errors(graft, tmp_path):
    graft("touched", "--series", "nope", code=1)
    graft("touched", "x", "--series", "nope", code=2)
    orphan = _checkpoint(make_model(tmp_path / "b"), tmp_path / "run-b" / "checkpoint-1", {0: 1.0})
    graft("add", orphan)
    assert "has no parent" in graft("touched", "--series", "run-b", code=1).stderr
