"""Tensor names: where a tensor sits in a transformer, and what a PEFT key modifies.

`place_of` reads a state-dict name (Llama, Mistral, Qwen2, Gemma 1-3, Phi-3,
GPT-2, GPT-NeoX, Falcon, Mixtral and Qwen2-MoE, in both the in-memory and the
saved layouts) into a layer index, a coarse block and the module's own name.
Unknown architectures fall back to keyword guesses, so the answer is always a
`Place`, never an exception: a name is data read from someone else's file.

`adapter_key` maps a key of a saved PEFT LoRA/DoRA file back onto the base
model's tensor. The forms below are what PEFT's `save_pretrained` writes (the
adapter name, e.g. "default", is dropped on save; PEFT's in-memory forms that
keep it are accepted as well):

    base_model.model.<module>.lora_A.weight            rank x in
    base_model.model.<module>.lora_B.weight            out x rank
    base_model.model.<module>.lora_B.bias              only with lora_bias=True
    base_model.model.<module>.lora_embedding_A         no ".weight" suffix
    base_model.model.<module>.lora_embedding_B         no ".weight" suffix
    base_model.model.<module>.lora_magnitude_vector    DoRA; no ".weight" suffix
    base_model.model.<tensor>                           a full copy: modules_to_save,
                                                        bias="all"/"lora_only",
                                                        or an embedding saved whole
    base_model.model.<module>.base_layer.<param>       the same, for a wrapped layer
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, get_args

Block = Literal["embedding", "attention", "mlp", "norm", "head", "other"]
BLOCKS: tuple[str, ...] = get_args(Block)

AdapterPart = Literal[
    "lora_A",
    "lora_B",
    "lora_embedding_A",
    "lora_embedding_B",
    "lora_magnitude_vector",
    "modules_to_save",
]
ADAPTER_PARTS: tuple[str, ...] = get_args(AdapterPart)


@dataclass(frozen=True)
class Place:
    """Where a tensor sits in a transformer.

    `layer` is the index in the layer stack (None for embeddings, the final
    norm, the head, ...); `module` is the module's own attribute name as it
    appears in the tensor name, so GPT-2's attn.c_proj and mlp.c_proj are both
    "c_proj", told apart by `block`.
    """

    layer: int | None
    block: Block
    module: str


@dataclass(frozen=True)
class AdapterKey:
    """A key of a saved PEFT adapter file, mapped onto the base model.

    `base_tensor` is the base model's tensor it modifies (for a full copy, the
    tensor it replaces); `module` is the module path that PEFT's
    rank_pattern/alpha_pattern keys match against.
    """

    base_tensor: str
    module: str
    part: AdapterPart


# --- place_of ---------------------------------------------------------------

# Containers whose next component is the layer index: Llama-likes and NeoX use
# "layers", GPT-2 and Falcon "h", MPT "blocks", BERT "layer", T5 "block", CLIP
# "resblocks". Keep in step with `_LAYER`.
_STACKS = frozenset({"layers", "layer", "h", "blocks", "block", "resblocks"})

# Trailing components that name a parameter or buffer rather than a module:
# the module is the component before them. Besides weight/bias this covers
# rotary and Gemma buffers, quantized checkpoints (GPTQ, bitsandbytes, FP8)
# and the parameters of PEFT tuners that `adapter_key` does not map.
_LEAVES = frozenset(
    {
        "weight",
        "bias",
        "inv_freq",
        "original_inv_freq",
        "embed_scale",
        "masked_bias",
        "qweight",
        "qzeros",
        "scales",
        "g_idx",
        "weight_scale",
        "weight_scale_inv",
        "input_scale",
        "absmax",
        "quant_map",
        "nested_absmax",
        "nested_quant_map",
        "SCB",
        "weight_format",
        "ranknum",
    }
)
_LEAF_PREFIXES = (
    "quant_state",
    "lora_",
    "ia3_",
    "hada_",
    "lokr_",
    "vera_",
    "oft_",
    "boft_",
    "fourierft_",
    "vblora_",
    "trainable_tokens",
)

# PEFT wrapper components that sit between a module and its parameters.
_PEFT_WRAPPERS = frozenset({"base_layer", "original_module", "token_adapter"})

# Module names whose block is certain wherever they appear. Names that are
# ambiguous on their own (GPT-2's c_proj, NeoX's dense, BART's out_proj, T5's
# wo, a MoE router's gate) are left to their container.
_EXACT: dict[str, Block] = {
    **dict.fromkeys(
        (
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "qkv_proj",
            "kv_proj",
            "c_attn",
            "query_key_value",
            "query",
            "key",
            "value",
            "Wqkv",
            "wq",
            "wk",
            "wv",
            "wqkv",
            "q_a_proj",
            "q_b_proj",
            "kv_a_proj_with_mqa",
            "kv_b_proj",
        ),
        "attention",
    ),
    **dict.fromkeys(
        (
            "gate_proj",
            "up_proj",
            "down_proj",
            "gate_up_proj",
            "c_fc",
            "dense_h_to_4h",
            "dense_4h_to_h",
            "fc1",
            "fc2",
            "fc_in",
            "fc_out",
            "w1",
            "w2",
            "w3",
            "wi",
            "wi_0",
            "wi_1",
            "router",
            "shared_expert_gate",
        ),
        "mlp",
    ),
    **dict.fromkeys(
        (
            "embed_tokens",
            "wte",
            "wpe",
            "word_embeddings",
            "embed_in",
            "tok_embeddings",
            "embed_positions",
            "position_embeddings",
            "token_type_embeddings",
        ),
        "embedding",
    ),
    # GPT-NeoX checkpoints call the head embed_out; it must not read as an embedding.
    "lm_head": "head",
    "embed_out": "head",
}

# Names that mean something only outside the layer stack: Meta's original
# Llama format calls the head "output", while BERT layers have "output" blocks.
_TOP_LEVEL: dict[str, Block] = {
    "output": "head",
    "score": "head",
    "classifier": "head",
    "shared": "embedding",
}

_ATTENTION_TOKENS = frozenset(
    {"q", "k", "v", "qkv", "kv", "query", "key", "value", "wq", "wk", "wv", "wqkv"}
)
_MLP_TOKENS = frozenset(
    {
        "fc",
        "fc1",
        "fc2",
        "gate",
        "up",
        "down",
        "w1",
        "w2",
        "w3",
        "wi",
        "router",
        "moe",
        "intermediate",
        "4h",
        "densereludense",
    }
)
_EMBEDDING_TOKENS = frozenset({"wte", "wpe", "emb", "rotary", "rope"})


def _keyword_block(part: str) -> Block | None:
    """Guess a block from one name component, most specific reading first."""
    low = part.lower()
    tokens = low.split("_")
    # Norms first: "attention_norm", "ffn_norm", "word_embeddings_layernorm"
    # are norms even though they name another block too.
    if "norm" in low or tokens[0] in ("ln", "ln1", "ln2", "lnf"):
        return "norm"
    if "head" in tokens:
        return "head"
    if "embed" in low or any(t in _EMBEDDING_TOKENS for t in tokens):
        return "embedding"
    if "attn" in low or "attention" in low or any(t in _ATTENTION_TOKENS for t in tokens):
        return "attention"
    if (
        "mlp" in low
        or "ffn" in low
        or "expert" in low
        or "feed_forward" in low
        or "feedforward" in low
        or any(t in _MLP_TOKENS for t in tokens)
    ):
        return "mlp"
    return None


def _is_leaf(part: str) -> bool:
    return part in _LEAVES or part.startswith(_LEAF_PREFIXES) or part.endswith("_inv_freq")


# The layer index: a stack container followed by an integer component. The
# first one in a name wins, so T5's block.0.layer.1 is layer 0.
_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block|resblocks)\.([0-9]+)(?=\.|$)")
_INDEX = "#"  # stands in for the layer index, so every layer shares one parse


@lru_cache(maxsize=1 << 17)
def place_of(tensor_name: str) -> Place:
    """Where `tensor_name` sits; PEFT adapter keys answer for their base tensor."""
    name = tensor_name
    if name.startswith(_PEFT_PREFIX) or "lora_" in name or "modules_to_save" in name:
        adapter = adapter_key(name)
        name = adapter.base_tensor if adapter else name.removeprefix(_PEFT_PREFIX)
    found = _LAYER.search(name)
    if found is None:
        block, module = _read_shape(name)
        return Place(None, block, module)
    index = found.group(1)
    block, module = _read_shape(f"{name[: found.start(1)]}{_INDEX}{name[found.end(1) :]}")
    return Place(int(index), block, index if module == _INDEX else module)


@lru_cache(maxsize=1 << 14)
def with_layer(tensor_name: str, layer: int) -> str:
    """`tensor_name` moved to layer `layer` of the stack (unchanged outside it)."""
    found = _LAYER.search(tensor_name)
    if found is None:
        return tensor_name
    return f"{tensor_name[: found.start(1)]}{layer}{tensor_name[found.end(1) :]}"


def _read_shape(shape: str) -> tuple[Block, str]:
    """Block and module of a name whose layer index, if any, is `_INDEX`."""
    parts = [p for p in shape.split(".") if p not in _PEFT_WRAPPERS]
    if not parts:
        return "other", ""
    end = len(parts) - 1
    while end > 0 and _is_leaf(parts[end]):
        end -= 1
    module = parts[end]
    containers, top_level = parts[:end], True
    for i in range(end):
        if parts[i + 1] == _INDEX and parts[i] in _STACKS:
            containers, top_level = parts[i + 2 : end], False
            break
    return _block_of(module, containers, top_level), module


def _block_of(module: str, containers: list[str], top_level: bool) -> Block:
    exact = _EXACT.get(module)
    if exact is not None:
        return exact
    if top_level and module in _TOP_LEVEL:
        return _TOP_LEVEL[module]
    own = _keyword_block(module)
    if own == "norm":
        # A norm inside attention (Gemma 3's q_norm) is still a norm.
        return own
    # The innermost container that says something decides ambiguous names:
    # attn.c_proj vs mlp.c_proj, attention.dense vs mlp.dense_4h_to_h.
    for container in reversed(containers):
        found = _keyword_block(container)
        if found is not None:
            return found
    return own or "other"


# --- adapter_key ------------------------------------------------------------

_PEFT_PREFIX = "base_model.model."

# Components that mark a key as PEFT's. Keys carrying one that `adapter_key`
# cannot map (IA3, LoHa, AdaLoRA's lora_E, trainable tokens, ...) return None
# rather than being read as a full copy of a base tensor.
_OTHER_PEFT = re.compile(
    r"(?:^|\.)(?:lora_|ia3_|hada_|lokr_|vera_|oft_|boft_|fourierft_|vblora_"
    r"|trainable_tokens|token_adapter|ranknum|prompt_)"
)
_MARKER = re.compile(
    r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector"
    r"|modules_to_save|original_module)(?:\.|$)"
)

# Marker → part; original_module is absent on purpose (it maps to None).
_PARTS: dict[str, AdapterPart] = {
    "lora_A": "lora_A",
    "lora_B": "lora_B",
    "lora_embedding_A": "lora_embedding_A",
    "lora_embedding_B": "lora_embedding_B",
    "lora_magnitude_vector": "lora_magnitude_vector",
    "modules_to_save": "modules_to_save",
}


@lru_cache(maxsize=1 << 17)
def adapter_key(key: str) -> AdapterKey | None:
    """None when `key` is not a PEFT adapter key (e.g. a plain model tensor).

    Also None for PEFT's snapshot of a replaced module (`original_module`) and
    for tuners other than LoRA/DoRA, whose parts have no `AdapterPart`.
    """
    prefixed = key.startswith(_PEFT_PREFIX)
    if not prefixed and "lora_" not in key and "modules_to_save" not in key:
        return None
    rest = key.removeprefix(_PEFT_PREFIX)
    if "base_layer" in rest:
        # A wrapped layer keeps its base parameters under base_layer; stacked
        # wrappers (MoE target_parameters) nest it, so drop every occurrence.
        rest = ".".join(p for p in rest.split(".") if p != "base_layer")

    found = _MARKER.search(rest)
    if found is None:
        # Without a marker, only a prefixed key is PEFT's: a full copy of a
        # base tensor (modules_to_save, saved biases, saved embeddings).
        module, dot, _ = rest.rpartition(".")
        if not prefixed or not dot or not module or _OTHER_PEFT.search(rest):
            return None
        return AdapterKey(rest, module, "modules_to_save")

    module, part = rest[: found.start()], _PARTS.get(found.group(1))
    tail = rest[found.end() :].split(".") if found.end() < len(rest) else []
    # PEFT's in-memory forms put the adapter name right after the marker.
    if part in ("lora_A", "lora_B"):
        allowed = ("weight", "bias") if part == "lora_B" else ("weight",)
        if len(tail) in (1, 2) and tail[-1] in allowed:
            return AdapterKey(f"{module}.{tail[-1]}", module, part)
    elif part in ("lora_embedding_A", "lora_embedding_B"):
        if len(tail) <= 1:
            return AdapterKey(f"{module}.weight", module, part)
    elif part == "lora_magnitude_vector":
        if len(tail) <= 1 or (len(tail) == 2 and tail[1] == "weight"):
            return AdapterKey(f"{module}.weight", module, part)
    elif part == "modules_to_save" and tail:
        # One component left is a parameter (bias="all" picks these up);
        # more means an adapter name and then the parameter path.
        inner = tail if len(tail) == 1 else tail[1:]
        return AdapterKey(f"{module}.{'.'.join(inner)}", module, "modules_to_save")
    return None


def base_tensor_of(name: str) -> str:
    """The base model's tensor `name` is, or modifies when it is an adapter key."""
    key = adapter_key(name)
    return key.base_tensor if key else name
