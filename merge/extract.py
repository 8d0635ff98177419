"""Extraction: a fine-tune's change as a LoRA adapter of its base — the inverse of
fold-in, and a way to share a fine-tune in a few MB.

Each changed matrix's ΔW = W_tuned − W_base is cut to its best rank-r approximation
(Eckart–Young: the truncated SVD, randomized — seeded — for large matrices) and written as PEFT
factors at scale 1 (lora_alpha = r). One matrix is in memory at a time, in fp32.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from graft.lineage.names import place_of
from graft.merge.adapters import Factors, Target, dumps, truncated
from graft.merge.errors import MergeCancelled, MergeConfigError, MergeInputError
from graft.merge.executor import building
from graft.merge.heap import trim_heap
from graft.merge.inputs import ModelSource
from graft.merge.writer import PlannedTensor, ShardWriter

ADAPTER_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
RANDOMIZED_ABOVE = 1 << 20  # elements: a larger ΔW's SVD is randomized (torch.svd_lowrank)
_OVERSAMPLE = 8  # extra directions the randomized SVD looks at beyond the rank
_POWER_STEPS = 4


@dataclass(frozen=True)
class Extracted:
    """What `extract_lora` wrote: the folder and each module's relative error
    ‖ΔW − B·A‖_F / ‖ΔW‖_F."""

    out_dir: Path
    rank: int
    errors: dict[str, float]


def extract_lora(
    base: ModelSource,
    tuned: ModelSource,
    out_dir: Path,
    *,
    rank: int,
    modules: Sequence[str] = (),
    embeddings: bool = False,
    base_name: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> Extracted:
    """Write into `out_dir` (absent or empty) a LoRA adapter of rank `rank` whose
    update is the best rank-`rank` approximation of `tuned − base` for every changed
    linear weight (only those whose last name part is in `modules`, when given; the
    embeddings and the LM head too with `embeddings`)."""
    if rank < 1:
        raise MergeConfigError(f"--rank {rank}: must be at least 1", "give a positive rank")
    names = _candidates(base, tuned, set(modules), embeddings)
    tensors: dict[str, torch.Tensor] = {}
    errors: dict[str, float] = {}
    for done, name in enumerate(names):
        if should_cancel and should_cancel():
            raise MergeCancelled("extraction cancelled", "nothing was written or registered")
        delta = tuned.load_f32(name) - base.load_f32(name)
        if on_progress:
            on_progress(done + 1, len(names))
        if not delta.any():
            continue
        module = name.removesuffix(".weight")
        embedding = place_of(name).block == "embedding"
        rows, cols = delta.shape
        target = Target((cols, rows) if embedding else (rows, cols), embedding, embedding)
        factors = _factors(delta, target, rank)
        a_key, b_key = (
            ("lora_embedding_A", "lora_embedding_B")
            if embedding
            else (
                "lora_A.weight",
                "lora_B.weight",
            )
        )
        tensors[f"{PEFT_PREFIX}{module}.{a_key}"] = factors.a
        tensors[f"{PEFT_PREFIX}{module}.{b_key}"] = factors.b
        errors[module] = factors.rel_error
        del delta, factors
        trim_heap()  # what decoding the inputs freed: else the heap grows matrix by matrix
    if not errors:
        raise MergeInputError(
            "no weight the extraction looks at differs between the two models",
            "check --base and the fine-tune (and --modules, --embeddings)",
        )
    config = _config(sorted({m.rsplit(".", 1)[-1] for m in errors}), rank, base_name)
    metadata = {"format": "pt", "graft.extract": json.dumps(errors, sort_keys=True)}
    planned = [
        PlannedTensor(name, "F32", tuple(t.shape), t.numel() * 4) for name, t in tensors.items()
    ]
    with building(out_dir) as work:
        # graft's writer: a header in a fixed order, so equal inputs give equal bytes
        writer = ShardWriter(work, planned, 1 << 62, metadata, single_name=ADAPTER_FILE)
        for name, tensor in tensors.items():
            writer.write(name, tensor)
        writer.finish({})
        (work / "adapter_config.json").write_bytes(dumps(config))
    return Extracted(out_dir, rank, errors)


def _candidates(
    base: ModelSource, tuned: ModelSource, modules: set[str], embeddings: bool
) -> list[str]:
    """The 2-D float weights both models hold, of the same shape, that are asked for."""
    shared = []
    for name, info in tuned.tensors.items():
        other = base.tensors.get(name)
        if other is None or other.shape != info.shape or len(info.shape) != 2:
            continue
        if info.is_float and other.is_float and name.endswith(".weight"):
            shared.append(name)
    if not shared:
        raise MergeInputError(
            "the two models share no 2-D weight of the same shape to extract from",
            "check that --base is the model the fine-tune was trained from",
        )
    leaves = {name: name.removesuffix(".weight").rsplit(".", 1)[-1] for name in shared}
    out = [
        name
        for name in shared
        if (embeddings or place_of(name).block not in ("embedding", "head"))
        and (not modules or leaves[name] in modules)
    ]
    if not out:
        raise MergeInputError(
            f"--modules {','.join(sorted(modules))}: no such module among the weights",
            f"choose among: {', '.join(sorted(set(leaves.values())))}",
        )
    return sorted(out)


def _factors(delta: torch.Tensor, target: Target, rank: int) -> Factors:
    """The best rank-`rank` factors of ΔW: exact SVD, or randomized when it is large
    (its error from the norms: the kept part is an orthogonal projection of ΔW)."""
    if delta.numel() <= RANDOMIZED_ABOVE or rank + _OVERSAMPLE >= min(delta.shape):
        return truncated(delta, target, rank)
    product = delta.T if target.transposed else delta
    with torch.random.fork_rng(devices=[]):  # the same adapter every time, bit for bit
        torch.manual_seed(0)
        u, s, v = torch.svd_lowrank(product, q=rank + _OVERSAMPLE, niter=_POWER_STEPS)
    u, s, v = u[:, :rank], s[:rank], v[:, :rank]
    total = float(product.square().sum(dtype=torch.float64))
    lost = max(total - float(s.double().square().sum()), 0.0)
    a = (v * s).T.contiguous()
    return Factors(a, u.contiguous(), (lost / total) ** 0.5 if total > 0 else 0.0)


def _config(targets: list[str], rank: int, base_name: str | None) -> dict[str, object]:
    """A PEFT LoRA adapter_config.json at scale 1 (lora_alpha = r)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": rank,
        "lora_dropout": 0.0,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "modules_to_save": None,
        "base_model_name_or_path": base_name,
    }
