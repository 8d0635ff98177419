"""What an artifact changed against another, tensor by tensor.

For two models: per same-named tensor, whether its bytes are identical (same
blob: nothing is read), the fraction of elements that changed, the relative
Frobenius change ‖W − Wp‖ / ‖Wp‖, max |ΔW|, and for 2-D tensors the stable
rank ‖ΔW‖²_F / ‖ΔW‖²_2 (few-direction edits such as abliteration or ROME are
≈ 1, SFT/RL deltas are large). Tensors whose shapes differ are "reshaped".

For a LoRA adapter against its base: per modified module, the effective
ΔW = s·B·A (s = alpha/r, or alpha/√r with rsLoRA) — its norm, exact rank and
stable rank come from the r×r core of the factors without forming ΔW; only
max |ΔW| and the changed fraction are accumulated over row blocks of ΔW.

Memory stays bounded by a few copies of the largest tensor compared.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from graft.lineage.adapter_config import lora_scale
from graft.lineage.names import Place, adapter_key, place_of
from graft.lineage.tensors import (
    FLOAT_DTYPES,
    TORCH_DTYPES,
    companion_json,
    load_f32,
    tensors_by_name,
)
from graft.registry import Manifest, Store, TensorRecord
from graft.registry.safetensors_header import DTYPE_BITS

Status = Literal["identical", "changed", "reshaped", "added", "removed"]
POWER_ITERATIONS = 12
ROW_BLOCK = 1024


@dataclass(frozen=True)
class TensorDelta:
    """How one base tensor differs between two artifacts."""

    tensor: str  # the tensor's name in the (base) model
    status: Status
    layer: int | None
    block: str
    module: str
    frac_changed: float | None = None
    rel_change: float | None = None  # ‖ΔW‖_F / ‖W_parent‖_F
    max_abs: float | None = None
    delta_norm: float | None = None  # ‖ΔW‖_F
    rank: int | None = None  # exact, for adapter deltas
    stable_rank: float | None = None  # 2-D tensors only
    old_shape: tuple[int, ...] | None = None
    new_shape: tuple[int, ...] | None = None


def compute_deltas(store: Store, child: Manifest, parent: Manifest) -> list[TensorDelta]:
    """Deltas of `child` against `parent`: an adapter's factors against its base
    model, else same-named tensors (two models, or two adapters' factors)."""
    if _is_adapter(store, child) and not _is_adapter(store, parent):
        return adapter_deltas(store, child, parent)
    return model_deltas(store, child, parent)


def _is_adapter(store: Store, m: Manifest) -> bool:
    return m.kind == "adapter" or companion_json(store, m, "adapter_config.json") is not None


def model_deltas(store: Store, child: Manifest, parent: Manifest) -> list[TensorDelta]:
    new, old = tensors_by_name(child), tensors_by_name(parent)
    out = []
    for name in sorted(new.keys() | old.keys()):
        place = place_of(name)
        t, p = new.get(name), old.get(name)
        if t is None or p is None:  # in one of the two only
            out.append(
                _at(place, name, "removed", old_shape=p.shape)
                if p
                else _at(place, name, "added", new_shape=t.shape if t else None)
            )
        elif t.blob == p.blob:
            out.append(_at(place, name, "identical", frac_changed=0.0, rel_change=0.0))
        elif t.shape != p.shape:
            out.append(_at(place, name, "reshaped", old_shape=p.shape, new_shape=t.shape))
        elif t.dtype not in FLOAT_DTYPES or p.dtype not in FLOAT_DTYPES:
            out.append(_at(place, name, "changed"))
        else:
            out.append(_dense_delta(name, place, store, t, p))
    return out


def _at(place: Place, tensor: str, status: Status, **stats: Any) -> TensorDelta:
    return TensorDelta(tensor, status, place.layer, place.block, place.module, **stats)


def _dense_delta(
    name: str, place: Place, store: Store, t: TensorRecord, p: TensorRecord
) -> TensorDelta:
    base = load_f32(store, p)
    delta = load_f32(store, t)
    if t.dtype != p.dtype and DTYPE_BITS[t.dtype] <= DTYPE_BITS[p.dtype]:
        # A child saved in a coarser dtype (a bf16 merge of fp32 models) differs
        # from its parent by rounding everywhere; only changes beyond it count.
        delta -= base.to(TORCH_DTYPES[t.dtype]).to(torch.float32)
    else:
        delta -= base
    changed = int(torch.count_nonzero(delta))
    if not changed:
        return _at(place, name, "identical", frac_changed=0.0, rel_change=0.0)
    norm = float(torch.linalg.vector_norm(delta))
    return _at(
        place,
        name,
        "changed",
        frac_changed=changed / delta.numel(),
        rel_change=_ratio(norm, float(torch.linalg.vector_norm(base))),
        max_abs=float(delta.abs().max()),
        delta_norm=norm,
        stable_rank=_stable_rank(delta, norm) if delta.dim() == 2 else None,
    )


def _stable_rank(delta: torch.Tensor, frobenius: float) -> float:
    """‖ΔW‖²_F / σ₁², σ₁ from power iteration on ΔWᵀΔW (deterministic start)."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(delta.shape[1], generator=g)
    sigma = 0.0
    for _ in range(POWER_ITERATIONS):
        u = delta @ v
        sigma = float(torch.linalg.vector_norm(u))
        if sigma == 0.0:
            return math.nan
        v = delta.T @ (u / sigma)
        v /= torch.linalg.vector_norm(v)
    sigma = float(torch.linalg.vector_norm(delta @ v))
    return frobenius**2 / sigma**2


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


# -- adapters -----------------------------------------------------------------


@dataclass
class _Factors:
    a: TensorRecord | None = None
    b: TensorRecord | None = None


def adapter_deltas(store: Store, adapter: Manifest, base: Manifest) -> list[TensorDelta]:
    config = companion_json(store, adapter, "adapter_config.json") or {}
    base_tensors = tensors_by_name(base)
    factors: dict[str, _Factors] = {}
    replaced: dict[str, TensorRecord] = {}  # modules_to_save: whole new tensors
    modules: dict[str, str] = {}
    for _, record in adapter.tensors:
        key = adapter_key(record.name)
        if key is None:
            continue
        modules[key.base_tensor] = key.module
        if key.part == "modules_to_save":
            replaced[key.base_tensor] = record
        elif key.part in ("lora_A", "lora_embedding_A"):
            factors.setdefault(key.base_tensor, _Factors()).a = record
        elif key.part in ("lora_B", "lora_embedding_B"):
            factors.setdefault(key.base_tensor, _Factors()).b = record
    out = []
    for tensor in sorted(factors.keys() | replaced.keys()):
        place = place_of(tensor)
        base_record = base_tensors.get(tensor)
        if tensor in replaced:
            if base_record is None:
                out.append(_at(place, tensor, "added", new_shape=replaced[tensor].shape))
            else:
                out.append(_dense_delta(tensor, place, store, replaced[tensor], base_record))
            continue
        f = factors[tensor]
        if f.a is None or f.b is None:
            continue  # a lone factor changes nothing
        scale = lora_scale(config, modules[tensor], rank=f.a.shape[0])
        out.append(_lora_delta(tensor, place, store, f.a, f.b, scale, base_record))
    return out


def _lora_delta(
    tensor: str,
    place: Place,
    store: Store,
    a_record: TensorRecord,
    b_record: TensorRecord,
    scale: float,
    base: TensorRecord | None,
) -> TensorDelta:
    a = load_f32(store, a_record)  # [r, in]  (embedding: [r, vocab])
    b = load_f32(store, b_record)  # [out, r] (embedding: [dim, r])
    # σ(B·A) = σ(R_B·R_Aᵀ) with B = Q_B·R_B and Aᵀ = Q_A·R_A: an r×r problem.
    core = torch.linalg.qr(b).R @ torch.linalg.qr(a.T).R.T
    sigma = torch.linalg.svdvals(core) * abs(scale)
    norm = float(torch.linalg.vector_norm(sigma))
    rank = int(torch.linalg.matrix_rank(core))
    if norm == 0.0:
        return _at(place, tensor, "identical", frac_changed=0.0, rel_change=0.0, rank=0)
    changed, max_abs = _blockwise_product_stats(a, b, scale)
    numel = a.shape[1] * b.shape[0]
    base_norm = float(torch.linalg.vector_norm(load_f32(store, base))) if base else 0.0
    return _at(
        place,
        tensor,
        "changed",
        frac_changed=changed / numel,
        rel_change=_ratio(norm, base_norm),
        max_abs=max_abs,
        delta_norm=norm,
        rank=rank,
        stable_rank=norm**2 / float(sigma[0]) ** 2,
    )


def _blockwise_product_stats(a: torch.Tensor, b: torch.Tensor, scale: float) -> tuple[int, float]:
    """Nonzero count and max |s·B·A| over row blocks, never holding all of ΔW."""
    changed, max_abs = 0, 0.0
    for rows in _blocks(b.shape[0]):
        part = (b[rows] @ a) * scale
        changed += int(torch.count_nonzero(part))
        max_abs = max(max_abs, float(part.abs().max()))
    return changed, max_abs


def _blocks(n: int) -> Iterable[slice]:
    return (slice(i, min(i + ROW_BLOCK, n)) for i in range(0, n, ROW_BLOCK))
