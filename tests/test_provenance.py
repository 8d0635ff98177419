"""What graft writes into the files it makes agrees with the catalog: every
parent's id and role, and the tensors really changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.conftest import SAMPLES, graft_json

ADAPTERS = ("lora-copy", "lora-reverse", "lora-count")


def _metadata(folder: Path) -> dict[str, str]:
    (path,) = folder.glob("*.safetensors")
    with safe_open(path, "pt") as f:
        return f.metadata()


def _adapted(adapter: str) -> set[str]:
    """The base tensors an adapter's factors change, from its own tensor names."""
    with safe_open(SAMPLES / adapter / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    return {
        k.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
        for k in keys
        if ".lora_A." in k
    }


def _ids(graft) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {f"{r['name']}@{r['version']}": r["id"] for r in graft_json(graft, "ls")}


def _edges(graft, ref: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Parent id → role, from the catalog."""
    rows = graft_json(
        graft,
        "sql",
        "SELECT e.parent_id, json_extract_string(e.params, '$.role') AS role FROM edges e "
        f"JOIN artifacts a ON a.id = e.child_id WHERE a.name = '{ref}'",
    )
    return {row["parent_id"]: row["role"] for row in rows}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_fold_records_both_parents_and_exactly_the_adapted_tensors(graft, tmp_path, adapter):
    graft("add", SAMPLES / "tiny-llama")
    graft("add", SAMPLES / adapter)
    out = graft_json(graft, "fold", adapter, "--out", tmp_path / "folded")
    meta = _metadata(tmp_path / "folded")
    adapted = _adapted(adapter)
    assert set(json.loads(meta["graft.touched"])) == adapted == set(out["touched"])
    ids = _ids(graft)
    recorded = {p["id"]: p["role"] for p in json.loads(meta["graft.parents"])}
    assert recorded == {ids[f"{adapter}@1"]: "input", ids["tiny-llama@1"]: "fold base"}
    assert _edges(graft, "folded") == recorded
    assert {t["tensor"] for t in graft_json(graft, "touched", "folded")} == adapted


def test_a_merge_of_base_plus_adapter_and_folders_names_every_id(graft, tmp_path):
    graft("add", SAMPLES / "tiny-llama")
    graft("add", SAMPLES / "lora-copy")
    config = tmp_path / "ties.yml"
    config.write_text(
        f"""merge_method: ties
base_model: tiny-llama
models:
  - model: tiny-llama+lora-copy
    parameters: {{weight: 0.5, density: 0.5}}
  - model: {SAMPLES / "tiny-llama-sft"}
    parameters: {{weight: 0.5, density: 0.5}}
"""
    )
    out = graft_json(graft, "merge", config, "--out", tmp_path / "soup")
    meta = _metadata(tmp_path / "soup")
    ids = _ids(graft)  # the folder input was registered before the run
    recorded = {p["id"]: p["role"] for p in json.loads(meta["graft.parents"])}
    assert recorded == {
        ids["tiny-llama@1"]: "base",
        ids["lora-copy@1"]: "input",
        ids["tiny-llama-sft@1"]: "input",
    }
    assert None not in recorded
    assert _edges(graft, "soup") == recorded
    touched = set(json.loads(meta["graft.touched"]))
    assert touched == set(out["touched"])
    assert touched == {t["tensor"] for t in graft_json(graft, "touched", "soup")}
