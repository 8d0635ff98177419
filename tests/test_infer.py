"""Lineage inference: the right parent, from exact evidence or sampled distance."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from graft.lineage import guess_parent
from graft.registry import Store, add
from tests.conftest import SAMPLES, graft_json, make_model

CHILDREN = ("lora-copy", "lora-reverse", "lora-count", "tiny-llama-sft")


def test_each_sample_gets_its_parent_with_no_parent_given(graft):
    graft("add", SAMPLES / "tiny-llama")
    for name in CHILDREN:
        doc = graft_json(graft, "add", SAMPLES / name)
        assert len(doc["parents"]) == 1, name
        assert graft_json(graft, "show", name)["ancestors"][0]["ref"] == "tiny-llama@1"


@pytest.mark.parametrize("name", CHILDREN)
def test_guess_from_exact_evidence_alone(store: Store, name):
    """Registered through the bare API (no declared base used), then guessed."""
    add(store, SAMPLES / "tiny-llama")
    add(store, SAMPLES / "tiny-llama-sft", name="decoy-sft")  # same shapes, another model
    child = add(store, SAMPLES / name, name=f"{name}-bare").manifest
    s = guess_parent(store, child.files, exclude=child.id)
    assert s is not None and s.parent == "tiny-llama@1", s
    assert 0 < s.confidence <= 1


def _perturbed(base, out, scale: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    weights = {k: v + scale * torch.randn(v.shape, generator=g) for k, v in load_file(base).items()}
    out.mkdir()
    save_file(weights, out / "model.safetensors")
    return out


def test_guess_from_sampled_distance_when_every_tensor_changed(graft, tmp_path):
    base = make_model(tmp_path / "base", seed=1)
    graft("add", base)
    graft("add", make_model(tmp_path / "stranger", seed=2))
    child = _perturbed(base / "model.safetensors", tmp_path / "tuned", 0.01, seed=3)
    result = graft("add", child, "--infer-parent", "--json")
    doc = json.loads(result.stdout)
    assert doc["suggested_parent"]["parent"] == "base@1"
    assert doc["suggested_parent"]["confidence"] > 0.9
    assert "apart (relative)" in doc["suggested_parent"]["evidence"]
    assert graft_json(graft, "show", "tuned")["ancestors"][0]["ref"] == "base@1"


def test_nothing_close_is_said_and_nothing_recorded(graft, tmp_path):
    graft("add", make_model(tmp_path / "a", seed=1))
    other = tmp_path / "other"
    other.mkdir()
    save_file({"encoder.w": torch.ones(4, 4)}, other / "model.safetensors")
    result = graft("add", other, "--infer-parent")
    assert "no registered artifact looks like its parent" in result.stderr
    assert graft_json(graft, "show", "other")["ancestors"] == []


def test_suggestion_without_the_flag_is_only_a_note(graft, tmp_path):
    base = make_model(tmp_path / "base", seed=1)
    graft("add", base)
    child = _perturbed(base / "model.safetensors", tmp_path / "tuned", 0.01, seed=3)
    result = graft("add", child)
    assert "likely parent base@1" in result.stderr and "--infer-parent" in result.stderr
    assert graft_json(graft, "show", "tuned")["ancestors"] == []


def test_declared_base_is_not_reported_as_inferred(graft):
    graft("add", SAMPLES / "tiny-llama")
    result = graft("add", SAMPLES / "lora-copy", "--infer-parent")
    assert "graft: parent tiny-llama@1 (the base its files declare)" in result.stderr
    assert "inferred" not in result.stderr


def test_register_api_can_infer_the_parent(store: Store, tmp_path):
    from graft.lineage import register

    base = make_model(tmp_path / "base", seed=1)
    register(base, store=store)
    child = _perturbed(base / "model.safetensors", tmp_path / "tuned", 0.01, seed=3)
    assert register(child, store=store).manifest.parents == ()
    other = _perturbed(base / "model.safetensors", tmp_path / "tuned2", 0.02, seed=4)
    [parent] = register(other, store=store, infer_parent=True).manifest.parents
    assert parent.id == store.resolve_ref("base").id
