"""Fold a LoRA/DoRA adapter into its base model's tensors, one tensor at a time.

`read_adapter` turns adapter_config.json and the adapter file's header (tensor
names and shapes) into a plan: one `LoraUpdate` per base tensor the adapter
changes. `check_base` checks the plan against the base model's header, and
`fold` applies one update to one base tensor, so a whole model is never held in
memory. The results are those of PEFT's `merge_and_unload`, bit for bit in
fp32, because `fold` performs PEFT's operations in PEFT's order:

    linear      ΔW = (B @ A) * s, transposed before scaling for fan_in_fan_out
                (GPT-2's Conv1D stores W as [in, out]);  W' = W + ΔW
    embedding   ΔW = (B @ A)ᵀ * s  (A: [r, vocab], B: [dim, r]);  W' = W + ΔW
    DoRA        n = ‖W + ΔW‖ per output row (rows of W for Linear, columns of W
                for Conv1D and embeddings);  W' = (m / n) ⊙ (W + ΔW)
    bias        b' = b + bias_B * s  (lora_bias=True; the base needs a bias)
    replace     W' = the adapter's copy (modules_to_save, bias="all"/"lora_only",
                an embedding saved whole)

with s = alpha / r, or alpha / √r with use_rslora, per module after
rank_pattern / alpha_pattern (`lineage.adapter_config`). A tensor saved whole
next to factors for the same base tensor (PEFT saves a targeted embedding
whole) replaces the base tensor first; the factors then apply to the copy, as
PEFT loads it into the base layer before merging.

PEFT picks fan_in_fan_out by module type: never for torch.nn.Linear, always
for Conv1D, whatever the config says. A tensor's shape tells the two apart
unless it is square, so `fold` uses the configured orientation when the base
tensor fits it and the transposed one when only that fits; for square tensors
the config decides (PEFT saves True for adapters trained on Conv1D models).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from graft.lineage.adapter_config import DEFAULT_ALPHA, DEFAULT_R, lora_rank, lora_scale
from graft.lineage.names import AdapterKey, adapter_key
from graft.merge.errors import AdapterError

__all__ = ["LoraAdapter", "LoraUpdate", "UpdateKind", "check_base", "fold", "read_adapter"]

UpdateKind = Literal["linear", "embedding", "bias", "replace"]
Shape = tuple[int, ...]

# LoraConfig fields that select LoRA variants whose merge differs from plain
# LoRA/DoRA (or that PEFT cannot merge at all).
_UNSUPPORTED_VARIANTS = (
    "alora_invocation_tokens",
    "arrow_config",
    "kasa_config",
    "monteclora_config",
    "use_bdlora",
    "velora_config",
    "use_qalora",
)
# Initialisations that rewrite the base weights: a saved adapter applies to
# that rewritten base, not to the original one, unless PEFT converted it.
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "lora_ga", "loftq")


@dataclass(frozen=True)
class LoraUpdate:
    """How the adapter changes one base tensor.

    `a_key`, `b_key`, `magnitude_key` and `source_key` name adapter tensors:
    the factors (for "bias", `b_key` is the lora_B.bias vector and `a_key` is
    None), DoRA's magnitude vector, and a whole copy of the base tensor that
    replaces it (for "replace" it is the whole update; for the other kinds the
    factors then apply to that copy). `fan_in_fan_out` is the configured
    orientation; see the module docstring for how `fold` settles it.
    """

    target: str
    kind: UpdateKind
    scale: float
    a_key: str | None
    b_key: str | None
    magnitude_key: str | None = None
    fan_in_fan_out: bool = False
    source_key: str | None = None

    def adapter_keys(self) -> tuple[str, ...]:
        """The adapter tensors this update reads."""
        found = (self.source_key, self.a_key, self.b_key, self.magnitude_key)
        return tuple(k for k in found if k is not None)


@dataclass(frozen=True)
class LoraAdapter:
    """A LoRA/DoRA adapter read as a plan: what it does to each base tensor.

    `shapes` holds the shapes of the adapter tensors the updates use.
    """

    updates: dict[str, LoraUpdate]  # by target base tensor name
    config: dict[str, Any]  # adapter_config.json
    shapes: dict[str, Shape] = field(default_factory=dict)

    def adapter_keys(self) -> set[str]:
        """Every adapter tensor some update reads."""
        return {k for u in self.updates.values() for k in u.adapter_keys()}


# --- reading ------------------------------------------------------------------


def read_adapter(config: Mapping[str, Any], tensors: Mapping[str, Shape]) -> LoraAdapter:
    """The plan of the adapter described by `config` (adapter_config.json) and
    `tensors` (its file's tensor names → shapes).

    Raises AdapterError for what PEFT would refuse or fold differently: another
    peft_type, an unsupported LoRA variant, keys that are not LoRA/DoRA parts,
    a factor without its partner, ranks that disagree with r / rank_pattern,
    and parts that the config does not enable (DoRA magnitudes without
    use_dora, lora_B.bias without lora_bias).
    """
    _check_config(config)
    parts: dict[str, dict[str, str]] = {}  # base tensor → part → adapter key
    modules: dict[str, str] = {}
    for key in tensors:
        found = adapter_key(key)
        if found is None:
            if ".original_module." in f".{key}.":
                continue  # PEFT's untouched snapshot of a replaced module
            raise AdapterError(
                f"adapter tensor {key} is not a LoRA or DoRA part",
                "graft folds LoRA and DoRA adapters only; check that the file is one "
                "(IA3, LoHa, LoKr and other PEFT tuners cannot be folded)",
            )
        slot = _slot(found)
        got = parts.setdefault(found.base_tensor, {})
        if slot in got:
            raise AdapterError(
                f"adapter tensors {got[slot]} and {key} both modify {found.base_tensor}",
                "save the adapter with a single adapter name (PEFT's save_pretrained does)",
            )
        got[slot] = key
        modules[found.base_tensor] = found.module

    updates: dict[str, LoraUpdate] = {}
    for target in sorted(parts):
        update = _update(config, target, modules[target], parts[target], tensors)
        updates[target] = update
    for update in updates.values():
        if update.kind == "bias":
            weight = _weight_of(update.target)
            if updates.get(weight) is None or updates[weight].kind != "linear":
                raise AdapterError(
                    f"adapter tensor {update.b_key} has no lora_A/lora_B weights beside it",
                    "a LoRA bias belongs to a lora_B layer; the adapter file looks incomplete",
                )
    used = {k for u in updates.values() for k in u.adapter_keys()}
    return LoraAdapter(updates, dict(config), {k: tuple(tensors[k]) for k in sorted(used)})


def _check_config(config: Mapping[str, Any]) -> None:
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise AdapterError(
            f"adapter_config.json has peft_type {peft_type!r}, not 'LORA'",
            "graft folds LoRA and DoRA adapters only",
        )
    for name in _UNSUPPORTED_VARIANTS:
        if config.get(name):
            raise AdapterError(
                f"adapter_config.json sets {name}, a LoRA variant graft cannot fold",
                "merge it with PEFT, or use a plain LoRA/DoRA adapter",
            )
    if config.get("target_parameters"):
        raise AdapterError(
            "adapter_config.json sets target_parameters (LoRA on bare parameters, e.g. MoE "
            "experts), which graft cannot fold",
            "merge it with PEFT's merge_and_unload",
        )
    if config.get("layer_replication"):
        raise AdapterError(
            "adapter_config.json sets layer_replication, which changes the base model's layers",
            "merge it with PEFT's merge_and_unload",
        )
    init = str(config.get("init_lora_weights", True)).lower()
    if init.startswith(_BASE_REWRITING_INITS):
        raise AdapterError(
            f"adapter_config.json has init_lora_weights {config.get('init_lora_weights')!r}, "
            "which rewrites the base weights, so the adapter does not apply to the original base",
            "save it with PEFT's path_initial_model_for_weight_conversion to get an adapter "
            "for the original base",
        )
    if config.get("use_dora") and config.get("lora_bias"):
        raise AdapterError(
            "adapter_config.json sets both use_dora and lora_bias, which PEFT does not support",
            "fix the adapter's config",
        )
    ranks = [("r", config.get("r", DEFAULT_R))]
    alphas = [("lora_alpha", config.get("lora_alpha", DEFAULT_ALPHA))]
    for field_name, found in (("rank_pattern", ranks), ("alpha_pattern", alphas)):
        patterns = config.get(field_name) or {}
        if not isinstance(patterns, Mapping):
            raise AdapterError(
                f"adapter_config.json has {field_name} {patterns!r}, not a mapping",
                "fix the adapter's config",
            )
        for pattern, value in patterns.items():
            try:
                re.compile(rf"(.*\.)?({pattern})$")
            except re.error as e:
                raise AdapterError(
                    f"adapter_config.json's {field_name} key {pattern!r} is not a regular "
                    f"expression ({e})",
                    "fix the adapter's config",
                ) from e
            found.append((f"{field_name}[{pattern!r}]", value))
    for name, value in ranks:
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise AdapterError(
                f"adapter_config.json has {name} {value!r}, not a positive integer",
                "fix the adapter's config",
            )
    for name, value in alphas:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise AdapterError(
                f"adapter_config.json has {name} {value!r}, not a number",
                "fix the adapter's config",
            )


def _slot(key: AdapterKey) -> str:
    """Which role a key plays for its base tensor."""
    if key.part == "modules_to_save":
        return "source"
    return key.part


def _weight_of(bias_target: str) -> str:
    return bias_target.removesuffix(".bias") + ".weight"


def _update(
    config: Mapping[str, Any],
    target: str,
    module: str,
    slots: dict[str, str],
    shapes: Mapping[str, Shape],
) -> LoraUpdate:
    source = slots.get("source")
    linear = "lora_A" in slots or ("lora_B" in slots and not target.endswith(".bias"))
    embedding = "lora_embedding_A" in slots or "lora_embedding_B" in slots
    if linear and embedding:
        raise AdapterError(
            f"the adapter has both lora_A/lora_B and lora_embedding_A/B for {target}",
            "the adapter file is inconsistent; re-save it with PEFT",
        )

    if "lora_B" in slots and target.endswith(".bias"):
        bias_key = slots["lora_B"]
        if not config.get("lora_bias"):
            raise AdapterError(
                f"adapter tensor {bias_key} is a LoRA bias, but adapter_config.json does not set "
                "lora_bias",
                "set lora_bias: true in adapter_config.json, or drop the tensor",
            )
        if len(shapes[bias_key]) != 1:
            raise AdapterError(
                f"adapter tensor {bias_key} has shape {list(shapes[bias_key])}, not a vector",
                "the adapter file is damaged",
            )
        rank = lora_rank(config, module)
        return LoraUpdate(
            target,
            "bias",
            lora_scale(config, module, rank),
            None,
            bias_key,
            source_key=source,
        )

    if not linear and not embedding:
        if "lora_magnitude_vector" in slots:
            raise AdapterError(
                f"adapter tensor {slots['lora_magnitude_vector']} has no lora_A/lora_B beside it",
                "a DoRA magnitude needs the LoRA factors of the same module",
            )
        assert source is not None  # every slot is one of the above
        return LoraUpdate(target, "replace", 1.0, None, None, source_key=source)

    a_part, b_part = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A", "lora_B")
    a_key, b_key = slots.get(a_part), slots.get(b_part)
    if a_key is None or b_key is None:
        have = b_key if a_key is None else a_key
        raise AdapterError(
            f"adapter tensor {have} has no {b_part if a_key else a_part} partner",
            "the adapter file is incomplete; re-save it with PEFT",
        )
    a_shape, b_shape = tuple(shapes[a_key]), tuple(shapes[b_key])
    if len(a_shape) != 2 or len(b_shape) != 2:
        raise AdapterError(
            f"adapter tensors {a_key} {list(a_shape)} and {b_key} {list(b_shape)} are not both "
            "matrices",
            "graft folds LoRA on Linear, Conv1D and Embedding layers only",
        )
    rank = lora_rank(config, module)
    if a_shape[0] != rank or b_shape[1] != rank:
        raise AdapterError(
            f"adapter tensors {a_key} {list(a_shape)} and {b_key} {list(b_shape)} do not have "
            f"rank {rank}, which adapter_config.json gives {module} (r / rank_pattern)",
            "the config does not belong to this adapter file; use the config saved with it",
        )

    magnitude = slots.get("lora_magnitude_vector")
    if magnitude is not None:
        if not config.get("use_dora"):
            raise AdapterError(
                f"adapter tensor {magnitude} is a DoRA magnitude, but adapter_config.json does "
                "not set use_dora",
                "set use_dora: true in adapter_config.json, or drop the tensor",
            )
        if tuple(shapes[magnitude]) != (b_shape[0],):
            raise AdapterError(
                f"adapter tensor {magnitude} has shape {list(shapes[magnitude])}, but {b_key} "
                f"has {b_shape[0]} output rows",
                "the adapter file is inconsistent; re-save it with PEFT",
            )
    elif config.get("use_dora"):
        raise AdapterError(
            f"adapter_config.json sets use_dora, but {target} has no lora_magnitude_vector",
            "the adapter file is incomplete; re-save it with PEFT",
        )
    return LoraUpdate(
        target,
        "embedding" if embedding else "linear",
        lora_scale(config, module, rank),
        a_key,
        b_key,
        magnitude_key=magnitude,
        fan_in_fan_out=bool(config.get("fan_in_fan_out")) and not embedding,
        source_key=source,
    )


# --- checking against the base --------------------------------------------------


def check_base(adapter: LoraAdapter, base_shapes: Mapping[str, Shape]) -> None:
    """Raise AdapterError unless every update's target is in the base model
    (`base_shapes`: its tensor names → shapes) with a shape the update fits."""
    for target, update in sorted(adapter.updates.items()):
        shape = base_shapes.get(target)
        if shape is None:
            if update.kind == "bias":
                raise AdapterError(
                    f"the adapter trains a bias for {target.removesuffix('.bias')} "
                    f"({update.b_key}), but the base model's module has no bias",
                    "PEFT cannot merge lora_bias into a layer without bias either; "
                    "use the base model the adapter was trained on",
                )
            raise AdapterError(
                f"the adapter modifies {target}, which the base model does not have",
                "use the base model the adapter was trained on",
            )
        shape = tuple(shape)
        if update.source_key is not None and update.source_key in adapter.shapes:
            _check_source(update, adapter.shapes[update.source_key], shape)
        if update.kind == "bias" and update.b_key in adapter.shapes:
            _check_bias(update, adapter.shapes[update.b_key], shape)
        elif update.kind in ("linear", "embedding"):
            a_shape = adapter.shapes.get(update.a_key or "")
            b_shape = adapter.shapes.get(update.b_key or "")
            if a_shape is not None and b_shape is not None:
                _transposed(update, shape, tuple(a_shape), tuple(b_shape))


def _check_source(update: LoraUpdate, source: Shape, base: Shape) -> None:
    if tuple(source) != tuple(base):
        raise AdapterError(
            f"adapter tensor {update.source_key} has shape {list(source)}, but the base "
            f"model's {update.target} has {list(base)}",
            "use the base model the adapter was trained on (a resized vocabulary needs the "
            "resized base)",
        )


def _check_bias(update: LoraUpdate, bias: Shape, base: Shape) -> None:
    if tuple(bias) != tuple(base):
        raise AdapterError(
            f"adapter tensor {update.b_key} has shape {list(bias)}, but the base model's "
            f"{update.target} has {list(base)}",
            "use the base model the adapter was trained on",
        )


def _transposed(update: LoraUpdate, base: Shape, a: Shape, b: Shape) -> bool:
    """Whether ΔW = B·A is transposed to fit the base tensor; AdapterError if
    neither orientation PEFT could have used fits."""
    rows, cols = b[0], a[1]
    if update.kind == "embedding":
        if base == (cols, rows):
            return True
        expected = f"[{cols}, {rows}] (vocabulary × dimension)"
    else:
        natural, flipped = (cols, rows), (rows, cols)
        if not update.fan_in_fan_out:
            natural, flipped = flipped, natural
        if base == natural:
            return update.fan_in_fan_out
        if base == flipped:
            # PEFT ignores a fan_in_fan_out that does not fit the layer type.
            return not update.fan_in_fan_out
        expected = f"[{rows}, {cols}] or [{cols}, {rows}]"
    raise AdapterError(
        f"adapter tensors {update.a_key} {list(a)} and {update.b_key} {list(b)} do not fit the "
        f"base model's {update.target} {list(base)}, which should be {expected}",
        "use the base model the adapter was trained on",
    )


# --- folding ------------------------------------------------------------------------


def fold(
    update: LoraUpdate, base: torch.Tensor, get: Callable[[str], torch.Tensor]
) -> torch.Tensor:
    """`base` (the target tensor) with `update` applied, in fp32.

    `get(key)` returns an adapter tensor in fp32. For "replace" the result is
    the tensor `get` returned, and `base` serves only to check the shape.
    Raises AdapterError when shapes do not fit, naming the tensors and shapes.
    """
    start = _f32(base)
    if update.source_key is not None:
        source = _f32(get(update.source_key))
        _check_source(update, tuple(source.shape), tuple(start.shape))
        start = source
    if update.kind == "replace":
        return start
    if update.kind == "bias":
        assert update.b_key is not None
        bias = _f32(get(update.b_key))
        _check_bias(update, tuple(bias.shape), tuple(start.shape))
        return start + bias * update.scale
    assert update.a_key is not None and update.b_key is not None
    a, b = _f32(get(update.a_key)), _f32(get(update.b_key))
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
        raise AdapterError(
            f"adapter tensors {update.a_key} {list(a.shape)} and {update.b_key} "
            f"{list(b.shape)} are not LoRA factors of one rank",
            "the adapter file is damaged; re-save it with PEFT",
        )
    transposed = _transposed(update, tuple(start.shape), tuple(a.shape), tuple(b.shape))
    # PEFT's get_delta_weight: product, then transpose, then scale.
    delta = b @ a
    if transposed:
        delta = delta.T
    delta = delta * update.scale
    if update.magnitude_key is None:
        return start + delta
    magnitude = _f32(get(update.magnitude_key))
    if tuple(magnitude.shape) != (b.shape[0],):
        raise AdapterError(
            f"adapter tensor {update.magnitude_key} has shape {list(magnitude.shape)}, but "
            f"{update.b_key} has {b.shape[0]} output rows",
            "the adapter file is inconsistent; re-save it with PEFT",
        )
    merged = start + delta
    # DoRA: the norm is taken per output row of W + ΔW. PEFT sums the
    # transposed views for Conv1D and embeddings; doing the same keeps the
    # reduction running over the same memory layout, hence the same bits.
    rows = start.T + delta.T if transposed else merged
    norm = torch.linalg.norm(rows, dim=1)
    factor = (magnitude / norm).view(-1, 1)
    if transposed:
        factor = factor.T
    return factor * merged


def _f32(t: torch.Tensor) -> torch.Tensor:
    """fp32 and contiguous, as PEFT's parameters are (the layout decides the
    summation order of matmul and norm, hence the last bits)."""
    return t.to(torch.float32).contiguous()
