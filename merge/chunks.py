"""What a merge formula works on: one output tensor's job, and its tensors read a
span at a time.

Formulas stream over the flattened tensors in spans of CHUNK elements: the inputs
stay in their own dtype (bf16 is half of fp32) and only a few fp32 spans exist at a
time, so a 500 MB embedding never has fp32 copies of every input. Whole-tensor
quantities (TIES thresholds, L1 norms, slerp's angle, Gram matrices) take a pass of
their own first. Sums accumulate in float64 so their value does not depend on how
torch splits them over threads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

ParamValue = float | bool


class SpanTensor(Protocol):
    """A tensor too large to hold whole beside its fp32 work: read a span of its
    flattened elements at a time (already on the job's device)."""

    @property
    def shape(self) -> torch.Size: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    def numel(self) -> int: ...

    def dim(self) -> int: ...

    def span(self, span: slice) -> torch.Tensor: ...


TensorIn = torch.Tensor | SpanTensor


@dataclass(frozen=True)
class TensorJob:
    """Everything one output tensor's merge needs, on one device (any float dtype).

    `inputs` are the non-base inputs θ1..θN in config order (for linear and passthrough: all
    inputs, the base included if it is one); an input's index in this tuple keys its random
    mask. `input_params[i]` holds input i's input-scope values and `params` the global ones;
    missing values that have a default are filled in by `Method.merge`.
    """

    name: str
    base: TensorIn | None
    inputs: tuple[TensorIn, ...]
    input_params: tuple[dict[str, ParamValue], ...]
    params: dict[str, ParamValue]
    seed: int = 0
    out_dtype: torch.dtype = torch.float32  # the result's dtype (computed in fp32)
    out: torch.Tensor | None = None  # memory for the result (its dtype and shape), if given


# 1 MB of fp32: a formula makes a dozen or more passes over each span, and at
# 4 MB (1 << 20) they ran 15-20% slower, out of the core's cache (TIES and
# dare_ties per tensor, one thread; 64 K elements were slower again).
CHUNK = 1 << 18


def spans_of(n: int, align: int = 1) -> list[slice]:
    """Consecutive spans of about CHUNK elements, each a multiple of `align` long
    (whole rows, for the per-row formulas)."""
    step = max(align, CHUNK // align * align)
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]


def flat(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1)


def part_of(tensor: TensorIn, span: slice) -> torch.Tensor:
    """A span of the flattened tensor in its own dtype (a view when it can be)."""
    return flat(tensor)[span] if isinstance(tensor, torch.Tensor) else tensor.span(span)


def f32(tensor: TensorIn, span: slice, into: torch.Tensor | None = None) -> torch.Tensor:
    """An fp32 copy of a span (formulas work on it in place), in the front of
    `into` when given: reusing memory spares the page faults of a fresh buffer."""
    part = part_of(tensor, span)
    if into is None:
        return part.to(torch.float32, copy=True)
    return into[: part.numel()].copy_(part)


def cast_to_out(job: TensorJob, tensor: TensorIn) -> torch.Tensor:
    """`tensor` in the output dtype (itself when it already is one)."""
    if isinstance(tensor, torch.Tensor):
        return tensor.to(job.out_dtype)
    out = output_for(job, tensor)
    for span in spans_of(tensor.numel()):
        flat(out)[span] = f32(tensor, span)
    return out


def scratch_for(spans: list[slice], device: torch.device) -> torch.Tensor:
    """An fp32 buffer for the longest of `spans`."""
    return torch.empty(max((s.stop - s.start for s in spans), default=0), device=device)


def row_width(tensor: TensorIn) -> int:
    """Elements per row: rows are along dim 0; 0-D and 1-D tensors are one row."""
    return tensor.numel() if tensor.dim() <= 1 else math.prod(tensor.shape[1:])


def output_for(job: TensorJob, like: TensorIn) -> torch.Tensor:
    if job.out is not None:
        return job.out
    return torch.empty(like.shape, dtype=job.out_dtype, device=like.device)


def input_weights(job: TensorJob) -> list[float]:
    return [float(values["weight"]) for values in job.input_params]
