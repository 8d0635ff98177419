"""`tokenizer_source: union`: inputs with different added tokens merge into one
model whose tokenizer holds every token and whose embedding and head rows are
the merge of the inputs' rows, laid out in the union vocabulary."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import Result
from safetensors.torch import load_file, save_file
from transformers import AddedToken, AutoModelForCausalLM, AutoTokenizer

from graft.merge.config import parse_config
from graft.merge.errors import MergeConfigError, MergeInputError
from graft.merge.executor import run
from graft.merge.plan import build_plan
from tests.conftest import SAMPLES

BASE = SAMPLES / "tiny-llama"
SFT = SAMPLES / "tiny-llama-sft"
VOCAB = ("model.embed_tokens.weight", "lm_head.weight")


def with_tokens(source: Path, dest: Path, tokens: list[str | AddedToken], seed: int) -> Path:
    """A copy of `source` with `tokens` added to its tokenizer and a new, trained-
    looking row for each in its embedding and head."""
    shutil.copytree(source, dest)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.add_tokens(tokens)
    tokenizer.save_pretrained(dest)
    tensors = load_file(source / "model.safetensors")
    g = torch.Generator().manual_seed(seed)
    for name in VOCAB:
        old = tensors[name]
        new = old.std() * torch.randn(len(tokenizer) - old.shape[0], old.shape[1], generator=g)
        tensors[name] = torch.cat([old, new.to(old.dtype)])
    save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((dest / "config.json").read_text())
    config["vocab_size"] = len(tokenizer)
    (dest / "config.json").write_text(json.dumps(config))
    return dest


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two fine-tunes of the sample base: one adds <tool> and <think>, the other
    <think> (at another id) and a special <code>."""
    root = tmp_path_factory.mktemp("union-inputs")
    a = with_tokens(SFT, root / "a", ["<tool>", "<think>"], 1)
    b = with_tokens(BASE, root / "b", ["<think>", AddedToken("<code>", special=True)], 2)
    return a, b


def merge(config: dict, out: Path) -> Path:
    run(build_plan(parse_config(config), None), out)
    return out


def linear(a: Path, b: Path, tokenizer_source: str = "union") -> dict:
    return {
        "merge_method": "linear",
        "base_model": str(BASE),
        "models": [
            {"model": str(BASE), "parameters": {"weight": 0.2}},
            {"model": str(a), "parameters": {"weight": 0.5}},
            {"model": str(b), "parameters": {"weight": 0.3}},
        ],
        "tokenizer_source": tokenizer_source,
    }


def row(folder: Path, tensors: dict[str, torch.Tensor], name: str, token: str) -> torch.Tensor:
    index = AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids(token)
    return tensors[name][index].double()


def test_the_union_holds_every_token_and_the_model_loads_with_finite_logits(
    inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = inputs
    out = merge(
        {
            "merge_method": "ties",
            "base_model": str(BASE),
            "models": [
                {"model": str(a), "parameters": {"weight": 0.6, "density": 0.5}},
                {"model": str(b), "parameters": {"weight": 0.4, "density": 0.7}},
            ],
            "tokenizer_source": "union",
        },
        tmp_path / "out",
    )
    tokenizer = AutoTokenizer.from_pretrained(out)
    base = AutoTokenizer.from_pretrained(BASE)
    assert len(tokenizer) == len(base) + 3
    vocab = tokenizer.get_vocab()
    assert all(vocab[t] == i for t, i in base.get_vocab().items())  # the base's ids stay
    assert {"<tool>", "<think>", "<code>"} <= set(vocab)
    special = {t.content: t.special for t in tokenizer.added_tokens_decoder.values()}
    assert special["<code>"] and not special["<tool>"] and not special["<think>"]
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(tokenizer)

    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tokenizer("<tool> hello <think> world <code>", return_tensors="pt").input_ids
    assert {vocab["<tool>"], vocab["<think>"], vocab["<code>"]} <= set(ids[0].tolist())
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


def test_each_row_is_the_merge_of_the_inputs_rows_in_the_union(
    inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    """Linear, computed here in float64 from each input's own row for the token
    (a token an input lacks: the one holder's row, else the base's, else the mean)."""
    a, b = inputs
    out = merge(linear(a, b), tmp_path / "out")
    merged = load_file(out / "model.safetensors")
    rows = {p: load_file(p / "model.safetensors") for p in (BASE, a, b)}
    weights = {BASE: 0.2, a: 0.5, b: 0.3}
    for name in VOCAB:
        shared = AutoTokenizer.from_pretrained(BASE).convert_ids_to_tokens([1, 100, 383])
        for token in (*shared, "<tool>", "<think>", "<code>"):
            own = {
                p: row(p, rows[p], name, token)
                for p in weights
                if token in AutoTokenizer.from_pretrained(p).get_vocab()
            }
            fill = own[BASE] if BASE in own else sum(own.values()) / len(own)
            expected = sum(w * own.get(p, fill) for p, w in weights.items())
            got = row(out, merged, name, token)
            torch.testing.assert_close(got, expected, rtol=2e-6, atol=1e-7, msg=token)


def test_a_token_the_base_has_fills_from_the_base(tmp_path: Path) -> None:
    """An input whose embedding stops short of its tokenizer lacks the last token:
    it takes the base's row, not the mean of the inputs that have it."""
    tensors = load_file(SFT / "model.safetensors")
    tuned, short = tmp_path / "tuned", tmp_path / "short"
    for folder in (tuned, short):
        shutil.copytree(SFT, folder)
    g = torch.Generator().manual_seed(3)
    changed = {n: t.clone() for n, t in tensors.items()}
    for name in VOCAB:
        changed[name][383] = torch.randn(changed[name].shape[1], generator=g)
        tensors[name] = tensors[name][:383].contiguous()
    save_file(changed, tuned / "model.safetensors", metadata={"format": "pt"})
    save_file(tensors, short / "model.safetensors", metadata={"format": "pt"})
    out = merge(linear(tuned, short), tmp_path / "out")
    merged, base = load_file(out / "model.safetensors"), load_file(BASE / "model.safetensors")
    for name in VOCAB:
        expected = 0.5 * base[name][383].double() + 0.5 * changed[name][383].double()
        torch.testing.assert_close(merged[name][383].double(), expected, rtol=2e-6, atol=1e-7)


def test_shared_rows_equal_a_merge_without_the_new_tokens(
    inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    """The rows of tokens every input has are exactly what merging the inputs cut
    to the base's vocabulary gives; the other tensors are untouched by the union."""
    a, b = inputs
    cut = []
    for p in (a, b):
        folder = tmp_path / f"cut-{p.name}"
        shutil.copytree(BASE, folder)
        tensors = load_file(p / "model.safetensors")
        for name in VOCAB:
            tensors[name] = tensors[name][:384].contiguous()
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        cut.append(folder)
    union = load_file(merge(linear(a, b), tmp_path / "union") / "model.safetensors")
    plain = load_file(merge(linear(*cut, "base"), tmp_path / "plain") / "model.safetensors")
    assert union.keys() == plain.keys()
    for name, tensor in plain.items():
        got = union[name][:384] if name in VOCAB else union[name]
        assert torch.equal(got, tensor), name


def test_union_of_identical_tokenizers_changes_nothing(tmp_path: Path) -> None:
    config = linear(SFT, BASE)
    union = load_file(merge(config, tmp_path / "union") / "model.safetensors")
    plain = load_file(
        merge({**config, "tokenizer_source": "base"}, tmp_path / "plain") / "model.safetensors"
    )
    assert all(torch.equal(union[n], plain[n]) for n in plain)


def test_an_input_without_a_tokenizer_is_a_one_line_error(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(SFT / "model.safetensors", bare / "model.safetensors")
    config = parse_config(linear(bare, SFT))
    with pytest.raises(MergeInputError, match=r"bare.*has no tokenizer files"):
        build_plan(config, None)


def test_union_refuses_adapters(tmp_path: Path) -> None:
    config = {
        "merge_method": "linear",
        "base_model": str(BASE),
        "models": [
            {"model": str(SAMPLES / "lora-copy"), "parameters": {"weight": 0.5}},
            {"model": str(SAMPLES / "lora-count"), "parameters": {"weight": 0.5}},
        ],
        "tokenizer_source": "union",
    }
    with pytest.raises(MergeConfigError, match="union cannot merge LoRA adapters"):
        build_plan(parse_config(config), None)


def test_registered_inputs_merge_through_the_cli_and_the_output_is_recorded(
    inputs: tuple[Path, Path], graft: Callable[..., Result], tmp_path: Path
) -> None:
    """Inputs read from the store (tokenizer files from their blobs) give the same
    output as the folders; the merge is registered with its tokenizer."""
    a, b = inputs
    graft("add", BASE, "--name", "base")
    graft("add", a, "--name", "a", "--parent", "base")
    graft("add", b, "--name", "b", "--parent", "base")
    by_name = {
        **linear(a, b),
        "base_model": "base",
        "models": [
            {"model": name, "parameters": {"weight": w}}
            for name, w in (("base", 0.2), ("a", 0.5), ("b", 0.3))
        ],
    }
    config = tmp_path / "union.yml"
    config.write_text(json.dumps(by_name))
    graft("merge", config, "--out", tmp_path / "out", "--name", "merged")
    folders = merge(linear(a, b), tmp_path / "from-folders")
    out, ours = tmp_path / "out", load_file(tmp_path / "out" / "model.safetensors")
    expected = load_file(folders / "model.safetensors")
    assert ours.keys() == expected.keys()
    assert all(torch.equal(ours[k], expected[k]) for k in ours)
    assert (out / "tokenizer.json").read_bytes() == (folders / "tokenizer.json").read_bytes()
    exported = tmp_path / "exported"
    graft("export", "merged", exported)
    assert len(AutoTokenizer.from_pretrained(exported)) == 387


def test_an_unreadable_tokenizer_is_one_line_through_the_cli(
    graft: Callable[..., Result], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(SFT, broken)
    (broken / "tokenizer.json").write_text("{not json")
    config = tmp_path / "union.yml"
    config.write_text(json.dumps(linear(broken, SFT)))
    result = graft("merge", config, "--out", tmp_path / "out", "--no-register", code=1)
    assert result.stderr.count("\n") == 1
    assert "cannot load the tokenizer of" in result.stderr and "broken" in result.stderr
    assert not (tmp_path / "out").exists()
