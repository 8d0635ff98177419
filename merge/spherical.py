"""Merges on the hypersphere: nuslerp, multislerp and karcher (mergekit 0.1.5's meaning).

Each result is a linear combination of its vectors — the inputs, or their task
vectors against the base when there is one — with coefficients that depend only
on the vectors' dot products. So one streaming pass computes the Gram matrix of
the vectors, the coefficients are worked out in N dimensions (the Karcher
iteration included), and a second pass writes the combination span by span: no
whole-tensor copy of any input is held, whatever its size. The arithmetic is
float64 (a span at a time) and the result is rounded once.
"""

from __future__ import annotations

import math

import torch

from graft.merge.chunks import (
    TensorJob,
    f32,
    flat,
    input_weights,
    output_for,
    scratch_for,
    spans_of,
)

_NUSLERP_NORM_EPS = 1e-7  # a norm below this counts as this (no division by zero)
_NUSLERP_COLINEAR_EPS = 1e-8  # 1 - cos² at most this squared: interpolate linearly


def _vectors(job: TensorJob, span: slice, scratch: torch.Tensor) -> torch.Tensor:
    """The span of every vector, stacked (N × span, float64): the inputs minus the
    base. float64 so that the result, rounded once, is the float64 formula's."""
    rows = torch.stack([f32(x, span) for x in job.inputs]).double()
    if job.base is not None:
        rows -= f32(job.base, span, scratch).double()
    return rows


def _gram(job: TensorJob, spans: list[slice]) -> torch.Tensor:
    """Dot products of every pair of vectors over the whole tensor (float64)."""
    n = len(job.inputs)
    gram = torch.zeros(n, n, dtype=torch.float64)
    scratch = scratch_for(spans, job.inputs[0].device)
    for span in spans:
        rows = _vectors(job, span, scratch)
        gram += (rows @ rows.T).cpu()
    return gram


def _combine(job: TensorJob, coefficients: torch.Tensor, spans: list[slice]) -> torch.Tensor:
    """Σ cᵢ·vectorᵢ (+ the base), written span by span into the output."""
    out = output_for(job, job.inputs[0])
    scratch = scratch_for(spans, job.inputs[0].device)
    c = [float(x) for x in coefficients]
    for span in spans:
        rows = _vectors(job, span, scratch)
        acc = sum((ci * row for ci, row in zip(c[1:], rows[1:], strict=True)), c[0] * rows[0])
        if job.base is not None:
            acc += f32(job.base, span, scratch).double()
        flat(out)[span] = acc
    return out


def _single(job: TensorJob) -> torch.Tensor | None:
    """The one input, when there is only one: nothing to interpolate."""
    if len(job.inputs) != 1:
        return None
    out = output_for(job, job.inputs[0])
    for span in spans_of(out.numel()):
        flat(out)[span] = f32(job.inputs[0], span)
    return out


# ---------------------------------------------------------------- multislerp


def multislerp(job: TensorJob) -> torch.Tensor:
    """Barycentric interpolation on the hypersphere: the vectors' directions are
    mapped to the tangent space at their weighted mean direction, averaged there
    with the weights, mapped back, and scaled by the weighted mean norm."""
    single = _single(job)
    if single is not None:
        return single
    spans = spans_of(job.inputs[0].numel())
    gram = _gram(job, spans)
    eps = float(job.params["eps"])
    w = torch.tensor(input_weights(job), dtype=torch.float64)
    if job.params["normalize_weights"]:
        w = w / w.sum()
    norms = gram.diagonal().sqrt()
    scale = 1 / (norms + eps)  # unit vector i = scale_i · vector_i
    unit_gram = gram * scale[:, None] * scale[None, :]
    mean = w.clone()  # coefficients over the unit vectors
    mean_norm = float(mean @ unit_gram @ mean) ** 0.5
    if mean_norm < eps:
        if len(job.inputs) == 2:  # antipodal pair: fall back to the weighted sum
            return _combine(job, w, spans)
        raise ValueError(
            f"multislerp of tensor {job.name!r}: the weighted sum of the inputs' directions "
            "is zero (opposite vectors with balancing weights); change the weights"
        )
    mean /= mean_norm
    dots = unit_gram @ mean  # each unit vector · the mean direction
    # Σ wᵢ (uᵢ − dotᵢ·mean): the weighted tangent vectors, as coefficients.
    tangent = w - (w @ dots) * mean
    tangent_norm = float(tangent @ unit_gram @ tangent) ** 0.5 + eps
    direction = mean * math.cos(tangent_norm) + tangent * (math.sin(tangent_norm) / tangent_norm)
    length = float(norms @ w)
    return _combine(job, direction * length * scale, spans)


# ---------------------------------------------------------------- karcher


def karcher(job: TensorJob) -> torch.Tensor:
    """The Karcher (Riemannian) mean of the inputs' directions on the unit sphere,
    found by `max_iter` steps of gradient descent in the tangent space (stopping
    once a step is shorter than `tol`), scaled by the mean of their norms. Every
    input weighs the same; the base is an input like the others when listed."""
    single = _single(job)
    if single is not None:
        return single
    spans = spans_of(job.inputs[0].numel())
    gram = _gram(job, spans)
    tol, steps = float(job.params["tol"]), int(job.params["max_iter"])
    n = len(job.inputs)
    alphas = torch.full((n,), 1 / n, dtype=torch.float64)
    norms = gram.diagonal().sqrt()
    valid = norms > tol
    if not valid.any():
        return _combine(job, torch.zeros(n, dtype=torch.float64), spans)
    scale = torch.where(norms > 0, 1 / norms, torch.zeros_like(norms))
    unit_gram = gram * scale[:, None] * scale[None, :]
    a = torch.where(valid, alphas, torch.zeros_like(alphas))
    a = a / a.sum()

    def length(c: torch.Tensor) -> float:
        return float(c @ unit_gram @ c) ** 0.5

    mean = a.clone()  # coefficients over the unit vectors
    mean_norm = length(mean)
    if mean_norm < tol:
        mean = torch.zeros_like(a)
        mean[int(valid.nonzero()[0])] = 1.0
    else:
        mean /= mean_norm
    for _ in range(steps):
        dots = (unit_gram @ mean).clamp(-1.0, 1.0)
        theta = torch.arccos(dots)
        moves = valid & (theta >= tol)
        step = torch.where(moves, a * theta / torch.sin(theta), torch.zeros_like(a))
        tangent = step - (step @ dots) * mean  # Σ stepᵢ (uᵢ − dotᵢ·mean)
        tangent_norm = length(tangent)
        if tangent_norm < tol:
            break
        mean = mean * math.cos(tangent_norm) + tangent * (math.sin(tangent_norm) / tangent_norm)
        unit_norm = length(mean)
        if unit_norm > tol:
            mean /= unit_norm
    size = float(alphas @ norms)
    return _combine(job, mean * size * scale, spans)


# ---------------------------------------------------------------- nuslerp


def nuslerp(job: TensorJob) -> torch.Tensor:
    """SLERP between two vectors at t = w₁ / (w₀ + w₁) (0.5 when the weights cancel),
    over the whole tensor (`nuslerp_flatten`), else per row — or per column with
    `nuslerp_row_wise`; where the two are colinear, linear interpolation."""
    w0, w1 = input_weights(job)
    t = 0.5 if abs(w0 + w1) < 1e-6 else w1 / (w0 + w1)
    a = job.inputs[0]
    shape = a.shape
    if job.params["nuslerp_flatten"] or len(shape) <= 1:
        groups, along = 1, "whole"
    elif job.params["nuslerp_row_wise"]:  # vectors along dim 0: one per column
        groups, along = math.prod(shape[1:]), "columns"
    else:  # vectors along the last dim: one per row
        groups, along = math.prod(shape[:-1]), "rows"
    width = shape[-1] if along == "rows" else groups if along == "columns" else 1
    spans = spans_of(a.numel(), width)
    dots = torch.zeros(3, groups, dtype=torch.float64)  # v0·v0, v1·v1, v0·v1 per vector
    scratch = scratch_for(spans, a.device)
    for span in spans:
        v0, v1 = _grouped(_vectors(job, span, scratch), along, width)
        first = span.start // width if along == "rows" else 0
        cut = slice(first, first + v0.shape[0]) if along == "rows" else slice(None)
        axis = 0 if along == "columns" else -1
        for i, (x, y) in enumerate(((v0, v0), (v1, v1), (v0, v1))):
            dots[i, cut] += (x * y).sum(axis).cpu()
    n0 = dots[0].sqrt().clamp(min=_NUSLERP_NORM_EPS)
    n1 = dots[1].sqrt().clamp(min=_NUSLERP_NORM_EPS)
    cos = (dots[2] / (n0 * n1)).clamp(-1, 1)
    colinear = (1 - cos.square()) <= _NUSLERP_COLINEAR_EPS**2
    theta = torch.arccos(torch.where(colinear, torch.zeros_like(cos), cos))
    c0 = torch.where(colinear, 1 - t, torch.sin((1 - t) * theta) / torch.sin(theta))
    c1 = torch.where(colinear, t, torch.sin(t * theta) / torch.sin(theta))
    c0, c1 = c0.to(a.device), c1.to(a.device)
    out = output_for(job, a)
    for span in spans:
        v0, v1 = _grouped(_vectors(job, span, scratch), along, width)
        if along == "rows":
            first = span.start // width
            cut = slice(first, first + v0.shape[0])
            mixed = c0[cut, None] * v0 + c1[cut, None] * v1
        else:  # one coefficient for all (whole) or one per column
            mixed = c0 * v0 + c1 * v1
        if job.base is not None:
            mixed = mixed.reshape(-1) + f32(job.base, span, scratch).double()
        flat(out)[span] = mixed.reshape(-1)
    return out


def _grouped(rows: torch.Tensor, along: str, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two vectors' span, shaped (vectors × elements) for rows, (rows × columns)
    for columns, flat for the whole tensor."""
    v0, v1 = rows[0], rows[1]
    if along == "whole":
        return v0, v1
    return v0.reshape(-1, width), v1.reshape(-1, width)
