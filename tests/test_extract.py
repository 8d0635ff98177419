"""`graft extract`: a fine-tune back into a LoRA adapter of its base — checked against
the SVD (Eckart–Young), PEFT's loader and merge_and_unload, and graft's own fold."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import Result
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from graft.merge import MergeCancelled, extract
from graft.merge.extract import extract_lora
from graft.merge.inputs import LocalModel
from tests.conftest import SAMPLES, graft_json

BASE, SFT = SAMPLES / "tiny-llama", SAMPLES / "tiny-llama-sft"
PREFIX = "base_model.model."


def _deltas() -> dict[str, torch.Tensor]:
    base, tuned = load_file(BASE / "model.safetensors"), load_file(SFT / "model.safetensors")
    return {
        n: tuned[n].float() - base[n].float()
        for n in tuned
        if tuned[n].dim() == 2 and not torch.equal(tuned[n], base[n])
    }


def _optimal(delta: torch.Tensor, rank: int) -> float:
    s = torch.linalg.svdvals(delta.double())
    return float(s[rank:].square().sum().sqrt() / s.square().sum().sqrt())


@pytest.mark.parametrize("randomized", [False, True])
def test_each_module_is_the_best_rank_r_approximation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, randomized: bool
) -> None:
    if randomized:  # the path large matrices take, on the sample's small ones
        monkeypatch.setattr(extract, "RANDOMIZED_ABOVE", 0)
    rank = 4
    got = extract_lora(LocalModel(BASE, "base"), LocalModel(SFT, "sft"), tmp_path / "a", rank=rank)
    factors = load_file(tmp_path / "a" / "adapter_model.safetensors")
    deltas = _deltas()
    assert deltas and set(got.errors) == {n.removesuffix(".weight") for n in deltas}
    for name, delta in deltas.items():
        module = name.removesuffix(".weight")
        a, b = (
            factors[f"{PREFIX}{module}.lora_A.weight"],
            factors[f"{PREFIX}{module}.lora_B.weight"],
        )
        assert a.shape == (rank, delta.shape[1]) and b.shape == (delta.shape[0], rank)
        measured = float((delta - b @ a).norm() / delta.norm())
        best = _optimal(delta, rank)
        assert measured <= best * 1.01 + 1e-6, (name, measured, best)
        assert got.errors[module] == pytest.approx(measured, rel=1e-3, abs=1e-6)
    with safe_open(tmp_path / "a" / "adapter_model.safetensors", "pt") as f:
        stored = json.loads(f.metadata()["graft.extract"])
    assert stored == pytest.approx(got.errors)


def test_peft_loads_it_and_merge_and_unload_matches_graft_fold(
    graft: Callable[..., Result], tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    graft(
        "extract", SFT, "--base", BASE, "--rank", "8", "--out", tmp_path / "lora", "--no-register"
    )
    model = AutoModelForCausalLM.from_pretrained(BASE, torch_dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, tmp_path / "lora").merge_and_unload().state_dict()
    graft(
        "fold", tmp_path / "lora", "--base", BASE, "--dtype", "float32",
        "--out", tmp_path / "folded", "--no-register",
    )  # fmt: skip
    folded = load_file(tmp_path / "folded" / "model.safetensors")
    assert graft_json(graft, "ls") == []  # --no-register: the store is left alone
    for name, tensor in folded.items():
        torch.testing.assert_close(tensor, merged[name], atol=1e-6, rtol=0)
    # and the fold gives back the fine-tune, up to each module's reported error
    tuned = load_file(SFT / "model.safetensors")
    with safe_open(tmp_path / "lora" / "adapter_model.safetensors", "pt") as f:
        errors = json.loads(f.metadata()["graft.extract"])
    for module, error in errors.items():
        name = f"{module}.weight"
        delta = tuned[name].float() - load_file(BASE / "model.safetensors")[name].float()
        assert float((folded[name] - tuned[name].float()).norm() / delta.norm()) == pytest.approx(
            error, rel=1e-3, abs=1e-5
        )


def test_registered_under_the_base_with_an_edge_to_the_fine_tune(
    graft: Callable[..., Result], tmp_path: Path
) -> None:
    graft("add", BASE)
    graft("add", SFT, "--parent", "tiny-llama")
    out = graft_json(graft, "extract", "tiny-llama-sft", "--base", "tiny-llama", "--rank", "4",
                     "--out", tmp_path / "lora")  # fmt: skip
    assert out["artifact"]["ref"] == "lora@1" and out["rank"] == 4
    [row] = [r for r in graft_json(graft, "ls") if r["name"] == "lora"]
    assert row["kind"] == "adapter" and row["method"] == "extract"
    assert set(row["parents"]) == {"tiny-llama@1", "tiny-llama-sft@1"}
    ids = {r["name"]: r["id"] for r in graft_json(graft, "ls")}
    edges = {p["id"]: p["relation"] for p in graft_json(graft, "show", "lora")["parents"]}
    assert edges == {ids["tiny-llama"]: "adapter", ids["tiny-llama-sft"]: "extract"}
    touched = graft_json(graft, "touched", "lora")
    assert touched and {t["parent"] for t in touched} == {"tiny-llama@1"}
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-llama" and config["lora_alpha"] == 4
    again = graft("extract", "tiny-llama-sft", "--base", "tiny-llama", "--rank", "4",
                  "--out", tmp_path / "again")  # fmt: skip
    assert "identical to lora@1" in again.stdout and "nothing new recorded" in again.stdout


def test_modules_and_embeddings_choose_the_targets(tmp_path: Path) -> None:
    base = load_file(BASE / "model.safetensors")
    g = torch.Generator().manual_seed(3)
    tuned = dict(base)
    for name in (
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.layers.0.self_attn.q_proj.weight",
    ):
        w = base[name].float()
        tuned[name] = (
            w
            + 0.01
            * torch.randn(w.shape[0], 2, generator=g)
            @ torch.randn(2, w.shape[1], generator=g)
        ).to(w.dtype)
    folder = tmp_path / "tuned"
    shutil.copytree(BASE, folder)
    save_file(tuned, folder / "model.safetensors", metadata={"format": "pt"})
    base_model, tuned_model = LocalModel(BASE, "b"), LocalModel(folder, "t")
    only_q = extract_lora(base_model, tuned_model, tmp_path / "q", rank=2, modules=("q_proj",))
    assert list(only_q.errors) == ["model.layers.0.self_attn.q_proj"]
    everything = extract_lora(base_model, tuned_model, tmp_path / "all", rank=2, embeddings=True)
    assert set(everything.errors) == {
        "model.embed_tokens",
        "lm_head",
        "model.layers.0.self_attn.q_proj",
    }
    keys = set(load_file(tmp_path / "all" / "adapter_model.safetensors"))
    assert f"{PREFIX}model.embed_tokens.lora_embedding_A" in keys
    assert f"{PREFIX}lm_head.lora_A.weight" in keys

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(BASE, torch_dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, tmp_path / "all").merge_and_unload().state_dict()
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        delta = tuned[name].float() - base[name].float()
        back = merged[name] - base[name].float()
        assert float((back - delta).norm() / delta.norm()) < 0.02  # rank 2 of a rank-2 change


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--rank", "0"], "--rank 0: must be at least 1"),
        (["--rank", "4", "--modules", "nope"], "--modules nope: no such module among the weights"),
        (["--rank", "4", "--base", str(SFT)], "no weight the extraction looks at differs"),
    ],
)
def test_bad_requests_fail_in_one_line_and_write_nothing(
    graft: Callable[..., Result], tmp_path: Path, store_dir: Path, args: list[str], said: str
) -> None:
    base = [] if "--base" in args else ["--base", str(BASE)]
    result = graft("extract", SFT, *base, *args, "--out", tmp_path / "out", code=1)
    assert said in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.partial-*"))


def test_an_unknown_reference_or_a_used_folder_is_refused(
    graft: Callable[..., Result], tmp_path: Path
) -> None:
    unknown = graft(
        "extract", "nope@1", "--base", BASE, "--rank", "4", "--out", tmp_path / "x", code=1
    )
    assert "nope@1" in unknown.stderr and len(unknown.stderr.strip().splitlines()) == 1
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    taken = graft("extract", SFT, "--base", BASE, "--rank", "4", "--out", used, code=1)
    assert "already exists and is not an empty folder" in taken.stderr
    assert (used / "keep.txt").read_text() == "mine"


def test_the_randomized_path_gives_the_same_adapter_every_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(extract, "RANDOMIZED_ABOVE", 0)
    for out in ("a", "b"):
        torch.manual_seed(len(out) + ord(out))  # whatever the global generator holds
        extract_lora(LocalModel(BASE, "base"), LocalModel(SFT, "sft"), tmp_path / out, rank=4)
    first, second = (tmp_path / o / "adapter_model.safetensors" for o in ("a", "b"))
    assert first.read_bytes() == second.read_bytes()


def test_cancelling_stops_before_anything_is_written(tmp_path: Path) -> None:
    asked = []

    def cancel() -> bool:
        asked.append(1)
        return len(asked) > 3  # after three modules

    with pytest.raises(MergeCancelled, match="extraction cancelled"):
        extract_lora(
            LocalModel(BASE, "base"),
            LocalModel(SFT, "sft"),
            tmp_path / "out",
            rank=2,
            should_cancel=cancel,
        )
    assert len(asked) == 4 and not list(tmp_path.iterdir())


def test_no_register_still_reads_registered_models(
    graft: Callable[..., Result], tmp_path: Path
) -> None:
    graft("add", BASE, "--name", "base")
    graft("add", SFT, "--name", "sft", "--parent", "base")
    before = graft_json(graft, "ls")
    graft("extract", "sft", "--base", "base", "--rank", "4", "--out", tmp_path / "lora",
          "--no-register")  # fmt: skip
    assert graft_json(graft, "ls") == before
    from_files = tmp_path / "from-files"
    graft("extract", SFT, "--base", BASE, "--rank", "4", "--out", from_files, "--no-register")
    ours = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    theirs = load_file(from_files / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
