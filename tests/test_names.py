"""Tensor-name parsing against the real names of tiny transformers and PEFT adapters.

Every architecture is instantiated from its config class (offline, seeded), so
the names checked are the ones transformers and PEFT really produce: the
in-memory state_dict, non-persistent buffers, and what save_pretrained writes
(which for MoE and GPT-NeoX differs from the state_dict).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as tf
from peft import LoraConfig, get_peft_model
from safetensors import safe_open

from graft.lineage.names import ADAPTER_PARTS, BLOCKS, AdapterKey, Place, adapter_key, place_of

pytestmark = [
    # PEFT and transformers warn about tied embeddings, saved embeddings and
    # deprecations; none of it matters to the names.
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

LAYERS = 2
_TOKENS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
_DECODER = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vocab_size": 64,
    "max_position_embeddings": 64,
    **_TOKENS,
}
ARCHS: dict[str, tuple[Any, Any, dict[str, Any]]] = {
    "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, _DECODER),
    "mistral": (tf.MistralConfig, tf.MistralForCausalLM, _DECODER),
    "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, _DECODER),
    "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM, {**_DECODER, "head_dim": 8}),
    "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM, {**_DECODER, "head_dim": 8}),
    "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM, {**_DECODER, "head_dim": 8}),
    "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM, _DECODER),
    "gpt2": (
        tf.GPT2Config,
        tf.GPT2LMHeadModel,
        {"n_embd": 16, "n_layer": LAYERS, "n_head": 2, "vocab_size": 64, "n_positions": 64}
        | _TOKENS,
    ),
    "gpt_neox": (tf.GPTNeoXConfig, tf.GPTNeoXForCausalLM, _DECODER),
    "falcon": (
        tf.FalconConfig,
        tf.FalconForCausalLM,
        {"hidden_size": 16, "num_hidden_layers": LAYERS, "num_attention_heads": 2}
        | {"vocab_size": 64, **_TOKENS},
    ),
    "mixtral": (
        tf.MixtralConfig,
        tf.MixtralForCausalLM,
        {**_DECODER, "num_local_experts": 4, "num_experts_per_tok": 2},
    ),
    "qwen2_moe": (
        tf.Qwen2MoeConfig,
        tf.Qwen2MoeForCausalLM,
        {**_DECODER, "num_experts": 4, "num_experts_per_tok": 2}
        | {"moe_intermediate_size": 8, "shared_expert_intermediate_size": 16},
    ),
}


def tiny(arch: str) -> Any:  # a PreTrainedModel; nn.Module would hide save_pretrained
    config_cls, model_cls, kwargs = ARCHS[arch]
    torch.manual_seed(0)
    return model_cls(config_cls(**kwargs))


def saved_keys(path: Path) -> list[str]:
    with safe_open(str(path), "pt") as f:
        return list(f.keys())


@cache
def real_names(arch: str, tmp: Path) -> frozenset[str]:
    """state_dict names, buffer names and the names save_pretrained writes."""
    model = tiny(arch)
    model.save_pretrained(tmp / arch)
    names = set(model.state_dict())
    names |= {name for name, _ in model.named_buffers()}
    names |= set(saved_keys(tmp / arch / "model.safetensors"))
    return frozenset(names)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


# --- place_of on real names ---------------------------------------------------

_BUFFER_LEAVES = ("weight", "bias", "inv_freq", "original_inv_freq", "embed_scale")


def expected_module(name: str) -> str:
    parts = name.split(".")
    if parts[-1] in _BUFFER_LEAVES or parts[-1].endswith("_inv_freq"):
        return parts[-2]
    return parts[-1]  # MoE experts in memory: a bare 3-D parameter


@pytest.mark.parametrize("arch", ARCHS)
def test_every_real_name_is_placed(arch, models_dir):
    names = real_names(arch, models_dir)
    by_layer: dict[int, set[tuple[str, str]]] = {}
    for name in names:
        place = place_of(name)
        assert place.block in BLOCKS, name
        assert place.block != "other", name
        assert place.module == expected_module(name), name
        in_stack = any(f".{stack}." in f".{name}" for stack in ("layers", "h"))
        if in_stack:
            assert place.layer is not None and 0 <= place.layer < LAYERS, name
            by_layer.setdefault(place.layer, set()).add((place.block, place.module))
        else:
            assert place.layer is None, name
    # Every layer reads the same, and every layer has attention, mlp and a norm.
    assert len(by_layer) == LAYERS
    first = by_layer[0]
    assert all(places == first for places in by_layer.values())
    assert {block for block, _ in first} == {"attention", "mlp", "norm"}


SPOT_CHECKS: list[tuple[str, str, int | None, str, str]] = [
    ("llama", "model.embed_tokens.weight", None, "embedding", "embed_tokens"),
    ("llama", "model.layers.1.self_attn.q_proj.weight", 1, "attention", "q_proj"),
    ("llama", "model.layers.0.self_attn.o_proj.weight", 0, "attention", "o_proj"),
    ("llama", "model.layers.1.mlp.down_proj.weight", 1, "mlp", "down_proj"),
    ("llama", "model.layers.0.input_layernorm.weight", 0, "norm", "input_layernorm"),
    ("llama", "model.norm.weight", None, "norm", "norm"),
    ("llama", "lm_head.weight", None, "head", "lm_head"),
    ("llama", "model.rotary_emb.inv_freq", None, "embedding", "rotary_emb"),
    ("mistral", "model.layers.1.self_attn.k_proj.weight", 1, "attention", "k_proj"),
    ("mistral", "model.layers.0.mlp.gate_proj.weight", 0, "mlp", "gate_proj"),
    ("qwen2", "model.layers.0.self_attn.q_proj.bias", 0, "attention", "q_proj"),
    (
        "qwen2",
        "model.layers.1.post_attention_layernorm.weight",
        1,
        "norm",
        "post_attention_layernorm",
    ),
    ("gemma", "model.embed_tokens.embed_scale", None, "embedding", "embed_tokens"),
    ("gemma", "model.layers.1.mlp.up_proj.weight", 1, "mlp", "up_proj"),
    (
        "gemma2",
        "model.layers.1.pre_feedforward_layernorm.weight",
        1,
        "norm",
        "pre_feedforward_layernorm",
    ),
    (
        "gemma2",
        "model.layers.0.post_feedforward_layernorm.weight",
        0,
        "norm",
        "post_feedforward_layernorm",
    ),
    ("gemma3", "model.layers.0.self_attn.q_norm.weight", 0, "norm", "q_norm"),
    ("gemma3", "model.layers.1.self_attn.v_proj.weight", 1, "attention", "v_proj"),
    ("gemma3", "model.rotary_emb.sliding_attention_inv_freq", None, "embedding", "rotary_emb"),
    ("phi3", "model.layers.0.self_attn.qkv_proj.weight", 0, "attention", "qkv_proj"),
    ("phi3", "model.layers.1.mlp.gate_up_proj.weight", 1, "mlp", "gate_up_proj"),
    ("gpt2", "transformer.wte.weight", None, "embedding", "wte"),
    ("gpt2", "transformer.wpe.weight", None, "embedding", "wpe"),
    ("gpt2", "transformer.h.0.ln_1.weight", 0, "norm", "ln_1"),
    ("gpt2", "transformer.h.1.ln_2.bias", 1, "norm", "ln_2"),
    ("gpt2", "transformer.h.1.attn.c_attn.weight", 1, "attention", "c_attn"),
    ("gpt2", "transformer.h.0.attn.c_proj.bias", 0, "attention", "c_proj"),
    ("gpt2", "transformer.h.0.mlp.c_proj.weight", 0, "mlp", "c_proj"),
    ("gpt2", "transformer.h.1.mlp.c_fc.bias", 1, "mlp", "c_fc"),
    ("gpt2", "transformer.ln_f.weight", None, "norm", "ln_f"),
    ("gpt_neox", "gpt_neox.embed_in.weight", None, "embedding", "embed_in"),
    (
        "gpt_neox",
        "gpt_neox.layers.1.attention.query_key_value.weight",
        1,
        "attention",
        "query_key_value",
    ),
    ("gpt_neox", "gpt_neox.layers.0.attention.dense.bias", 0, "attention", "dense"),
    ("gpt_neox", "gpt_neox.layers.0.mlp.dense_h_to_4h.weight", 0, "mlp", "dense_h_to_4h"),
    ("gpt_neox", "gpt_neox.layers.1.mlp.dense_4h_to_h.bias", 1, "mlp", "dense_4h_to_h"),
    ("gpt_neox", "gpt_neox.final_layer_norm.weight", None, "norm", "final_layer_norm"),
    ("gpt_neox", "embed_out.weight", None, "head", "embed_out"),  # saved name of lm_head
    ("falcon", "transformer.word_embeddings.weight", None, "embedding", "word_embeddings"),
    (
        "falcon",
        "transformer.h.1.self_attention.query_key_value.weight",
        1,
        "attention",
        "query_key_value",
    ),
    ("falcon", "transformer.h.0.self_attention.dense.weight", 0, "attention", "dense"),
    ("falcon", "transformer.h.0.mlp.dense_h_to_4h.weight", 0, "mlp", "dense_h_to_4h"),
    ("falcon", "transformer.h.1.input_layernorm.bias", 1, "norm", "input_layernorm"),
    ("falcon", "transformer.ln_f.bias", None, "norm", "ln_f"),
    ("mixtral", "model.layers.0.mlp.experts.gate_up_proj", 0, "mlp", "gate_up_proj"),
    ("mixtral", "model.layers.1.mlp.gate.weight", 1, "mlp", "gate"),
    ("mixtral", "model.layers.1.block_sparse_moe.experts.3.w1.weight", 1, "mlp", "w1"),
    ("mixtral", "model.layers.0.block_sparse_moe.gate.weight", 0, "mlp", "gate"),
    ("qwen2_moe", "model.layers.1.mlp.experts.2.up_proj.weight", 1, "mlp", "up_proj"),
    ("qwen2_moe", "model.layers.0.mlp.shared_expert.gate_proj.weight", 0, "mlp", "gate_proj"),
    ("qwen2_moe", "model.layers.0.mlp.shared_expert_gate.weight", 0, "mlp", "shared_expert_gate"),
]


@pytest.mark.parametrize(("arch", "name", "layer", "block", "module"), SPOT_CHECKS)
def test_spot_checks(arch, name, layer, block, module, models_dir):
    assert name in real_names(arch, models_dir), "the table must use real names"
    assert place_of(name) == Place(layer, block, module)


# --- the generic fallback -----------------------------------------------------

FALLBACK: list[tuple[str, int | None, str, str]] = [
    # Meta's original Llama layout.
    ("layers.7.attention.wq.weight", 7, "attention", "wq"),
    ("layers.7.attention.wo.weight", 7, "attention", "wo"),
    ("layers.7.feed_forward.w2.weight", 7, "mlp", "w2"),
    ("layers.7.attention_norm.weight", 7, "norm", "attention_norm"),
    ("layers.7.ffn_norm.weight", 7, "norm", "ffn_norm"),
    ("tok_embeddings.weight", None, "embedding", "tok_embeddings"),
    ("output.weight", None, "head", "output"),
    # GPT-2 without its prefix, with the old causal-mask buffers.
    ("h.11.attn.c_attn.weight", 11, "attention", "c_attn"),
    ("h.11.attn.bias", 11, "attention", "attn"),
    ("h.11.attn.masked_bias", 11, "attention", "attn"),
    ("wte.weight", None, "embedding", "wte"),
    # Old checkpoints saved rotary buffers per layer.
    ("model.layers.3.self_attn.rotary_emb.inv_freq", 3, "attention", "rotary_emb"),
    # BERT, T5, MPT, made-up stacks and blocks.
    ("bert.encoder.layer.4.attention.self.query.weight", 4, "attention", "query"),
    ("bert.encoder.layer.4.attention.output.LayerNorm.bias", 4, "norm", "LayerNorm"),
    ("bert.encoder.layer.4.intermediate.dense.weight", 4, "mlp", "dense"),
    ("encoder.block.2.layer.1.DenseReluDense.wo.weight", 2, "mlp", "wo"),
    ("encoder.block.2.layer.0.SelfAttention.o.weight", 2, "attention", "o"),
    ("transformer.blocks.5.ffn.up.weight", 5, "mlp", "up"),
    ("transformer.blocks.5.norm_1.weight", 5, "norm", "norm_1"),
    ("net.blocks.12.my_attn.proj.weight", 12, "attention", "proj"),
    ("net.layers.0.experts.9.linear.weight", 0, "mlp", "linear"),
    ("net.layers.0.fc.weight", 0, "mlp", "fc"),
    ("net.layers.3.mystery.weight", 3, "other", "mystery"),
    ("net.layers.3.weight", 3, "other", "3"),
    ("net.embeddings.position_embeddings.weight", None, "embedding", "position_embeddings"),
    ("net.ln.weight", None, "norm", "ln"),
    ("net.embed_out.weight", None, "head", "embed_out"),
    ("net.final_norm.weight", None, "norm", "final_norm"),
    ("net.something.weight", None, "other", "something"),
    # Quantized checkpoints keep the module name in front of their extra tensors.
    ("model.layers.2.self_attn.q_proj.qweight", 2, "attention", "q_proj"),
    ("model.layers.2.mlp.down_proj.weight.absmax", 2, "mlp", "down_proj"),
    ("model.layers.2.mlp.down_proj.weight_scale_inv", 2, "mlp", "down_proj"),
    # Prefixes seen in the wild.
    ("base_model.model.model.layers.1.self_attn.k_proj.weight", 1, "attention", "k_proj"),
    ("model.language_model.layers.6.mlp.gate_proj.weight", 6, "mlp", "gate_proj"),
]


@pytest.mark.parametrize(("name", "layer", "block", "module"), FALLBACK)
def test_fallback(name, layer, block, module):
    assert place_of(name) == Place(layer, block, module)


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "weight", "layers", "layers.", "layers.x.weight", "h.99999999999999999999",
     "h.٣.attn.weight", "base_model.model.", "a..b", "lora_A.weight", ".lora_A.weight",
     "modules_to_save", "x.modules_to_save", "#.layers.#.weight", "layers.0.#"],
)  # fmt: skip
def test_never_raises(name):
    assert place_of(name).block in BLOCKS
    found = adapter_key(name)
    assert found is None or found.part in ADAPTER_PARTS


def test_non_ascii_digits_are_not_a_layer():
    assert place_of("h.٣.attn.weight").layer is None


# --- PEFT adapters ------------------------------------------------------------


def save_adapter(arch: str, config: LoraConfig, out: Path) -> tuple[set[str], list[str]]:
    """Base state_dict names, and the keys PEFT writes for `config`."""
    model = tiny(arch)
    base = set(model.state_dict())
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(str(out))
    return base, saved_keys(out / "adapter_model.safetensors")


def expected_part(key: str) -> str:
    """The part, by a plain reading of the observed saved key forms."""
    for suffix in ("lora_A.weight", "lora_B.weight", "lora_B.bias"):
        if key.endswith(suffix):
            return suffix.split(".")[0]
    for suffix in ("lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"):
        if key.endswith(suffix):
            return suffix
    return "modules_to_save"  # a full tensor under base_model.model.


def check_all_map(keys: list[str], base: set[str]) -> list[AdapterKey]:
    mapped = []
    for key in keys:
        found = adapter_key(key)
        assert found is not None, key
        assert found.base_tensor in base, key
        assert found.part == expected_part(key), key
        assert found.base_tensor.startswith(f"{found.module}."), key
        assert place_of(key) == place_of(found.base_tensor), key
        mapped.append(found)
    return mapped


def test_llama_lora_with_embedding_and_modules_to_save(tmp_path):
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=2, target_modules=[*targets, "embed_tokens"], modules_to_save=["lm_head"])
    base, keys = save_adapter("llama", config, tmp_path)
    # The saved forms this parser relies on, as PEFT writes them today.
    assert "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.embed_tokens.lora_embedding_A" in keys
    assert "base_model.model.model.embed_tokens.base_layer.weight" in keys
    assert "base_model.model.lm_head.weight" in keys

    mapped = check_all_map(keys, base)
    blocks = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn"}
    blocks |= {"o_proj": "self_attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
    assert {k.module for k in mapped} == {
        f"model.layers.{i}.{blocks[t]}.{t}" for i in range(LAYERS) for t in targets
    } | {"model.embed_tokens", "lm_head"}
    assert adapter_key("base_model.model.lm_head.weight") == AdapterKey(
        "lm_head.weight", "lm_head", "modules_to_save"
    )
    assert adapter_key("base_model.model.model.embed_tokens.lora_embedding_B") == AdapterKey(
        "model.embed_tokens.weight", "model.embed_tokens", "lora_embedding_B"
    )
    assert place_of("base_model.model.model.layers.1.mlp.up_proj.lora_B.weight") == Place(
        1, "mlp", "up_proj"
    )


def test_llama_dora_magnitude_vectors(tmp_path):
    config = LoraConfig(r=2, use_dora=True, target_modules=["q_proj", "down_proj", "embed_tokens"])
    base, keys = save_adapter("llama", config, tmp_path)
    magnitudes = [k for k in keys if k.endswith("lora_magnitude_vector")]
    assert len(magnitudes) == 2 * LAYERS + 1
    check_all_map(keys, base)
    assert adapter_key(
        "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"
    ) == AdapterKey(
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.q_proj",
        "lora_magnitude_vector",
    )


def test_gpt2_conv1d_fan_in_fan_out_with_biases(tmp_path):
    config = LoraConfig(
        r=2,
        fan_in_fan_out=True,
        target_modules=["c_attn", "c_proj", "c_fc", "wte"],
        modules_to_save=["lm_head"],
        bias="all",
    )
    base, keys = save_adapter("gpt2", config, tmp_path)
    assert "base_model.model.transformer.h.0.attn.c_attn.base_layer.bias" in keys
    assert "base_model.model.transformer.h.0.ln_1.bias" in keys
    mapped = check_all_map(keys, base)
    by_key = dict(zip(keys, mapped, strict=True))
    assert by_key["base_model.model.transformer.h.1.mlp.c_proj.lora_A.weight"] == AdapterKey(
        "transformer.h.1.mlp.c_proj.weight", "transformer.h.1.mlp.c_proj", "lora_A"
    )
    assert by_key["base_model.model.transformer.h.0.attn.c_attn.base_layer.bias"] == AdapterKey(
        "transformer.h.0.attn.c_attn.bias", "transformer.h.0.attn.c_attn", "modules_to_save"
    )
    assert place_of("base_model.model.transformer.h.1.attn.c_proj.lora_B.weight") == Place(
        1, "attention", "c_proj"
    )


def test_gpt2_dora(tmp_path):
    config = LoraConfig(r=2, fan_in_fan_out=True, use_dora=True, target_modules=["c_attn"])
    base, keys = save_adapter("gpt2", config, tmp_path)
    assert len(check_all_map(keys, base)) == 3 * LAYERS


def test_lora_bias_maps_to_the_base_bias(tmp_path):
    config = LoraConfig(r=2, target_modules=["q_proj"], lora_bias=True)
    base, keys = save_adapter("qwen2", config, tmp_path)
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias" in keys
    check_all_map(keys, base)


def test_modules_to_save_snapshot_of_the_original_is_not_an_adapter_tensor(tmp_path):
    # bias="all" also picks up the wrapper's own copies of a saved module's bias.
    config = LoraConfig(r=2, target_modules=["c_attn"], modules_to_save=["ln_f"], bias="all")
    base, keys = save_adapter("gpt2", config, tmp_path)
    assert "base_model.model.transformer.ln_f.modules_to_save.bias" in keys
    assert "base_model.model.transformer.ln_f.original_module.bias" in keys
    check_all_map([k for k in keys if ".original_module." not in k], base)
    assert adapter_key("base_model.model.transformer.ln_f.original_module.bias") is None


def test_trainable_tokens_are_not_a_lora_part(tmp_path):
    config = LoraConfig(r=2, target_modules=["q_proj"], trainable_token_indices=[1, 2])
    base, keys = save_adapter("llama", config, tmp_path)
    delta = "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"
    assert delta in keys
    assert adapter_key(delta) is None
    assert place_of(delta) == Place(None, "embedding", "embed_tokens")
    check_all_map([k for k in keys if k != delta], base)


def test_in_memory_peft_names_map_too():
    model = tiny("llama")
    base = set(model.state_dict())
    config = LoraConfig(
        r=2, use_dora=True, target_modules=["v_proj", "embed_tokens"], modules_to_save=["lm_head"]
    )
    names = list(get_peft_model(model, config).state_dict())
    assert "base_model.model.model.layers.0.self_attn.v_proj.lora_A.default.weight" in names
    for name in names:
        found = adapter_key(name)
        if ".original_module." in name:
            assert found is None
            continue
        assert found is not None and found.base_tensor in base, name


@pytest.mark.parametrize("arch", ARCHS)
def test_plain_model_names_are_not_adapter_keys(arch, models_dir):
    assert [n for n in real_names(arch, models_dir) if adapter_key(n) is not None] == []


def test_other_tuners_are_not_lora_keys():
    for key in (
        "base_model.model.model.layers.0.self_attn.k_proj.ia3_l",
        "base_model.model.model.layers.0.self_attn.q_proj.hada_w1_a",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_E",
        "base_model.model.model.layers.0.self_attn.q_proj.ranknum",
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
        "prompt_embeddings",
    ):
        assert adapter_key(key) is None, key
    assert place_of("base_model.model.model.layers.0.self_attn.k_proj.ia3_l") == Place(
        0, "attention", "k_proj"
    )
