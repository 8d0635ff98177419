"""Methods that choose, element by element, which changes to keep: Arcee Fusion and
SCE (mergekit 0.1.5's meaning). Both need a whole-tensor statistic first (quantiles
of an importance score; the top-k of the inputs' variance, and each task vector's
mean square), found by streaming passes over spans (`selection.kth_largest`), so
memory stays a few spans whatever the tensor's size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from graft.merge.chunks import (
    TensorJob,
    f32,
    flat,
    output_for,
    scratch_for,
    spans_of,
)
from graft.merge.selection import Rank, RankMask, kth_largest

# ---------------------------------------------------------------- arcee_fusion

_SOFTMAX_EPS = 1e-8  # added to both distributions before the KL divergence
_QUARTILES = (0.25, 0.5, 0.75)


def arcee_fusion(job: TensorJob) -> torch.Tensor:
    """θ₀ + (θ₁ − θ₀) where the change is important: importance = |θ₁ − θ₀| × the KL
    divergence of softmax(θ₁) from softmax(θ₀) along each row, kept where it is at
    least median + 1.5 × IQR of the tensor's importances (an outlier fence).

    The quartiles are exact order statistics of every element (mergekit samples a
    million elements, with replacement, from larger tensors)."""
    base, model = job.base, job.inputs[0]
    assert base is not None
    n = base.numel()
    if n == 0:
        return output_for(job, base)
    width = base.shape[-1] if base.dim() >= 1 else 1
    spans = spans_of(n, width)
    scratch = scratch_for(spans, base.device)

    def importances() -> Iterator[torch.Tensor]:
        for span in spans:
            yield _importance(f32(base, span, scratch), f32(model, span), width)

    # The sorted positions mergekit reads, computed as it does (fp32 product, truncated).
    positions = (torch.tensor(_QUARTILES) * (n - 1)).long().tolist()
    q1, median, q3 = (_kth_smallest(importances, i + 1, n) for i in positions)
    threshold = torch.tensor(median) + 1.5 * (torch.tensor(q3) - torch.tensor(q1))
    out = output_for(job, base)
    for span, importance in zip(spans, importances(), strict=True):
        a = f32(base, span, scratch)
        change = f32(model, span) - a
        flat(out)[span] = a + change * (importance >= threshold.to(importance.device))
    return out


def _importance(a: torch.Tensor, b: torch.Tensor, width: int) -> torch.Tensor:
    """|b − a| × KL(softmax(b) ‖ softmax(a)) of each row, for a span of whole rows."""
    rows_a, rows_b = a.view(-1, width), b.view(-1, width)
    p = torch.softmax(rows_b, dim=-1) + _SOFTMAX_EPS
    q = torch.softmax(rows_a, dim=-1) + _SOFTMAX_EPS
    kl = (p * torch.log(p / q)).sum(-1, keepdim=True)
    return ((rows_b - rows_a).abs() * kl).view(-1)


def _kth_smallest(values: Callable[[], Iterator[torch.Tensor]], k: int, n: int) -> float:
    """The k-th smallest importance. KL may round a hair below zero where two rows
    agree; those count as zero here (radix selection orders non-negative floats)."""

    def clamped() -> Iterator[torch.Tensor]:  # NaN and -0.0 too: +0.0
        return (torch.where(v > 0, v, 0.0) for v in values())

    rank = kth_largest(clamped, n - k + 1, n)
    return float(torch.tensor([rank.bits], dtype=torch.int32).view(torch.float32))


# ---------------------------------------------------------------- sce

Deltas = Callable[[slice], torch.Tensor]  # a span's task vectors, N × span
_SCE_WEIGHT_EPS = 1e-6  # below this the task vectors' total mean square counts as zero
_SCE_DIVISOR_EPS = 1e-6


def sce(job: TensorJob) -> torch.Tensor:
    """Select, Calculate, Erase (arXiv:2408.07990): keep the `select_topk` fraction of
    elements where the inputs disagree most (the largest variance across them), weigh
    each task vector by its mean square (its share of the total), keep at each
    element the entries agreeing in sign with their sum, and average those by weight."""
    base = job.base
    assert base is not None
    n = base.numel()
    spans = spans_of(n)
    scratch = scratch_for(spans, base.device)

    def deltas(span: slice) -> torch.Tensor:
        return torch.stack([f32(x, span) for x in job.inputs]) - f32(base, span, scratch)

    select = _variance_mask(job, deltas, spans, n)
    squares = torch.zeros(len(job.inputs), dtype=torch.float64)
    for span in spans:
        d = deltas(span) * select(span)
        squares += d.square().sum(1).double().cpu()
    means = squares / n
    total = float(means.sum())
    if abs(total) < _SCE_WEIGHT_EPS:
        weights = torch.full_like(means, 1 / len(job.inputs))
    else:
        weights = means / total
    w = weights.float().to(base.device)[:, None]
    out = output_for(job, base)
    for span in spans:
        d = deltas(span) * select(span)
        majority = torch.where(d.sum(0) >= 0, 1.0, -1.0)
        kept = w * (d.sign() == majority)
        merged = (d * kept).sum(0) / kept.sum(0).clamp(min=_SCE_DIVISOR_EPS)
        flat(out)[span] = f32(base, span, scratch) + merged
    return out


@dataclass(frozen=True)
class _AllOrNone:
    """A selection that keeps every element (1.0) or none (0.0)."""

    keep: float

    def __call__(self, span: slice) -> float:
        return self.keep


class _TopVariance:
    """The `k` elements of largest variance across the inputs, span by span in order."""

    def __init__(self, deltas: Deltas, rank: Rank, k: int, n: int) -> None:
        self.deltas, self.mask = deltas, RankMask(rank, k, n, largest=True)

    def __call__(self, span: slice) -> torch.Tensor:
        if span.start == 0:
            self.mask.reset()
        return self.mask(_variance(self.deltas(span)))


def _variance(deltas: torch.Tensor) -> torch.Tensor:
    return torch.var(deltas, dim=0, unbiased=False)


def _variance_mask(
    job: TensorJob, deltas: Deltas, spans: list[slice], n: int
) -> _AllOrNone | _TopVariance:
    """Which elements SCE's selection keeps (the top `select_topk` fraction of those
    whose variance is not zero)."""
    density = float(job.params["select_topk"])
    if density >= 1 or density <= 0:
        return _AllOrNone(1.0 if density >= 1 else 0.0)
    nonzero = sum(int(torch.count_nonzero(_variance(deltas(span)))) for span in spans)
    k = int(nonzero * density)
    if k == 0:
        return _AllOrNone(0.0)

    def variances() -> Iterator[torch.Tensor]:
        return (_variance(deltas(span)) for span in spans)

    return _TopVariance(deltas, kth_largest(variances, k, n), k, n)
