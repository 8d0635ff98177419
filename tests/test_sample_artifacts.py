"""Checks on the committed sample artifacts in ``sample_artifacts/``.

They load with the standard transformers / PEFT entry points, the adapters do
something, and the fine-tune touched exactly the layers its card documents.
Everything is read from the working tree and nothing is written to it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import peft
import pytest
import safetensors
import torch
import transformers

SAMPLES = Path(__file__).resolve().parent.parent / "sample_artifacts"
BASE_DIR = SAMPLES / "tiny-llama"
SFT_DIR = SAMPLES / "tiny-llama-sft"
NUM_LAYERS = 4
SFT_LAYERS = (2, 3)
TENSORS_PER_LAYER = 9  # 7 projections + 2 RMSNorm weights
MAX_TOTAL_BYTES = 5 * 1024 * 1024

ALL_PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
ADAPTERS: dict[str, dict[str, Any]] = {
    "lora-copy": {
        "target_modules": {"q_proj", "v_proj"},
        "r": 4,
        "lora_alpha": 8,
        "use_rslora": False,
    },
    "lora-reverse": {
        "target_modules": ALL_PROJECTIONS,
        "r": 8,
        "lora_alpha": 16,
        "use_rslora": True,
    },
    "lora-count": {
        "target_modules": {"gate_proj", "up_proj", "down_proj"},
        "r": 2,
        "lora_alpha": 4,
        "use_rslora": False,
    },
}
SHARED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
PROBE = "reverse: 3 1 4 1 5 => 5 1 4 1 3"


@pytest.fixture(scope="module", autouse=True)
def offline() -> Iterator[None]:
    """Make any accidental Hub lookup fail fast instead of touching the network."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


def load_base() -> Any:
    model = transformers.AutoModelForCausalLM.from_pretrained(BASE_DIR, local_files_only=True)
    return model.eval()


def load_tokenizer() -> Any:
    return transformers.AutoTokenizer.from_pretrained(BASE_DIR, local_files_only=True)


def read_tensors(path: Path) -> dict[str, Any]:
    with safetensors.safe_open(str(path), framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)


def logits(model: Any, input_ids: Any) -> Any:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


@pytest.fixture(scope="module")
def probe_ids() -> Any:
    return load_tokenizer()(PROBE, return_tensors="pt").input_ids


@pytest.fixture(scope="module")
def base_logits(probe_ids: Any) -> Any:
    return logits(load_base(), probe_ids)


def test_base_loads_with_auto_classes(probe_ids: Any, base_logits: Any) -> None:
    model = load_base()
    tokenizer = load_tokenizer()
    config = model.config
    assert config.model_type == "llama"
    assert (config.hidden_size, config.intermediate_size) == (64, 128)
    assert config.num_hidden_layers == NUM_LAYERS
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert config.tie_word_embeddings is False
    assert config.vocab_size == len(tokenizer)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert (BASE_DIR / "generation_config.json").is_file()
    assert base_logits.shape == (1, probe_ids.shape[1], config.vocab_size)


@pytest.mark.parametrize("text", [PROBE, "count b: a b e b c => 2", "Héllo, wörld!\n\tünïcode 🙂"])
def test_tokenizer_round_trips(text: str) -> None:
    tokenizer = load_tokenizer()
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_special_tokens() -> None:
    tokenizer = load_tokenizer()
    assert [tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token] == [
        "<unk>",
        "<s>",
        "</s>",
        "<pad>",
    ]
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_adapter_config(name: str) -> None:
    expected = ADAPTERS[name]
    config = json.loads((SAMPLES / name / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert config["base_model_name_or_path"] == "tiny-llama"
    assert set(config["target_modules"]) == expected["target_modules"]
    assert config["r"] == expected["r"]
    assert config["lora_alpha"] == expected["lora_alpha"]
    assert config["use_rslora"] is expected["use_rslora"]


def test_reverse_adapter_uses_rslora() -> None:
    config = json.loads((SAMPLES / "lora-reverse" / "adapter_config.json").read_text())
    assert config["use_rslora"] is True


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_adapter_tensors_are_trained(name: str) -> None:
    expected = ADAPTERS[name]
    tensors = read_tensors(SAMPLES / name / "adapter_model.safetensors")
    a_names = [key for key in tensors if ".lora_A." in key]
    b_names = [key for key in tensors if ".lora_B." in key]
    assert len(a_names) == len(b_names) == NUM_LAYERS * len(expected["target_modules"])
    assert len(tensors) == len(a_names) + len(b_names)
    for key in a_names:
        assert tensors[key].shape[0] == expected["r"], key
    for key in b_names:
        assert tensors[key].shape[1] == expected["r"], key
        # LoRA B starts at zero; training must have moved every one of them.
        assert tensors[key].abs().max().item() > 1e-3, key


# PEFT calls a transformers helper that transformers 5 deprecates.
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_adapter_loads_and_changes_logits(name: str, probe_ids: Any, base_logits: Any) -> None:
    model = peft.PeftModel.from_pretrained(load_base(), str(SAMPLES / name)).eval()
    adapted = logits(model, probe_ids)
    assert adapted.shape == base_logits.shape
    assert (adapted - base_logits).abs().max().item() > 1e-3


def test_sft_changes_exactly_the_documented_layers() -> None:
    base = read_tensors(BASE_DIR / "model.safetensors")
    sft = read_tensors(SFT_DIR / "model.safetensors")
    assert base.keys() == sft.keys()
    changed = set()
    for key in base:
        assert base[key].dtype == sft[key].dtype, key
        assert base[key].shape == sft[key].shape, key
        if not torch.equal(base[key], sft[key]):
            changed.add(key)
    expected = {
        key for key in base if any(key.startswith(f"model.layers.{i}.") for i in SFT_LAYERS)
    }
    assert changed == expected
    assert len(changed) == TENSORS_PER_LAYER * len(SFT_LAYERS)


def test_sft_shares_config_and_tokenizer_with_base() -> None:
    for name in SHARED_FILES:
        assert (SFT_DIR / name).read_bytes() == (BASE_DIR / name).read_bytes(), name
    model = transformers.AutoModelForCausalLM.from_pretrained(SFT_DIR, local_files_only=True)
    assert model.config.num_hidden_layers == NUM_LAYERS


def test_weights_are_safetensors_only() -> None:
    for folder in [BASE_DIR, SFT_DIR, *(SAMPLES / name for name in ADAPTERS)]:
        assert folder.is_dir(), folder
        suffixes = {path.suffix for path in folder.iterdir()}
        assert ".safetensors" in suffixes, folder
        assert not suffixes & {".bin", ".pt", ".pth", ".pkl", ".ckpt"}, folder


def test_no_machine_paths_in_text_files() -> None:
    markers = ("/work/", "/tmp/", "/home/", "/Users/", str(SAMPLES.parent))
    for path in SAMPLES.rglob("*"):
        if path.suffix in {".json", ".md"} and "__pycache__" not in path.parts:
            text = path.read_text()
            for marker in markers:
                assert marker not in text, f"{path.relative_to(SAMPLES)} contains {marker!r}"


def test_total_size_stays_small() -> None:
    total = sum(
        path.stat().st_size
        for path in SAMPLES.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )
    assert total < MAX_TOTAL_BYTES, f"sample_artifacts/ is {total} bytes"
