"""Add → export round trips: every file comes back byte-identical; re-adds write nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import SAMPLES, graft_json, make_model, sha256_tree, tree_size


def _sharded_model(tmp_path: Path) -> Path:
    model = AutoModelForCausalLM.from_pretrained(SAMPLES / "tiny-llama")
    out = tmp_path / "sharded"
    model.save_pretrained(out, max_shard_size="300KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(SAMPLES / "tiny-llama" / name, out / name)
    assert (out / "model.safetensors.index.json").exists()
    assert len(list(out.glob("model-*-of-*.safetensors"))) >= 3
    return out


def _checkpoint(tmp_path: Path) -> Path:
    """A Trainer-style output folder around the sample full fine-tune."""
    out = tmp_path / "run-7" / "checkpoint-500"
    shutil.copytree(SAMPLES / "tiny-llama-sft", out)
    (out / "trainer_state.json").write_text(json.dumps({"global_step": 500, "log_history": []}))
    torch.save({"state": {}}, out / "optimizer.pt")
    torch.save({"x": 1}, out / "training_args.bin")
    return out


def _hf_cache(tmp_path: Path) -> Path:
    """A Hugging Face cache repo: snapshot files are symlinks into blobs/."""
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, src in enumerate(sorted((SAMPLES / "tiny-llama").iterdir())):
        blob = repo / "blobs" / f"blob{i}"
        shutil.copy(src, blob)
        (snapshot / src.name).symlink_to(Path("../..") / "blobs" / blob.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    return repo


@pytest.mark.parametrize(
    ("make", "kind", "name"),
    [
        (lambda tmp: SAMPLES / "tiny-llama", "model", "tiny-llama"),
        (_sharded_model, "model", "sharded"),
        (lambda tmp: SAMPLES / "lora-reverse", "adapter", "lora-reverse"),
        (_checkpoint, "checkpoint", "run-7/checkpoint-500"),
        (_hf_cache, "model", "acme/tiny-llama"),
        (lambda tmp: SAMPLES / "tiny-llama" / "model.safetensors", "model", "model"),
    ],
    ids=["model", "sharded", "adapter", "checkpoint", "hf-cache", "single-file"],
)
def test_export_is_byte_identical_and_readd_writes_nothing(
    graft, store_dir, tmp_path, make, kind, name
):
    source = make(tmp_path)
    added = graft_json(graft, "add", source)
    assert (added["kind"], added["name"], added["version"]) == (kind, name, 1)
    assert added["bytes_new"] > 0 and not added["existed"]

    graft("export", name, tmp_path / "out")
    original = source.parent if source.is_file() else source
    expected = sha256_tree(original)
    if source.is_file():
        expected = {source.name: expected[source.name]}
    for skipped in ("optimizer.pt", "training_args.bin"):
        expected.pop(skipped, None)
    if kind == "model" and "hub" in str(source):  # the cache's snapshot, not its bookkeeping
        expected = sha256_tree(source / "snapshots" / "0123abcd")
    assert sha256_tree(tmp_path / "out") == expected

    size = tree_size(store_dir)
    again = graft_json(graft, "add", source)
    assert again["id"] == added["id"] and again["existed"] and again["bytes_new"] == 0
    assert tree_size(store_dir) == size
    assert len(graft_json(graft, "ls")) == 1


def test_checkpoint_skips_trainer_state_with_a_note(graft, tmp_path):
    result = graft("add", _checkpoint(tmp_path))
    assert "skipped optimizer.pt (trainer state, pickled)" in result.stderr
    assert "skipped training_args.bin" in result.stderr


def test_exports_load_with_transformers_and_peft(graft, tmp_path):
    graft("add", _sharded_model(tmp_path))
    graft("add", SAMPLES / "lora-copy")
    graft("export", "sharded", tmp_path / "base")
    graft("export", "lora-copy", tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "base")
    ids = tokenizer("copy 1 2 3", return_tensors="pt").input_ids
    plain = base(ids).logits
    tuned = PeftModel.from_pretrained(base, tmp_path / "adapter")(ids).logits
    reference = AutoModelForCausalLM.from_pretrained(SAMPLES / "tiny-llama")(ids).logits
    assert torch.equal(plain, reference)
    assert not torch.allclose(tuned, plain)


def test_same_name_new_content_is_a_new_version(graft, tmp_path):
    first = graft_json(graft, "add", make_model(tmp_path / "a", seed=1), "--name", "m")
    second = graft_json(graft, "add", make_model(tmp_path / "b", seed=2), "--name", "m")
    assert (first["version"], second["version"]) == (1, 2)
    assert first["id"] != second["id"]
    # layer norms are identical in both: their blobs are shared, so fewer bytes are new
    assert second["bytes_new"] < first["bytes_new"]


def test_identical_content_under_another_name_is_the_same_artifact(graft, tmp_path):
    first = graft_json(graft, "add", make_model(tmp_path / "a"), "--name", "one")
    second = graft_json(graft, "add", make_model(tmp_path / "b"), "--name", "two")
    assert second["id"] == first["id"] and second["existed"] and second["name"] == "one"


def test_meta_parent_and_method_are_recorded(graft, tmp_path):
    graft("add", make_model(tmp_path / "base"), "--name", "base")
    graft(
        "add",
        make_model(tmp_path / "ft", seed=3),
        "--parent",
        "base",
        "--method",
        "dpo",
        "--meta",
        "run=42",
        "--meta",
        "lr=1e-5",
    )
    shown = graft_json(graft, "show", "ft")
    assert shown["method"] == "dpo" and shown["meta"] == {"run": "42", "lr": "1e-5"}
    assert [(a["ref"], a["relation"]) for a in shown["ancestors"]] == [("base@1", "finetune")]
    assert graft_json(graft, "show", "base")["children"] == ["ft@1"]


def test_allow_pickle_converts_with_weights_only(graft, tmp_path):
    folder = tmp_path / "legacy"
    folder.mkdir()
    weights = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3)}
    torch.save(weights, folder / "pytorch_model.bin")
    added = graft_json(graft, "add", folder, "--allow-pickle")
    assert added["tensors"] == 2
    graft("export", "legacy", tmp_path / "out")
    from safetensors.torch import load_file

    loaded = load_file(tmp_path / "out" / "model.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())


def test_export_of_many_small_tensors_keeps_few_blobs_open(graft, tmp_path, monkeypatch):
    """Export decodes ahead by bytes and by pieces: hundreds of tiny tensors must
    not hold hundreds of blob files open at once."""
    from safetensors.torch import save_file

    from graft.registry import blobs

    model = tmp_path / "m"
    model.mkdir()
    save_file(
        {f"norm.{i}.weight": torch.full((4,), float(i)) for i in range(300)},
        model / "model.safetensors",
    )
    graft("add", model)
    open_now: set[int] = set()
    peak = 0
    init, close = blobs.BlobReader.__init__, blobs.BlobReader.close

    def counting_init(self, *args, **kwargs):
        nonlocal peak
        init(self, *args, **kwargs)
        open_now.add(id(self))
        peak = max(peak, len(open_now))

    def counting_close(self):
        open_now.discard(id(self))
        close(self)

    monkeypatch.setattr(blobs.BlobReader, "__init__", counting_init)
    monkeypatch.setattr(blobs.BlobReader, "close", counting_close)
    graft("export", "m", tmp_path / "out")
    assert sha256_tree(tmp_path / "out") == sha256_tree(model)
    assert 10 < peak <= 100  # of 301 blobs
