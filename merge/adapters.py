"""Merge several LoRA adapters of one base into one adapter PEFT loads.

Each adapter is read as its dense updates ΔWᵢ = sᵢ·Bᵢ·Aᵢ (zeros where it does
not target a module), so the ordinary planner resolves parameters per module.

- linear and task_arithmetic are linear in the ΔWᵢ: the result is exact as one
  adapter by concatenating the factors along the rank axis — A stacks the rows
  (cᵢ·sᵢ)·Aᵢ, B sets the Bᵢ side by side, with r = lora_alpha = Σ rᵢ (scale 1),
  so B·A = Σ cᵢ·sᵢ·Bᵢ·Aᵢ. (PEFT's add_weighted_adapter "linear" mixes A and B
  separately, which adds cross terms.)
- Every other task-vector method merges the dense ΔWᵢ against a zero base and
  factors the result back with a truncated SVD to `rank`; the relative
  Frobenius error of that truncation is reported per module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from graft.merge.errors import MergeConfigError
from graft.merge.inputs import ModelSource, TensorInfo, open_lora
from graft.merge.lora import LoraAdapter, LoraUpdate, fold

EXACT_METHODS = ("linear", "task_arithmetic")
UNSUPPORTED_METHODS = ("slerp", "model_stock", "passthrough")
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class Target:
    """A module some adapter changes: its ΔW's shape, and how PEFT lays the
    factors out (B·A is ΔWᵀ for embeddings and fan_in_fan_out layers)."""

    delta_shape: tuple[int, ...]
    transposed: bool
    embedding: bool

    @property
    def product_shape(self) -> tuple[int, int]:
        """Shape of B·A: (rows of B, columns of A)."""
        rows, cols = self.delta_shape
        return (cols, rows) if self.transposed else (rows, cols)

    def keys(self, target: str) -> tuple[str, str]:
        """The lora_A and lora_B keys PEFT saves for `target`."""
        module = PEFT_PREFIX + target.removesuffix(".weight")
        if self.embedding:
            return f"{module}.lora_embedding_A", f"{module}.lora_embedding_B"
        return f"{module}.lora_A.weight", f"{module}.lora_B.weight"


@dataclass
class DeltaSource:
    """One adapter seen as dense weight updates ΔW over every adapter's targets."""

    adapter: ModelSource
    lora: LoraAdapter
    targets: dict[str, Target]
    label: str

    @property
    def tensors(self) -> dict[str, TensorInfo]:
        return {n: TensorInfo("F32", t.delta_shape) for n, t in self.targets.items()}

    @property
    def artifact_id(self) -> str | None:
        return self.adapter.artifact_id

    @property
    def path(self) -> Path | None:
        return self.adapter.path

    @property
    def rank(self) -> int:
        """The largest rank among its modules."""
        return max(self.lora.shapes[u.a_key][0] for u in self.lora.updates.values() if u.a_key)

    def load(self, name: str) -> torch.Tensor:
        return self.load_f32(name)

    def load_f32(self, name: str) -> torch.Tensor:
        zeros = torch.zeros(self.targets[name].delta_shape)
        update = self.lora.updates.get(name)
        return fold(update, zeros, self.adapter.load_f32) if update else zeros

    def scaled_factors(self, name: str, coefficient: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(c·s·A, B) padded with zeros to `rank` (all zeros where it leaves
        `name` alone), so that B·A is c·s·B·A in PEFT's layout."""
        rows, cols = self.targets[name].product_shape
        update = self.lora.updates.get(name)
        if update is None:
            return torch.zeros(self.rank, cols), torch.zeros(rows, self.rank)
        assert update.a_key and update.b_key
        a = self.adapter.load_f32(update.a_key) * (coefficient * update.scale)
        b = self.adapter.load_f32(update.b_key)
        pad = self.rank - a.shape[0]  # rank_pattern gave this module a lower rank
        return (
            torch.cat([a, a.new_zeros(pad, cols)]),
            torch.cat([b, b.new_zeros(rows, pad)], 1),
        )

    def companion(self, rel: str) -> bytes | None:
        return self.adapter.companion(rel)

    def companions(self) -> list[str]:
        return self.adapter.companions()


@dataclass
class ZeroBase:
    """The base of a merge of weight updates: zeros, labelled as the real base."""

    targets: dict[str, Target]
    base: ModelSource | None
    label: str

    @property
    def tensors(self) -> dict[str, TensorInfo]:
        return {n: TensorInfo("F32", t.delta_shape) for n, t in self.targets.items()}

    @property
    def artifact_id(self) -> str | None:
        return self.base.artifact_id if self.base else None

    @property
    def path(self) -> Path | None:
        return self.base.path if self.base else None

    def load(self, name: str) -> torch.Tensor:
        return torch.zeros(self.targets[name].delta_shape)

    def load_f32(self, name: str) -> torch.Tensor:
        return self.load(name)

    def companion(self, rel: str) -> bytes | None:
        return None

    def companions(self) -> list[str]:
        return []


def delta_sources(adapters: list[ModelSource]) -> list[DeltaSource]:
    """The adapters as DeltaSources sharing one set of targets; checks that they
    can become one adapter (plain LoRA factors, agreeing shapes and layouts)."""
    loras = [open_lora(a) for a in adapters]
    targets: dict[str, Target] = {}
    for adapter, lora in zip(adapters, loras, strict=True):
        for name, update in lora.updates.items():
            if (
                update.kind not in ("linear", "embedding")
                or update.magnitude_key
                or update.source_key
            ):
                raise MergeConfigError(
                    f"{adapter.label}: {name} is changed by a {_what(update)}, which a merged "
                    "adapter cannot express",
                    "merge into a full model instead (write BASE+ADAPTER for each input)",
                )
            target = _target(update, lora)
            if targets.setdefault(name, target) != target:
                raise MergeConfigError(
                    f"{adapter.label}: {name}'s update is {list(target.delta_shape)}, another "
                    f"adapter's {list(targets[name].delta_shape)} (or laid out differently)",
                    "merge adapters of the same base model",
                )
    return [DeltaSource(a, lora, targets, a.label) for a, lora in zip(adapters, loras, strict=True)]


def _what(update: LoraUpdate) -> str:
    if update.magnitude_key:
        return "DoRA magnitude"
    if update.source_key or update.kind == "replace":
        return "full copy (modules_to_save)"
    return "LoRA bias"


def _target(update: LoraUpdate, lora: LoraAdapter) -> Target:
    assert update.a_key and update.b_key
    cols, rows = lora.shapes[update.a_key][1], lora.shapes[update.b_key][0]
    embedding = update.kind == "embedding"
    transposed = embedding or update.fan_in_fan_out
    return Target((cols, rows) if transposed else (rows, cols), transposed, embedding)


@dataclass(frozen=True)
class Factors:
    """One module's merged update as PEFT factors, and what the rank cut lost."""

    a: torch.Tensor  # [rank, columns of B·A]
    b: torch.Tensor  # [rows of B·A, rank]
    rel_error: float  # ‖ΔW − B·A‖_F / ‖ΔW‖_F (0 for exact merges)


def concatenated(sources: list[DeltaSource], name: str, coefficients: list[float]) -> Factors:
    """Σ cᵢ·sᵢ·Bᵢ·Aᵢ exactly, as one pair of factors of rank Σ rᵢ."""
    parts = [s.scaled_factors(name, c) for s, c in zip(sources, coefficients, strict=True)]
    return Factors(torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts], 1), 0.0)


def truncated(delta: torch.Tensor, target: Target, rank: int) -> Factors:
    """The best rank-`rank` factors of `delta` (Eckart–Young) at scale 1, padded
    with zeros when ΔW's rank is lower, so every module has the same rank."""
    product = delta.T if target.transposed else delta
    u, s, vh = torch.linalg.svd(product, full_matrices=False)
    keep = min(rank, s.shape[0])
    total, lost = float(s.square().sum()), float(s[keep:].square().sum())
    a, b = vh[:keep] * s[:keep, None], u[:, :keep]
    a = torch.cat([a, a.new_zeros(rank - keep, a.shape[1])])
    b = torch.cat([b, b.new_zeros(b.shape[0], rank - keep)], 1)
    return Factors(a.contiguous(), b.contiguous(), (lost / total) ** 0.5 if total > 0 else 0.0)


def adapter_config(sources: list[DeltaSource], rank: int, base: str | None) -> dict[str, Any]:
    """adapter_config.json of the merged adapter: the first input's, with one
    rank and scale 1 (lora_alpha = r) for every module."""
    config = dict(sources[0].lora.config)
    config.update(
        r=rank,
        lora_alpha=rank,
        use_rslora=False,
        use_dora=False,
        rank_pattern={},
        alpha_pattern={},
        target_modules=sorted({_leaf(t) for t in sources[0].targets}),
        modules_to_save=None,
        lora_bias=False,
    )
    if base is not None:
        config["base_model_name_or_path"] = base
    return config


def _leaf(target: str) -> str:
    return target.removesuffix(".weight").rsplit(".", 1)[-1]


def dumps(config: dict[str, Any]) -> bytes:
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
