"""LoRA fold-in (merge.lora) against PEFT's own merge_and_unload.

Every adapter is folded key by key from its safetensors file and compared with
`PeftModel.from_pretrained(base, adapter).merge_and_unload().state_dict()`.
Generated models and adapters are seeded and written under tmp_path.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM, PreTrainedModel

from graft.merge.errors import AdapterError
from graft.merge.lora import LoraUpdate, check_base, fold, read_adapter
from tests.conftest import SAMPLES

BASE = SAMPLES / "tiny-llama"
ADAPTER_FILE = "adapter_model.safetensors"
MODEL_FILE = "model.safetensors"

pytestmark = pytest.mark.filterwarnings("ignore")


# --- helpers ------------------------------------------------------------------------


def graft_fold(base_dir: Path, adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The merged model's tensors, folded one base tensor at a time in fp32
    and rounded once to the base tensor's dtype."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    with (
        safe_open(adapter_dir / ADAPTER_FILE, "pt") as af,
        safe_open(base_dir / MODEL_FILE, "pt") as bf,
    ):
        shapes = {k: tuple(af.get_slice(k).get_shape()) for k in af.keys()}  # noqa: SIM118
        adapter = read_adapter(config, shapes)
        check_base(adapter, {k: tuple(bf.get_slice(k).get_shape()) for k in bf.keys()})  # noqa: SIM118
        assert adapter.adapter_keys() == set(shapes)

        def get(key: str) -> torch.Tensor:
            return af.get_tensor(key).float()

        out = {}
        for name in bf.keys():  # noqa: SIM118
            base = bf.get_tensor(name)
            update = adapter.updates.get(name)
            out[name] = base if update is None else fold(update, base.float(), get).to(base.dtype)
        assert set(adapter.updates) <= set(out)
    return out


def peft_merge(
    load_base: Callable[[], PreTrainedModel], adapter_dir: Path
) -> dict[str, torch.Tensor]:
    model = PeftModel.from_pretrained(load_base(), str(adapter_dir))
    return dict(model.merge_and_unload().state_dict())


def llama(dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    return LlamaForCausalLM.from_pretrained(BASE, dtype=dtype)


def assert_same(ours: Mapping[str, torch.Tensor], theirs: Mapping[str, torch.Tensor]) -> None:
    """Bit-identical on every tensor of the base file."""
    for name, tensor in ours.items():
        assert tensor.dtype == theirs[name].dtype, name
        assert torch.equal(tensor, theirs[name]), name


def make_adapter(model: PreTrainedModel, folder: Path, *, seed: int = 0, **config: Any) -> None:
    """Save a LoRA adapter with every trainable tensor set to seeded random
    values (PEFT's init would leave B, or the embedding's A, zero and DoRA's
    magnitude equal to the base's norms, so folding them would prove little)."""
    peft_model = get_peft_model(model, LoraConfig(**config))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if not p.requires_grad:
                continue
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "lora_magnitude_vector" in name:
                p.copy_(p * (1.0 + 0.5 * noise.abs()))  # DoRA magnitudes stay positive
            else:
                p.copy_(noise * 0.1)
    peft_model.save_pretrained(str(folder))


def tiny_gpt2(folder: Path, seed: int = 0) -> Path:
    """A seeded 2-layer GPT-2 (Conv1D layers store W as [in, out])."""
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=96,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
    )
    GPT2LMHeadModel(config).save_pretrained(str(folder))
    return folder


def gpt2(folder: Path) -> Callable[[], PreTrainedModel]:
    return lambda: GPT2LMHeadModel.from_pretrained(folder)


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many bf16 values lie between a and b (0 when equal; ±0 count as equal)."""

    def ordered(t: torch.Tensor) -> torch.Tensor:
        bits = t.to(torch.bfloat16).view(torch.int16).to(torch.int32)
        return torch.where(bits < 0, -(bits & 0x7FFF), bits)

    return (ordered(a) - ordered(b)).abs()


def read_folder(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """An adapter folder's config and all its tensors (small test adapters only)."""
    config = json.loads((folder / "adapter_config.json").read_text())
    with safe_open(folder / ADAPTER_FILE, "pt") as f:
        return config, {k: f.get_tensor(k).float() for k in f.keys()}  # noqa: SIM118


def shapes_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(t.shape) for k, t in tensors.items()}


# --- bit-identical folds in fp32 --------------------------------------------------------


@pytest.mark.parametrize("name", ["lora-copy", "lora-reverse", "lora-count"])
def test_sample_adapters_fold_bit_identical_to_peft(name):
    ours = graft_fold(BASE, SAMPLES / name)
    assert_same(ours, peft_merge(llama, SAMPLES / name))
    changed = "model.layers.0.mlp.up_proj.weight"
    if name != "lora-count":
        changed = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(ours[changed], llama().state_dict()[changed])


def test_gpt2_conv1d_with_fan_in_fan_out(tmp_path):
    base = tiny_gpt2(tmp_path / "base")
    make_adapter(
        gpt2(base)(),
        tmp_path / "lora",
        r=4,
        lora_alpha=8,
        target_modules=["c_attn", "c_proj"],
        fan_in_fan_out=True,
    )
    ours = graft_fold(base, tmp_path / "lora")
    assert_same(ours, peft_merge(gpt2(base), tmp_path / "lora"))
    config, tensors = read_folder(tmp_path / "lora")
    update = read_adapter(config, shapes_of(tensors)).updates["transformer.h.0.attn.c_attn.weight"]
    assert update.fan_in_fan_out and update.kind == "linear" and update.scale == 2.0


def test_fan_in_fan_out_follows_the_layer_not_the_config(tmp_path):
    """PEFT transposes for Conv1D whatever the config says; graft reads the
    layer type from the base tensor's shape (here non-square)."""
    base = tiny_gpt2(tmp_path / "base", seed=3)
    folder = tmp_path / "lora"
    make_adapter(gpt2(base)(), folder, r=2, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "fan_in_fan_out": False}))
    assert_same(graft_fold(base, folder), peft_merge(gpt2(base), folder))


def test_gpt2_lora_bias(tmp_path):
    base = tiny_gpt2(tmp_path / "base", seed=1)
    make_adapter(
        gpt2(base)(),
        tmp_path / "lora",
        r=2,
        lora_alpha=5,
        target_modules=["c_attn", "c_fc"],
        fan_in_fan_out=True,
        lora_bias=True,
    )
    ours = graft_fold(base, tmp_path / "lora")
    theirs = peft_merge(gpt2(base), tmp_path / "lora")
    assert_same(ours, theirs)
    before = GPT2LMHeadModel.from_pretrained(base).state_dict()
    assert not torch.equal(
        ours["transformer.h.1.mlp.c_fc.bias"], before["transformer.h.1.mlp.c_fc.bias"]
    )


def test_rank_and_alpha_patterns(tmp_path):
    rank_pattern = {"q_proj": 2, "layers.1.self_attn.v_proj": 6}
    alpha_pattern = {"v_proj": 3, r"layers\.2\..*o_proj": 32}
    make_adapter(
        llama(),
        tmp_path / "lora",
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "o_proj"],
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
    )
    ours = graft_fold(BASE, tmp_path / "lora")
    assert_same(ours, peft_merge(llama, tmp_path / "lora"))
    config, tensors = read_folder(tmp_path / "lora")
    updates = read_adapter(config, shapes_of(tensors)).updates
    assert updates["model.layers.0.self_attn.q_proj.weight"].scale == 8 / 2
    assert updates["model.layers.1.self_attn.v_proj.weight"].scale == 3 / 6
    assert updates["model.layers.0.self_attn.v_proj.weight"].scale == 3 / 4
    assert updates["model.layers.2.self_attn.o_proj.weight"].scale == 32 / 4
    assert updates["model.layers.3.self_attn.o_proj.weight"].scale == 8 / 4


def test_embedding_lora(tmp_path):
    make_adapter(
        llama(), tmp_path / "lora", r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"]
    )
    ours = graft_fold(BASE, tmp_path / "lora")
    assert_same(ours, peft_merge(llama, tmp_path / "lora"))
    config, tensors = read_folder(tmp_path / "lora")
    update = read_adapter(config, shapes_of(tensors)).updates["model.embed_tokens.weight"]
    assert update.kind == "embedding"
    # PEFT saves a targeted embedding whole too; the factors apply to that copy.
    assert update.source_key == "base_model.model.model.embed_tokens.base_layer.weight"


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_dora(tmp_path, model):
    if model == "llama":
        base, load = BASE, llama
        targets = ["q_proj", "v_proj", "down_proj", "embed_tokens"]
    else:
        base = tiny_gpt2(tmp_path / "base", seed=2)
        load = gpt2(base)
        targets = ["c_attn", "c_proj"]  # Conv1D: DoRA's norms run over W's columns
    make_adapter(
        load(),
        tmp_path / "dora",
        r=4,
        lora_alpha=8,
        target_modules=targets,
        use_dora=True,
        fan_in_fan_out=model == "gpt2",
    )
    ours = graft_fold(base, tmp_path / "dora")
    assert_same(ours, peft_merge(load, tmp_path / "dora"))


def test_dora_magnitude_matters(tmp_path):
    """The saved magnitudes are not PEFT's initial ones, so the DoRA folds
    above exercise them: with m = ‖W + ΔW‖ per row DoRA is plain LoRA."""
    make_adapter(llama(), tmp_path / "dora", r=4, target_modules=["q_proj"], use_dora=True)
    name = "model.layers.0.self_attn.q_proj.weight"
    mag = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"
    config, tensors = read_folder(tmp_path / "dora")
    update = read_adapter(config, shapes_of(tensors)).updates[name]
    base = llama().state_dict()[name]
    assert not torch.allclose(tensors[mag], torch.linalg.norm(base, dim=1))
    trained = fold(update, base, tensors.__getitem__)
    plain = fold(replace(update, magnitude_key=None), base, tensors.__getitem__)
    tensors[mag] = torch.linalg.norm(plain, dim=1)
    assert torch.allclose(fold(update, base, tensors.__getitem__), plain, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(trained, plain, rtol=1e-3)


def test_modules_to_save_replace_the_base_tensor(tmp_path):
    make_adapter(
        llama(),
        tmp_path / "lora",
        r=4,
        target_modules=["q_proj"],
        modules_to_save=["lm_head"],
    )
    ours = graft_fold(BASE, tmp_path / "lora")
    assert_same(ours, peft_merge(llama, tmp_path / "lora"))
    assert not torch.equal(ours["lm_head.weight"], llama().state_dict()["lm_head.weight"])
    config, tensors = read_folder(tmp_path / "lora")
    update = read_adapter(config, shapes_of(tensors)).updates["lm_head.weight"]
    assert update.kind == "replace" and update.source_key == "base_model.model.lm_head.weight"


# --- bf16 ---------------------------------------------------------------------------------


def test_bf16_base_within_one_ulp_of_peft(tmp_path):
    """A bf16 base (adapters trained on it, as PEFT saves them: factors in
    fp32, a whole embedding copy in bf16). graft computes in fp32 and rounds
    once; PEFT does the same for Linear layers and DoRA, but for a plain
    embedding LoRA it rounds ΔW to bf16 before adding it to W. That double
    rounding is off by many ulps where W + ΔW nearly cancels, so there the
    test pins PEFT's formula instead of an ulp bound."""
    base = tmp_path / "base"
    llama(torch.bfloat16).save_pretrained(str(base))

    def load() -> PreTrainedModel:
        return LlamaForCausalLM.from_pretrained(base, dtype=torch.bfloat16)

    make_adapter(
        load(),
        tmp_path / "dora",
        r=4,
        target_modules=["q_proj", "o_proj", "embed_tokens"],
        use_dora=True,
    )
    make_adapter(load(), tmp_path / "emb", r=4, target_modules=["embed_tokens", "up_proj"])
    adapters = [SAMPLES / "lora-copy", SAMPLES / "lora-reverse", tmp_path / "dora"]
    for adapter in [*adapters, tmp_path / "emb"]:
        ours = graft_fold(base, adapter)
        theirs = peft_merge(load, adapter)
        for name, tensor in ours.items():
            assert tensor.dtype == theirs[name].dtype == torch.bfloat16, name
            if adapter.name == "emb" and name == "model.embed_tokens.weight":
                continue
            worst = int(ulp_distance(tensor, theirs[name]).max())
            assert worst <= 1, (adapter.name, name, worst)

    embed = "model.embed_tokens.weight"
    w = load().state_dict()[embed].float()
    config, tensors = read_folder(tmp_path / "emb")
    update = read_adapter(config, shapes_of(tensors)).updates[embed]
    delta = fold(replace(update, source_key=None), torch.zeros_like(w), tensors.__getitem__)
    assert torch.equal(ours[embed], (w + delta).to(torch.bfloat16))
    assert torch.equal(theirs[embed], (w + delta.to(torch.bfloat16).float()).to(torch.bfloat16))


def test_ulp_distance_counts_representable_values():
    one = torch.tensor([1.0], dtype=torch.bfloat16)
    next_up = torch.nextafter(one.float(), torch.tensor([2.0])).to(torch.bfloat16)
    assert int(ulp_distance(one, one)) == 0
    up = (one.view(torch.int16) + 1).view(torch.bfloat16)
    assert int(ulp_distance(one, up)) == 1 and int(ulp_distance(-one, -up)) == 1
    zero = torch.tensor([0.0], dtype=torch.bfloat16)
    tiny = (zero.view(torch.int16) + 1).view(torch.bfloat16)
    assert int(ulp_distance(-tiny, tiny)) == 2 and int(ulp_distance(-zero, zero)) == 0
    assert int(ulp_distance(one, next_up)) == 0  # fp32's next value rounds back to 1


# --- errors -------------------------------------------------------------------------------


def _sample(name: str = "lora-copy") -> tuple[dict, dict[str, tuple[int, ...]]]:
    config, tensors = read_folder(SAMPLES / name)
    return config, shapes_of(tensors)


def _base_shapes() -> dict[str, tuple[int, ...]]:
    with safe_open(BASE / MODEL_FILE, "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118


Q = "base_model.model.model.layers.0.self_attn.q_proj"


def test_error_names_another_peft_type():
    config, shapes = _sample()
    with pytest.raises(AdapterError, match="IA3"):
        read_adapter({**config, "peft_type": "IA3"}, shapes)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"use_bdlora": True}, "use_bdlora"),
        ({"init_lora_weights": "pissa"}, "pissa"),
        ({"target_parameters": ["experts.gate_up_proj"]}, "target_parameters"),
        ({"r": 0}, "r 0"),
        ({"alpha_pattern": {"q_proj(": 4}}, "q_proj"),
        ({"rank_pattern": {"q_proj": "four"}}, "four"),
    ],
)
def test_error_configs_graft_cannot_fold(change, message):
    config, shapes = _sample()
    with pytest.raises(AdapterError, match=message):
        read_adapter({**config, **change}, shapes)


def test_error_lora_a_without_b():
    config, shapes = _sample()
    del shapes[f"{Q}.lora_B.weight"]
    with pytest.raises(AdapterError, match=rf"{Q}\.lora_A\.weight has no lora_B"):
        read_adapter(config, shapes)


def test_error_rank_disagrees_with_rank_pattern():
    config, shapes = _sample()
    with pytest.raises(AdapterError, match=rf"{Q}\.lora_A\.weight \[4, 64\].*rank 2"):
        read_adapter({**config, "rank_pattern": {"layers.0.self_attn.q_proj": 2}}, shapes)


def test_error_unknown_key():
    config, shapes = _sample()
    shapes[f"{Q}.ia3_l.weight"] = (64,)
    with pytest.raises(AdapterError, match=r"ia3_l\.weight is not a LoRA"):
        read_adapter(config, shapes)


def test_error_target_missing_in_base():
    config, shapes = _sample()
    adapter = read_adapter(config, shapes)
    base = _base_shapes()
    del base["model.layers.3.self_attn.v_proj.weight"]
    with pytest.raises(AdapterError, match=r"model\.layers\.3\.self_attn\.v_proj\.weight"):
        check_base(adapter, base)


def test_error_shape_mismatch_in_base_and_in_fold():
    config, shapes = _sample()
    adapter = read_adapter(config, shapes)
    base = _base_shapes()
    base["model.layers.1.self_attn.q_proj.weight"] = (64, 48)
    with pytest.raises(AdapterError, match=r"q_proj\.weight \[64, 48\]"):
        check_base(adapter, base)
    update = adapter.updates["model.layers.1.self_attn.q_proj.weight"]
    with pytest.raises(AdapterError, match=r"lora_A\.weight \[4, 64\].*\[64, 48\]"):
        fold(update, torch.zeros(64, 48), lambda key: torch.zeros(shapes[key]))


def test_error_bias_lora_on_a_module_without_bias():
    config, shapes = _sample()
    shapes[f"{Q}.lora_B.bias"] = (64,)
    adapter = read_adapter({**config, "lora_bias": True}, shapes)
    assert adapter.updates["model.layers.0.self_attn.q_proj.bias"].kind == "bias"
    with pytest.raises(AdapterError, match=r"q_proj.*has no bias"):
        check_base(adapter, _base_shapes())


def test_error_parts_the_config_does_not_enable():
    config, shapes = _sample()
    with pytest.raises(AdapterError, match="lora_bias"):
        read_adapter(config, {**shapes, f"{Q}.lora_B.bias": (64,)})
    with pytest.raises(AdapterError, match="use_dora"):
        read_adapter(config, {**shapes, f"{Q}.lora_magnitude_vector": (64,)})
    with pytest.raises(AdapterError, match="lora_magnitude_vector"):
        read_adapter({**config, "use_dora": True}, shapes)


def test_replace_update_reads_only_the_copy():
    update = LoraUpdate("lm_head.weight", "replace", 1.0, None, None, source_key="copy")
    new = torch.ones(3, 2)
    assert torch.equal(fold(update, torch.zeros(3, 2), {"copy": new}.__getitem__), new)
    with pytest.raises(
        AdapterError, match=r"copy has shape \[3, 2\].*lm_head\.weight has \[2, 3\]"
    ):
        fold(update, torch.zeros(2, 3), {"copy": new}.__getitem__)
