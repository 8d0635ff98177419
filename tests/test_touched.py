"""`graft touched`: exactly the layers and modules each sample artifact changed."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from tests.conftest import SAMPLES, graft_json, make_model

LAYERS = range(4)
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def _weights(modules: tuple[str, ...], layers=LAYERS) -> set[str]:
    block = {m: "self_attn" if m in ATTENTION else "mlp" for m in ATTENTION + MLP}
    return {f"model.layers.{i}.{block[m]}.{m}.weight" for i in layers for m in modules}


@pytest.fixture
def demo(graft):
    graft("demo")
    return graft


def _touched(graft, ref: str) -> list[dict]:
    return graft_json(graft, "touched", ref)


def test_sft_touched_exactly_layers_2_and_3(demo):
    touches = _touched(demo, "tiny-llama-sft")
    norms = {
        f"model.layers.{i}.{n}.weight"
        for i in (2, 3)
        for n in ("input_layernorm", "post_attention_layernorm")
    }
    assert {t["tensor"] for t in touches} == _weights(ATTENTION + MLP, (2, 3)) | norms
    assert {t["layer"] for t in touches} == {2, 3}
    assert all(t["status"] == "changed" and t["rel_change"] > 0 for t in touches)
    q = next(t for t in touches if t["tensor"] == "model.layers.2.self_attn.q_proj.weight")
    assert (q["block"], q["module"]) == ("attention", "q_proj")
    assert q["stable_rank"] > 1.5  # a trained delta spans many directions


@pytest.mark.parametrize(
    ("adapter", "modules", "rank"),
    [
        ("lora-copy", ("q_proj", "v_proj"), 4),
        ("lora-reverse", ATTENTION + MLP, 8),
        ("lora-count", MLP, 2),
    ],
)
def test_adapters_touched_exactly_their_target_modules(demo, adapter, modules, rank):
    touches = _touched(demo, adapter)
    assert {t["tensor"] for t in touches} == _weights(modules)
    assert all(t["status"] == "changed" and 1 <= t["rank"] <= rank for t in touches)
    assert all(1.0 <= t["stable_rank"] <= t["rank"] + 1e-6 for t in touches)
    assert all(t["parent"] == "tiny-llama@1" for t in touches)


def test_adapter_deltas_match_peft_merge_and_unload(demo):
    """rsLoRA adapter: ‖ΔW‖/‖W‖ from the factors equals the dense merge's."""
    base = AutoModelForCausalLM.from_pretrained(SAMPLES / "tiny-llama")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    merged = PeftModel.from_pretrained(base, SAMPLES / "lora-reverse").merge_and_unload()
    after = merged.state_dict()
    touches = _touched(demo, "lora-reverse")
    assert len(touches) == 28
    for t in touches:
        delta = (after[t["tensor"]] - before[t["tensor"]]).double()
        assert t["rel_change"] == pytest.approx(
            float(delta.norm() / before[t["tensor"]].double().norm()), rel=1e-4
        )
        assert t["max_abs"] == pytest.approx(float(delta.abs().max()), rel=1e-3)
        assert t["rank"] == int(torch.linalg.matrix_rank(delta.float()))
    untouched = set(before) - {t["tensor"] for t in touches}
    assert all(torch.equal(before[k], after[k]) for k in untouched)


def test_dora_deltas_match_peft_merge_and_unload(graft, tmp_path):
    """DoRA (linear and embedding): the magnitude rescales every row, so the
    change is W' − W of PEFT's merge, not the low-rank s·B·A."""
    torch.manual_seed(0)
    config = LoraConfig(
        r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "v_proj", "embed_tokens"]
    )
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(SAMPLES / "tiny-llama"), config)
    with torch.no_grad():  # PEFT starts at B = 0, m = ‖W‖: move both, as training would
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                p.normal_(0, 0.02)
            if "lora_magnitude_vector" in name:
                p.mul_(1 + 0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "dora")
    base = AutoModelForCausalLM.from_pretrained(SAMPLES / "tiny-llama")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    after = PeftModel.from_pretrained(base, tmp_path / "dora").merge_and_unload().state_dict()
    graft("add", SAMPLES / "tiny-llama")
    graft("add", tmp_path / "dora")
    touches = _touched(graft, "dora")
    assert {t["tensor"] for t in touches} == {
        "model.embed_tokens.weight",
        *_weights(("q_proj", "v_proj")),
    }
    for t in touches:
        delta = (after[t["tensor"]] - before[t["tensor"]]).double()
        assert t["rel_change"] == pytest.approx(
            float(delta.norm() / before[t["tensor"]].double().norm()), rel=1e-4
        )
        assert t["frac_changed"] == pytest.approx(float((delta != 0).double().mean()), abs=1e-3)
        assert t["max_abs"] == pytest.approx(float(delta.abs().max()), rel=1e-3)
        assert t["rank"] is None  # no longer low rank
    (row,) = [r for r in graft_json(graft, "ls") if r["name"] == "dora"]
    assert row["adapter_type"] == "lora+dora"
    for method in ("dora", "lora"):
        assert graft_json(graft, "touched", "--method", method)["artifacts"] == ["dora@1"]


def test_touched_by_method_aggregates_over_the_adapters(demo):
    grid = graft_json(demo, "touched", "--method", "LoRA")
    assert grid["artifacts"] == ["lora-copy@1", "lora-reverse@1", "lora-count@1"]
    counts = {(c["layer"], c["module"]): c["artifacts"] for c in grid["cells"]}
    expected = {
        "q_proj": 2,
        "v_proj": 2,
        "k_proj": 1,
        "o_proj": 1,
        "gate_proj": 2,
        "up_proj": 2,
        "down_proj": 2,
    }
    assert counts == {(i, m): n for i in LAYERS for m, n in expected.items()}
    text = demo("touched", "--method", "lora").stdout
    assert "method lora, 3 artifacts" in text and "gate_proj" in text


def test_touched_table_and_grid_in_the_terminal(demo):
    out = demo("touched", "tiny-llama-sft").stdout
    assert "model.layers.3.mlp.down_proj.weight" in out
    assert "largest relative change in tiny-llama-sft" in out
    assert "model.layers.0." not in out
    grid = out.split("(· untouched)")[1].splitlines()[2:]
    assert [row.split()[0] for row in grid if row.strip()] == ["0", "1", "2", "3"]
    assert set(grid[0].split()[1:]) == {"·"} and "·" not in grid[2]


def _with_edit(folder, tmp_path, name, edit) -> object:
    weights = load_file(folder / "model.safetensors")
    edit(weights)
    out = tmp_path / name
    out.mkdir()
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


def test_rank_one_edit_is_found_with_stable_rank_one(graft, tmp_path):
    base = make_model(tmp_path / "base", dim=32)
    target = "model.layers.1.self_attn.o_proj.weight"
    g = torch.Generator().manual_seed(7)
    u, v = torch.randn(32, 1, generator=g), torch.randn(1, 32, generator=g)

    def ablate(w):  # a ROME/abliteration-style rank-1 update of one matrix
        w[target] = w[target] + 0.05 * (u @ v)

    def finetune(w):  # an SFT-like dense update of another
        w["model.layers.0.self_attn.q_proj.weight"] += 0.01 * torch.randn(32, 32, generator=g)

    graft("add", base, "--name", "base")
    graft(
        "add", _with_edit(base, tmp_path, "edited", ablate), "--parent", "base", "--method", "rome"
    )
    graft("add", _with_edit(base, tmp_path, "sft", finetune), "--parent", "base", "--method", "sft")
    [edit] = _touched(graft, "edited")
    assert edit["tensor"] == target and edit["stable_rank"] == pytest.approx(1.0, abs=0.01)
    [dense] = _touched(graft, "sft")
    assert dense["stable_rank"] > 5


def test_dense_statistics_against_numpy(graft, tmp_path):
    base = make_model(tmp_path / "base")
    name = "model.layers.0.self_attn.k_proj.weight"
    w = load_file(base / "model.safetensors")[name].numpy()
    new = w.copy()
    new[:4] += 0.5  # a quarter of the rows of a 16×16 matrix
    child = _with_edit(
        base, tmp_path, "child", lambda ws: ws.__setitem__(name, torch.from_numpy(new))
    )
    graft("add", base, "--name", "base")
    graft("add", child, "--parent", "base")
    [t] = _touched(graft, "child")
    d = (new - w).astype(np.float64)
    assert t["frac_changed"] == pytest.approx(np.count_nonzero(d) / d.size)
    assert t["rel_change"] == pytest.approx(np.linalg.norm(d) / np.linalg.norm(w), rel=1e-5)
    assert t["max_abs"] == pytest.approx(np.abs(d).max(), rel=1e-6)
    sigma = np.linalg.svd(d, compute_uv=False)
    assert t["stable_rank"] == pytest.approx((sigma**2).sum() / sigma[0] ** 2, rel=1e-3)


def test_pruned_tensor_is_reported_as_reshaped(graft, tmp_path):
    base = make_model(tmp_path / "base")
    name = "model.layers.1.self_attn.v_proj.weight"
    pruned = _with_edit(
        base, tmp_path, "pruned", lambda w: w.__setitem__(name, w[name][:8].clone())
    )
    graft("add", base, "--name", "base")
    graft("add", pruned, "--parent", "base", "--method", "llm-pruner")
    [t] = _touched(graft, "pruned")
    assert (t["tensor"], t["status"], t["old_shape"], t["new_shape"]) == (
        name,
        "reshaped",
        [16, 16],
        [8, 16],
    )
    assert "reshaped 16×16 → 8×16" in graft("touched", "pruned").stdout


def test_artifact_without_parent_touched_nothing(graft):
    graft("add", SAMPLES / "tiny-llama")
    assert _touched(graft, "tiny-llama") == []


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("touched", "nope"), 1, "no artifact matches 'nope'"),
        (("touched", "--method", "slerp"), 1, "no artifact was made by method 'slerp'"),
        (("touched",), 2, "give one of REF, --method M or --series RUN"),
    ],
)
def test_touched_bad_input(demo, args, code, message):
    result = demo(*args, code=code)
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 or code == 2


def test_deltas_survive_reindex_and_are_recomputed_after_a_lost_catalog(demo, store):
    before = _touched(demo, "lora-count")
    demo("reindex")
    assert _touched(demo, "lora-count") == before
    store.catalog.path.unlink()
    demo("reindex")
    with store.catalog.reading() as con:
        assert con.execute("SELECT count(*) FROM tensor_deltas").fetchone() == (0,)
    after = _touched(demo, "lora-count")
    assert json.dumps(after, sort_keys=True) == json.dumps(before, sort_keys=True)
    assert not any(math.isnan(t["rel_change"]) for t in after)


def test_declared_base_becomes_the_parent(graft):
    """The sample adapters name "tiny-llama" in adapter_config.json."""
    graft("add", SAMPLES / "tiny-llama")
    result = graft("add", SAMPLES / "lora-count")
    assert "graft: parent tiny-llama@1 (the base its files declare)" in result.stderr
    shown = graft_json(graft, "show", "lora-count")
    assert shown["method"] == "lora"
    assert [(a["ref"], a["relation"]) for a in shown["ancestors"]] == [("tiny-llama@1", "adapter")]
    assert {t["module"] for t in _touched(graft, "lora-count")} == set(MLP)


def test_declared_base_from_the_model_card(graft, tmp_path):
    base = make_model(tmp_path / "org" / "base-7b")
    graft("add", base)
    child = make_model(tmp_path / "child", seed=5)
    (child / "README.md").write_text(
        "---\nbase_model: acme/base-7b\ntags:\n- trl\n- dpo\n---\n# child\n"
    )
    graft("add", child)
    shown = graft_json(graft, "show", "child")
    assert shown["method"] == "dpo" and shown["ancestors"][0]["ref"] == "base-7b@1"


def test_undeclared_or_unregistered_base_links_nothing(graft, tmp_path):
    child = make_model(tmp_path / "child")
    (child / "README.md").write_text("---\nbase_model: acme/not-here\n---\n")
    graft("add", child)
    assert graft_json(graft, "show", "child")["ancestors"] == []


def test_a_parent_that_would_make_a_cycle_is_refused(graft, store, tmp_path):
    graft("add", make_model(tmp_path / "base"), "--name", "base")
    graft("add", make_model(tmp_path / "child", seed=9), "--parent", "base")
    before = graft_json(graft, "ls")
    for parent in ("child", "base"):
        result = graft("add", tmp_path / "base", "--parent", parent, code=1)
        assert "would make a cycle" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert graft_json(graft, "ls") == before
    with store.catalog.reading() as con:
        assert con.execute("SELECT count(*) FROM edges").fetchone() == (1,)


def test_trainer_state_step_and_loss_become_metadata(graft, tmp_path):
    ckpt = make_model(tmp_path / "run" / "checkpoint-40")
    (ckpt / "trainer_state.json").write_text(
        json.dumps({"global_step": 40, "log_history": [{"loss": 2.5}, {"loss": 1.25}, {"x": 1}]})
    )
    graft("add", ckpt, "--meta", "lr=1e-4")
    shown = graft_json(graft, "show", "run/checkpoint-40")
    assert shown["meta"] == {"global_step": "40", "loss": "1.25", "lr": "1e-4"}
    assert shown["kind"] == "checkpoint"


def test_lineage_recompute_rebuilds_the_deltas(demo, store):
    before = _touched(demo, "lora-copy")
    with store.catalog.writing() as con:
        con.execute("UPDATE tensor_deltas SET rel_change = 99")
    assert "recomputed the deltas of 1 " in demo("lineage", "recompute", "lora-copy").stdout
    assert _touched(demo, "lora-copy") == before
    # 4 sample edges, and the demo merge against its base only
    assert "of 5 (artifact, parent) pairs" in demo("lineage", "recompute").stdout
    demo("lineage", "recompute", "nope", code=1)


def test_declared_base_path_matching_a_registered_source_is_linked(graft, tmp_path):
    base = make_model(tmp_path / "models" / "base")
    graft("add", base, "--name", "renamed-base")
    shutil.copytree(SAMPLES / "lora-count", tmp_path / "adapter")
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(base)  # an absolute path, as PEFT often writes
    config_path.write_text(json.dumps(config))
    graft("add", tmp_path / "adapter")
    assert graft_json(graft, "show", "adapter")["ancestors"][0]["ref"] == "renamed-base@1"
