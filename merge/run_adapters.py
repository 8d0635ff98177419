"""Execute a plan whose inputs are LoRA adapters: write one merged adapter.

Per module: linear and task_arithmetic concatenate the factors (exact); the
other methods merge the dense updates and cut them back to `rank` by SVD.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from graft.lineage.tensors import TORCH_DTYPES
from graft.merge.adapters import (
    EXACT_METHODS,
    DeltaSource,
    Factors,
    adapter_config,
    concatenated,
    dumps,
    truncated,
)
from graft.merge.chunks import TensorJob
from graft.merge.errors import MergeCancelled, MergeConfigError, MergeInputError
from graft.merge.output import lineage_metadata
from graft.merge.plan import MergePlan, TensorTask
from graft.merge.results import MergeProgress, Written
from graft.merge.writer import PlannedTensor, ShardWriter
from graft.registry.safetensors_header import DTYPE_BITS

ADAPTER_FILE = "adapter_model.safetensors"


def execute_adapters(
    plan: MergePlan,
    work: Path,
    seed: int,
    device: torch.device,
    rank: int | None,
    on_progress: Callable[[MergeProgress], None] | None,
    should_cancel: Callable[[], bool] | None,
) -> Written:
    method = plan.config.method
    first = plan.tasks[0]
    adapters = [_delta(plan, r.source) for r in first.inputs]
    exact = method.name in EXACT_METHODS
    full_rank = sum(a.rank for a in adapters)
    if exact and rank not in (None, full_rank):
        raise MergeConfigError(
            f"--rank {rank}: a {method.name} merge of adapters is exact at rank {full_rank} "
            "(the sum of theirs)",
            "leave --rank out, or use ties/dare_* to cut the rank",
        )
    if rank is not None and rank < 1:
        raise MergeConfigError(f"--rank {rank}: must be at least 1", "give a positive rank")
    rank = rank or full_rank
    targets = adapters[0].targets
    planned = []
    for task in plan.tasks:
        rows, cols = targets[task.name].product_shape
        a_key, b_key = targets[task.name].keys(task.name)
        planned += [
            _planned(a_key, task.dtype, (rank, cols)),
            _planned(b_key, task.dtype, (rows, rank)),
        ]
    writer = ShardWriter(work, planned, 1 << 62, lineage_metadata(plan), single_name=ADAPTER_FILE)
    touched, errors, done = [], {}, 0
    try:
        for i, task in enumerate(plan.tasks):
            if should_cancel and should_cancel():
                raise MergeCancelled("merge cancelled", "nothing was written to the output")
            sources = [_delta(plan, r.source) for r in task.inputs]
            if exact:
                factors = concatenated(sources, task.name, _coefficients(task, method.name))
            else:
                factors = truncated(
                    _dense(plan, task, sources, seed, device), targets[task.name], rank
                )
                errors[task.name] = factors.rel_error
            if _nonzero(factors):
                touched.append(task.name)
            a_key, b_key = targets[task.name].keys(task.name)
            writer.write(a_key, factors.a.to(TORCH_DTYPES[task.dtype]))
            writer.write(b_key, factors.b.to(TORCH_DTYPES[task.dtype]))
            done += planned[2 * i].nbytes + planned[2 * i + 1].nbytes
            if on_progress:
                on_progress(MergeProgress(i + 1, len(plan.tasks), done, done, task.name))
        worst = max(errors.values(), default=0.0)
        writer.finish(
            {
                "graft.touched": json.dumps(touched),
                "graft.adapter_rank": str(rank),
                "graft.truncation_error": json.dumps(errors),
            }
        )
    finally:
        writer.close()
    base = plan.adapter_base.label if plan.adapter_base else None
    note = (
        f"An adapter of rank {rank}: the exact {method.name} combination of its inputs."
        if exact
        else f"An adapter of rank {rank}, cut by SVD: largest relative error "
        f"{worst:.3g} ({len(errors)} modules; per module in `graft.truncation_error`)."
    )
    return Written(
        files=writer.files,
        tensors=len(planned),
        nbytes=sum(p.nbytes for p in planned),
        touched=touched,
        companions={"adapter_config.json": dumps(adapter_config(adapters, rank, base))},
        note=note,
        rank=rank,
        truncation_error=None if exact else worst,
    )


def _delta(plan: MergePlan, index: int) -> DeltaSource:
    source = plan.sources[index]
    assert isinstance(source, DeltaSource)
    return source


def _planned(name: str, dtype: str, shape: tuple[int, int]) -> PlannedTensor:
    return PlannedTensor(name, dtype, shape, shape[0] * shape[1] * DTYPE_BITS[dtype] // 8)


def _coefficients(task: TensorTask, method: str) -> list[float]:
    """cᵢ of Σ cᵢ·ΔWᵢ: the weights, over their sum when normalizing, times lambda."""
    weights = [float(p["weight"]) for p in task.input_params]
    total = sum(weights)
    if task.params.get("normalize"):
        if method == "linear" and total == 0:
            raise MergeInputError(
                f"tensor {task.name}: the weights sum to 0, so they cannot be normalized",
                "change the weights or set normalize: false",
            )
        if abs(total) < 1e-8:
            total = 1.0
    else:
        total = 1.0
    scale = float(task.params.get("lambda", 1.0))
    return [w * scale / total for w in weights]


def _dense(
    plan: MergePlan, task: TensorTask, sources: list[DeltaSource], seed: int, device: torch.device
) -> torch.Tensor:
    zeros = torch.zeros(task.shape, device=device)
    job = TensorJob(
        name=task.name,
        base=zeros if task.base is not None else None,
        inputs=tuple(s.load_f32(task.name).to(device) for s in sources),
        input_params=task.input_params,
        params=task.params,
        seed=seed,
    )
    return plan.config.method.merge(job).cpu()


def _nonzero(factors: Factors) -> bool:
    return bool(torch.count_nonzero(factors.a)) and bool(torch.count_nonzero(factors.b))
