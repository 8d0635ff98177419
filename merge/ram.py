"""Reinforced Agent Merging (RAM and RAM+, arXiv:2601.13572; mergekit 0.1.5's meaning).

A task vector's entries above `epsilon` in magnitude count as its contribution. An
entry only one input changes is kept as it is (RAM+ scales it up, by how much the
input shares with the others); an entry several inputs change gets their mean,
so that shared updates are not diluted by the inputs that left them alone, nor
unique ones by averaging with zeros. Elementwise, streamed in spans; RAM+ first
counts, per input, its shared and unique entries over the whole tensor.
"""

from __future__ import annotations

import torch

from graft.merge.chunks import TensorJob, f32, flat, output_for, scratch_for, spans_of


def _contributions(job: TensorJob, span: slice, scratch: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """For a span: the task vectors with their small entries zeroed (N × span), how
    many inputs change each entry, and where one does and where several do."""
    assert job.base is not None
    base = f32(job.base, span, scratch)
    deltas = torch.stack([f32(x, span) - base for x in job.inputs])
    changed = deltas.abs() > float(job.params["epsilon"])
    count = changed.sum(0)
    return deltas * changed, changed, count, count == 1, count > 1


def _merged(job: TensorJob, scales: torch.Tensor | None) -> torch.Tensor:
    """θ₀ + Σᵢ (δᵢ where unique, × its scale) + (δᵢ where shared, / how many share it)."""
    assert job.base is not None
    spans = spans_of(job.base.numel())
    scratch = scratch_for(spans, job.base.device)
    out = output_for(job, job.base)
    for span in spans:
        kept, _, count, unique, shared = _contributions(job, span, scratch)
        alone = kept * unique if scales is None else kept * unique * scales[:, None]
        total = (alone + kept * shared / count.clamp(min=1)).sum(0)
        flat(out)[span] = f32(job.base, span, scratch) + total
    return out


def ram(job: TensorJob) -> torch.Tensor:
    return _merged(job, None)


def ramplus_tl(job: TensorJob) -> torch.Tensor:
    """RAM+ (tensor-local): input i's unique entries are scaled by
    1 + r · min(alpha, shared_i / unique_i), counted over this tensor."""
    assert job.base is not None
    n = len(job.inputs)
    shared_n = torch.zeros(n, dtype=torch.float64)
    unique_n = torch.zeros(n, dtype=torch.float64)
    spans = spans_of(job.base.numel())
    scratch = scratch_for(spans, job.base.device)
    for span in spans:
        _, changed, _, unique, shared = _contributions(job, span, scratch)
        shared_n += (changed & shared).sum(1).double().cpu()
        unique_n += (changed & unique).sum(1).double().cpu()
    epsilon, r, alpha = (float(job.params[k]) for k in ("epsilon", "r", "alpha"))
    rho = shared_n / unique_n.clamp(min=epsilon)
    scales = (1 + r * rho.clamp(0, alpha)).float().to(job.base.device)
    return _merged(job, scales)
