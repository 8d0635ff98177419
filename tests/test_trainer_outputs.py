"""What real trainers write, registered as a user would: TRL's SFT LoRA and DPO,
a transformers Trainer run with checkpoints (all trained here, on CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.conftest import SAMPLES, graft_json

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-llama/ (the bundled base) and out/{sft,dpo,run}/ trained from it."""
    root = tmp_path_factory.mktemp("trained")
    base = shutil.copytree(SAMPLES / "tiny-llama", root / "tiny-llama")
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(root / "hf")}
    subprocess.run(
        [sys.executable, "-m", "tests.trainers", str(base), str(root / "out")],
        cwd=ROOT,
        env={**os.environ, **offline, "TOKENIZERS_PARALLELISM": "false"},
        check=True,
        capture_output=True,
        timeout=600,
    )
    return root


def _rows(graft) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    return {f"{r['name']}@{r['version']}": r for r in graft_json(graft, "ls")}


def test_a_trl_sft_lora_is_method_sft_adapter_lora_under_its_declared_base(graft, trained):
    graft("add", trained / "tiny-llama")
    final = trained / "sft-final"
    final.mkdir(exist_ok=True)
    for f in (trained / "out" / "sft").iterdir():
        if f.is_file():
            shutil.copy(f, final / f.name)
    graft("add", final)
    row = _rows(graft)["sft-final@1"]
    assert (row["method"], row["adapter_type"], row["parents"]) == ("sft", "lora", ["tiny-llama@1"])
    shown = graft("show", "sft-final").stdout
    assert "lora r=4 alpha=8 on q_proj, v_proj" in shown
    for method in ("sft", "lora"):
        assert graft_json(graft, "touched", "--method", method)["artifacts"] == ["sft-final@1"]


def test_a_trl_run_folder_becomes_a_chain_of_sft_checkpoints(graft, trained):
    graft("add", trained / "tiny-llama")
    added = graft_json(graft, "add", trained / "out" / "sft")
    assert [a["name"] for a in added] == ["sft/checkpoint-2", "sft/checkpoint-4", "sft"]
    rows = _rows(graft)
    assert rows["sft/checkpoint-2@1"]["parents"] == ["tiny-llama@1"]  # the base its card names
    assert rows["sft/checkpoint-4@1"]["parents"] == ["sft/checkpoint-2@1"]
    assert rows["sft@1"]["parents"] == ["sft/checkpoint-4@1"]
    assert {rows[r]["method"] for r in rows if r.startswith("sft")} == {"sft"}
    assert {rows[r]["adapter_type"] for r in rows if r.startswith("sft")} == {"lora"}


def test_a_trainer_run_folder_is_a_series(graft, trained):
    graft("add", trained / "tiny-llama")
    added = graft_json(graft, "add", trained / "out" / "run", "--parent", "tiny-llama")
    assert [a["name"] for a in added] == [
        "run/checkpoint-2",
        "run/checkpoint-4",
        "run/checkpoint-6",
        "run",
    ]
    series = graft_json(graft, "touched", "--series", "run")
    assert series["steps"] == [2, 4, 6]
    logged = json.loads(
        (trained / "out" / "run" / "checkpoint-6" / "trainer_state.json").read_text()
    )
    losses = [h["loss"] for h in logged["log_history"] if "loss" in h]
    assert series["losses"][-1] == pytest.approx(losses[-1])
    assert {row["layer"] for row in series["layers"]} == {None, 0, 1, 2, 3}  # None: embeddings
    assert all(
        len(row["rel_change"]) == 3 and min(row["rel_change"]) > 0 for row in series["layers"]
    )


def test_a_dpo_output_without_a_card_gets_its_parent_inferred_and_method_amended(graft, trained):
    graft("add", trained / "tiny-llama")
    added = graft_json(graft, "add", trained / "out" / "dpo", "--infer-parent")
    assert _rows(graft)["dpo@1"]["parents"] == ["tiny-llama@1"]
    assert _rows(graft)["dpo@1"]["method"] is None
    graft("amend", "dpo", "--method", "dpo")
    row = _rows(graft)["dpo@1"]
    assert (row["id"], row["method"]) == (added["id"], "dpo")
    touched = graft_json(graft, "touched", "--method", "dpo")
    assert touched["artifacts"] == ["dpo@1"] and touched["cells"]


def test_a_fold_of_the_trl_adapter_records_both_parents_and_the_adapted_tensors(
    graft, trained, tmp_path
):
    graft("add", trained / "tiny-llama")
    graft("add", trained / "out" / "sft")
    out = graft_json(graft, "fold", "sft", "--out", tmp_path / "folded")
    with safe_open(tmp_path / "folded" / "model.safetensors", "pt") as f:
        meta = f.metadata()
    adapted = {
        f"model.layers.{i}.self_attn.{p}.weight" for i in range(4) for p in ("q_proj", "v_proj")
    }
    assert set(json.loads(meta["graft.touched"])) == adapted
    assert set(out["touched"]) == adapted  # the summary counts the same tensors
    rows = _rows(graft)
    recorded = {p["id"]: p["role"] for p in json.loads(meta["graft.parents"])}
    assert recorded == {rows["sft@1"]["id"]: "input", rows["tiny-llama@1"]["id"]: "fold base"}
    assert sorted(rows["folded@1"]["parents"]) == ["sft@1", "tiny-llama@1"]
    touched = graft_json(graft, "touched", "folded")
    assert {t["tensor"] for t in touched} == adapted
