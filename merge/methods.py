"""The one registry of merge methods: names, typed parameters and per-tensor formulas.

Each `Method` in `METHODS` declares its parameters (named as in mergekit YAML, with type,
default and scope) so the planner, the CLI and the TUI all validate against one source, and
its `merge(job)` turns one `TensorJob` (float tensors of any dtype on one device) into one
output tensor of `job.out_dtype`, computed in fp32 span by span (see "chunks" below). The
formulas follow graft's merge-semantics specification (mergekit 0.1.5 meaning):

- linear, passthrough: weighted average / copy of the inputs; the base is not special.
- task_arithmetic, ties, dare_*, breadcrumbs*, della*: task vectors δᵢ = θᵢ − θ₀, sparsified
  per input (magnitude, random, magnitude outliers, DELLA magprune), optionally L1-rescaled,
  weighted, optionally sign-elected, normalized, scaled by lambda and added back to θ₀.
- slerp, model_stock: interpolations between the base and the other input(s).

Random masks (DARE, DELLA) come from a CPU generator keyed by (seed, tensor name, input index),
so they are identical whatever the thread count, tensor order or device; whole-tensor sums
(L1 norms, dot products) accumulate in float64 so threads do not change them either.
torch, and numpy for selection: no file I/O, no global state. Merge functions never modify
the job's tensors (they may write into `job.out`), and may return one of them unchanged
(passthrough at scale 1, slerp at t = 0 or 1).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
import xxhash

from graft.merge import fusion, ram, spherical
from graft.merge.chunks import (
    ParamValue,
    TensorIn,
    TensorJob,
    cast_to_out,
    f32,
    flat,
    input_weights,
    output_for,
    part_of,
    row_width,
    scratch_for,
    spans_of,
)
from graft.merge.errors import MergeConfigError, MergeInputError
from graft.merge.selection import Rank, RankMask, bits_of, kth_largest, kth_smallest

ParamKind = Literal["float", "int", "bool"]
Scope = Literal["input", "global"]

# The spec's tolerances: below the epsilons a norm, divisor or denominator counts as zero.
_RESCALE_EPS = 1e-7
_DIVISOR_EPS = 1e-8
_SLERP_NORM_EPS = 1e-8
_SLERP_LERP_ABOVE = 0.9995
_STOCK_EPS = 1e-6
_NEARSWAP_EPS = 1e-6  # a difference below this counts as this


@dataclass(frozen=True)
class Param:
    """A method parameter: its name as in mergekit YAML, type, default (None = required), scope.

    `low`/`high` bound float values (open ends where `low_open`/`high_open`); `None` = unbounded.
    """

    name: str
    kind: ParamKind
    default: ParamValue | None
    scope: Scope
    doc: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    @property
    def required(self) -> bool:
        return self.default is None

    @property
    def range_text(self) -> str | None:
        """The allowed interval in math notation, e.g. "(0, 1]"; None when unbounded."""
        if self.low is None and self.high is None:
            return None
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        return f"{left}{low}, {high}{right}"

    def check(self, value: object) -> str | None:
        """None if `value` is acceptable, else a short reason such as "must be in (0, 1]"."""
        if self.kind == "bool":
            return None if isinstance(value, bool) else f"must be true or false, not {value!r}"
        # bool is an int subclass; `density: true` is a mistake, not 1.0
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number, not {value!r}"
        number = float(value)
        if not math.isfinite(number):
            return "must be a finite number"
        if self.kind == "int" and not number.is_integer():
            return f"must be a whole number, not {value!r}"
        too_low = self.low is not None and (
            number < self.low or (self.low_open and number == self.low)
        )
        too_high = self.high is not None and (
            number > self.high or (self.high_open and number == self.high)
        )
        if too_low or too_high:
            return f"must be in {self.range_text}"
        return None


Formula = Callable[[TensorJob], torch.Tensor]
CombinationCheck = Callable[[Mapping[str, ParamValue]], "str | None"]


@dataclass(frozen=True)
class Method:
    """A merge method: its declaration (parameters, inputs) and its per-tensor formula.

    `merge(job)` validates the job against the declaration (input count, base, shapes,
    parameter names, values and combinations), fills in defaults and applies `formula`.
    `combination` checks one input's resolved values together (DELLA's density ± epsilon);
    the planner can call `check_combination` early to report it as a config error.
    """

    name: str
    reference: str
    params: tuple[Param, ...]
    uses_base: bool  # a base is not one of the inputs; its role is the method's
    min_inputs: int
    max_inputs: int | None
    formula: Formula
    combination: CombinationCheck | None = None
    base_optional: bool = False  # uses a base when there is one (multislerp, nuslerp)

    @property
    def needs_base(self) -> bool:
        return self.uses_base and not self.base_optional

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    @property
    def input_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.scope == "input")

    @property
    def global_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.scope == "global")

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def check_input_count(self, count: int) -> str | None:
        """None if `count` entries of `TensorJob.inputs` are allowed, else a reason."""
        if self.max_inputs == self.min_inputs and count != self.min_inputs:
            return f"{self.name} takes exactly {self.min_inputs} input(s), got {count}"
        if count < self.min_inputs:
            return f"{self.name} needs at least {self.min_inputs} input(s), got {count}"
        if self.max_inputs is not None and count > self.max_inputs:
            return f"{self.name} takes at most {self.max_inputs} input(s), got {count}"
        return None

    def check_combination(self, values: Mapping[str, ParamValue]) -> str | None:
        """None if one input's resolved input-scope values fit together, else a reason."""
        return self.combination(values) if self.combination else None

    def merge(self, job: TensorJob) -> torch.Tensor:
        """The merged fp32 tensor for `job` (same shape and device as its inputs)."""
        return self.formula(self._prepared(job))

    def _prepared(self, job: TensorJob) -> TensorJob:
        where = f"tensor {job.name!r}"
        if self.needs_base and job.base is None:
            raise MergeConfigError(
                f"{self.name} needs a base model ({where})", "set base_model in the config"
            )
        reason = self.check_input_count(len(job.inputs))
        if reason:
            raise MergeConfigError(f"{reason} ({where})", "list the right number of models")
        if len(job.input_params) != len(job.inputs):
            raise MergeConfigError(
                f"{where} has {len(job.inputs)} inputs but {len(job.input_params)} parameter sets",
                "give one parameter set per input",
            )
        reference = job.base if self.uses_base and job.base is not None else job.inputs[0]
        for i, tensor in enumerate(job.inputs):
            if tensor.shape != reference.shape:
                against = "the base" if self.uses_base else "input 0"
                raise MergeInputError(
                    f"{where} has shape {list(tensor.shape)} in input {i} but "
                    f"{list(reference.shape)} in {against}",
                    "merge only models with the same architecture and vocabulary",
                )
        input_params = tuple(
            self._resolved(values, self.input_params, f"input {i} of {where}")
            for i, values in enumerate(job.input_params)
        )
        for i, values in enumerate(input_params):
            reason = self.check_combination(values)
            if reason:
                raise MergeInputError(
                    f"{reason} for input {i} of {where}", "adjust the parameters of that input"
                )
        params = self._resolved(job.params, self.global_params, where)
        return dataclasses.replace(job, input_params=input_params, params=params)

    def _resolved(
        self, values: Mapping[str, ParamValue], declared: tuple[Param, ...], where: str
    ) -> dict[str, ParamValue]:
        known = {p.name for p in declared}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MergeConfigError(
                f"{self.name} does not use parameter {unknown[0]!r} ({where})",
                f"remove it; {self.name} takes: {', '.join(sorted(known)) or 'no parameters'}",
            )
        resolved: dict[str, ParamValue] = {}
        for p in declared:
            if p.name in values:
                value = values[p.name]
                reason = p.check(value)
                if reason:
                    raise MergeConfigError(
                        f"{p.name} = {value!r} for {where}: {reason}", "fix the value"
                    )
                resolved[p.name] = value
            elif p.default is not None:
                resolved[p.name] = p.default
            else:
                raise MergeConfigError(
                    f"{self.name} needs parameter {p.name!r} for {where}",
                    "set it under the model's parameters or at the top level",
                )
        return resolved


# ---------------------------------------------------------------- keyed randomness


class _KeyedStream:
    """Random 32-bit words for input `index` of tensor `name` under `seed`, drawn
    on the CPU in order, span after span: the same words as one draw of the
    whole tensor, whatever the spans, threads or device. They come from numpy's
    PCG64, whose streams numpy keeps stable across versions; its raw output is
    2.6× faster than torch's uniform_."""

    def __init__(self, seed: int, name: str, index: int) -> None:
        self.key = xxhash.xxh3_64_intdigest(f"{seed}\x00{name}\x00{index}".encode())
        self.reset()

    def reset(self) -> None:
        self.bits = np.random.PCG64(self.key)
        self.spare = np.empty(0, np.uint32)  # the unused half of the last 64-bit draw

    def words(self, count: int) -> np.ndarray:
        fresh = self.bits.random_raw((count - self.spare.size + 1) // 2).view(np.uint32)
        words = np.concatenate((self.spare, fresh)) if self.spare.size else fresh
        self.spare = words[count:].copy()
        return words[:count]

    def uniform(self, count: int) -> torch.Tensor:
        """`count` fp32 draws in [0, 1): a word's top 24 bits over 2²⁴, the
        finest grid fp32 holds exactly over the whole interval."""
        return torch.from_numpy(
            np.multiply(self.words(count) >> 8, _WORD_TO_UNIT, dtype=np.float32)
        )


_WORD_TO_UNIT = np.float32(2.0**-24)


def words_below(density: float) -> int:
    """The words kept with probability `density`: those below the returned bound.
    A draw u = (w >> 8) / 2²⁴ is below ρ (in fp32, as keep_mask compares) exactly
    when w < ⌈ρ·2²⁴⌉·2⁸, so one integer comparison per entry replaces the draw."""
    return math.ceil(float(np.float32(density)) * 2**24) << 8


def keyed_uniform(seed: int, name: str, index: int, shape: Sequence[int]) -> torch.Tensor:
    """Uniform [0, 1) fp32 draws on CPU for input `index` of tensor `name` under `seed`.

    The generator is seeded from a hash of the three, so the draws never depend on what else
    is merged, in which order, on how many threads or on which device.
    """
    return _KeyedStream(seed, name, index).uniform(math.prod(shape)).reshape(tuple(shape))


def keep_mask(
    seed: int,
    name: str,
    index: int,
    shape: Sequence[int],
    keep_prob: float | torch.Tensor,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Bool mask: element kept where its keyed draw < `keep_prob` (a number or per element)."""
    draws = keyed_uniform(seed, name, index, shape)
    if isinstance(keep_prob, torch.Tensor):
        mask = draws.to(keep_prob.device) < keep_prob.to(torch.float32)
    else:
        mask = draws < keep_prob
    return mask if device is None else mask.to(device)


# ---------------------------------------------------------------- rank selection


# Below this many elements a tensor's selection holds all of its bit patterns
# (4 bytes each, twice) and its mask (1 byte each) at once; above, it streams.
_IN_MEMORY_BELOW = 1 << 23


class _MagnitudeMask(Protocol):
    """Keeps exactly the k largest (or smallest) |δ| of the δ it is shown, span
    by span in order; entries equal to the threshold go lowest index first."""

    def reset(self) -> None: ...

    def __call__(self, deltas: torch.Tensor) -> torch.Tensor: ...


class _WholeMask:
    """A _MagnitudeMask computed over the whole tensor at once, handed out span by
    span (views: callers must not modify them)."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask
        self.reset()

    def reset(self) -> None:
        self.start = 0

    def __call__(self, deltas: torch.Tensor) -> torch.Tensor:
        part = self.mask[self.start : self.start + deltas.numel()]
        self.start += deltas.numel()
        return part.to(deltas.device)


@dataclass
class _StreamedMask:
    """A _MagnitudeMask from the k-th's rank, applied to each span's |δ|."""

    inner: RankMask

    def reset(self) -> None:
        self.inner.reset()

    def __call__(self, deltas: torch.Tensor) -> torch.Tensor:
        return self.inner(deltas.abs())


def _rank_mask(
    deltas: Callable[[], Iterator[torch.Tensor]], n: int, k: int, *, largest: bool
) -> _MagnitudeMask | None:
    """A mask keeping the k largest (smallest) |δ|; None when it keeps everything."""
    if k >= n:
        return None
    if n < _IN_MEMORY_BELOW:
        return _WholeMask(_whole_rank_mask(deltas, n, k, largest=largest))
    if k <= 0:  # compares with the int32 bit patterns keep nothing
        rank = Rank(2**31 - 1 if largest else 0, 0, 0)
        return _StreamedMask(RankMask(rank, 0, n, largest=largest))
    magnitudes = lambda: (d.abs() for d in deltas())  # noqa: E731
    rank = kth_largest(magnitudes, k if largest else n - k + 1, n)  # k-th smallest
    return _StreamedMask(RankMask(rank, k, n, largest=largest))


def _whole_rank_mask(
    deltas: Callable[[], Iterator[torch.Tensor]], n: int, k: int, *, largest: bool
) -> torch.Tensor:
    """The k largest (smallest) of all n |δ|, selected among their bit patterns
    in memory. In numpy: its compares and nonzero are 2-4× faster than torch's."""
    magnitudes = torch.empty(n)
    start = 0
    for delta in deltas():
        torch.abs(delta.cpu().reshape(-1), out=magnitudes[start : start + delta.numel()])
        start += delta.numel()
    bits = bits_of(magnitudes).numpy()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool)
    at = n - k if largest else k - 1  # the threshold's place in ascending order
    kth = kth_smallest(bits, at)
    mask = bits > kth if largest else bits < kth
    ties = k - int(np.count_nonzero(mask))
    if ties > 0:
        _keep_first(mask, bits == kth, ties)
    return torch.from_numpy(mask)


_BLOCK = 1 << 16


def _keep_first(mask: np.ndarray, tied: np.ndarray, count: int) -> None:
    """Set `mask` where `tied` is, at the first `count` such places: whole blocks
    up to the one holding the count-th, found by bisection over prefix counts
    (count_nonzero is the fastest pass numpy has), then within that block (a
    fine-tune's |δ| ties by the million, too many to list every place)."""
    lo, hi = 0, -(-len(tied) // _BLOCK)  # in blocks: fewer than `count` before lo, enough before hi
    before = 0  # tied places before block lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        upto = int(np.count_nonzero(tied[: mid * _BLOCK]))
        if upto < count:
            lo, before = mid, upto
        else:
            hi = mid
    cut = lo * _BLOCK
    mask[:cut] |= tied[:cut]
    places = np.flatnonzero(tied[cut : cut + _BLOCK])[: count - before]
    mask[cut + places] = True


# ---------------------------------------------------------------- sparsifiers
# Each builds, for input `index`, a masker: called on the input's δ span by
# span in order, it returns the keep-mask for that span (None: keep all);
# `reset` starts it over for another pass.


class _Masker(Protocol):
    def reset(self) -> None: ...

    def __call__(self, delta: torch.Tensor, span: slice) -> torch.Tensor: ...


Deltas = Callable[[], Iterator[torch.Tensor]]
Sparsifier = Callable[[TensorJob, int, Mapping[str, ParamValue], Deltas, int], "_Masker | None"]


class _Keep:
    """Keeps nothing: density ≤ 0."""

    def reset(self) -> None:
        pass

    def __call__(self, delta: torch.Tensor, span: slice) -> torch.Tensor:
        return torch.zeros_like(delta, dtype=torch.bool)


@dataclass
class _Ranked:
    inner: _MagnitudeMask

    def reset(self) -> None:
        self.inner.reset()

    def __call__(self, delta: torch.Tensor, span: slice) -> torch.Tensor:
        return self.inner(delta)


def _magnitude(
    job: TensorJob, index: int, values: Mapping[str, ParamValue], deltas: Deltas, n: int
) -> _Masker | None:
    """TIES: keep the k = max(1, ⌊ρn⌋) entries of largest |δ| over the whole tensor."""
    density = float(values["density"])
    if density >= 1:
        return None
    if density <= 0:
        return _Keep()
    mask = _rank_mask(deltas, n, max(1, math.floor(density * n)), largest=True)
    return _Ranked(mask) if mask else None


class _Random:
    """DARE: keep each entry independently with probability ρ (keyed draws).
    With `remember`, the first pass's masks serve the later ones (1 byte an
    entry) instead of drawing them again."""

    def __init__(self, job: TensorJob, index: int, density: float, *, remember: bool) -> None:
        self.stream, self.below = _KeyedStream(job.seed, job.name, index), words_below(density)
        self.masks: list[torch.Tensor] | None = [] if remember else None
        self.reset()

    def reset(self) -> None:
        self.at = 0
        if self.masks is None:
            self.stream.reset()

    def __call__(self, delta: torch.Tensor, span: slice) -> torch.Tensor:
        if self.masks is not None and self.at < len(self.masks):
            mask = self.masks[self.at]
        else:
            words = self.stream.words(delta.numel())
            kept = words < self.below if self.below < 2**32 else np.ones(words.size, bool)
            mask = torch.from_numpy(kept).to(delta.device)
            if self.masks is not None:
                self.masks.append(mask)
        self.at += 1
        return mask


def _random(
    job: TensorJob, index: int, values: Mapping[str, ParamValue], deltas: Deltas, n: int
) -> _Masker | None:
    density = float(values["density"])
    return None if density >= 1 else _Random(job, index, density, remember=_keeps_passes(job))


@dataclass
class _Between:
    """Breadcrumbs: the `upto` smallest minus the `dropped` smallest."""

    upto: _MagnitudeMask | None
    dropped: _MagnitudeMask | None

    def reset(self) -> None:
        for part in (self.upto, self.dropped):
            if part:
                part.reset()

    def __call__(self, delta: torch.Tensor, span: slice) -> torch.Tensor:
        mask = self.upto(delta) if self.upto else torch.ones_like(delta, dtype=torch.bool)
        if self.dropped:
            mask = mask & ~self.dropped(delta)  # not in place: masks may be views
        return mask


def _magnitude_outliers(
    job: TensorJob, index: int, values: Mapping[str, ParamValue], deltas: Deltas, n: int
) -> _Masker | None:
    """Breadcrumbs: with |δ| ascending, keep ranks b … b+t−1 (t = ⌊ρn⌋, b = n − t − ⌊γn⌋)."""
    density = float(values["density"])
    if density >= 1:
        return None
    kept = math.floor(density * n)
    dropped = max(0, n - kept - math.floor(float(values["gamma"]) * n))
    # both break ties lowest index first, so the smaller set is inside the larger
    return _Between(
        _rank_mask(deltas, n, dropped + kept, largest=False),
        _rank_mask(deltas, n, dropped, largest=False) if dropped else None,
    )


def _della_problem(values: Mapping[str, ParamValue]) -> str | None:
    density, epsilon = float(values["density"]), float(values["epsilon"])
    if density < 1 and not (density - epsilon > 0 and density + epsilon < 1):
        return (
            f"della needs density - epsilon > 0 and density + epsilon < 1, "
            f"got density {density:g} and epsilon {epsilon:g}"
        )
    return None


class _Magprune:
    """DELLA: per row, rank r (0-based, |δ| ascending) kept with probability
    p = ρ − ε + 2ε·r/(n_row − 1); a one-element row gets p = ρ. Spans are whole rows."""

    def __init__(self, job: TensorJob, index: int, density: float, epsilon: float, width: int):
        self.stream, self.width = _KeyedStream(job.seed, job.name, index), width
        if width <= 1:
            by_rank = torch.full((width,), density, dtype=torch.float64)
        else:
            steps = torch.arange(width, dtype=torch.float64) / (width - 1)
            by_rank = (density - epsilon) + 2 * epsilon * steps
        self.by_rank = by_rank.to(torch.float32)  # built on CPU: identical on every device

    def reset(self) -> None:
        self.stream.reset()

    def __call__(self, delta: torch.Tensor, span: slice) -> torch.Tensor:
        rows = delta.abs().reshape(-1, self.width)
        order = torch.argsort(rows, dim=1, stable=True)
        by_rank = self.by_rank.to(delta.device).expand_as(rows)
        prob = torch.empty_like(rows).scatter_(1, order, by_rank).reshape(-1)
        return self.stream.uniform(delta.numel()).to(delta.device) < prob


def _magprune(
    job: TensorJob, index: int, values: Mapping[str, ParamValue], deltas: Deltas, n: int
) -> _Masker | None:
    density, epsilon = float(values["density"]), float(values["epsilon"])
    if density >= 1:
        return None
    if density <= 0:
        return _Keep()
    assert job.base is not None
    return _Magprune(job, index, density, epsilon, row_width(job.base))


# ---------------------------------------------------------------- formulas


def _linear(job: TensorJob) -> torch.Tensor:
    weights = input_weights(job)
    total = math.fsum(weights)
    normalize = bool(job.params["normalize"])
    if normalize and abs(total) < _DIVISOR_EPS:
        raise MergeInputError(
            f"the linear weights for tensor {job.name!r} sum to 0, so normalize cannot divide "
            "by them",
            "change the weights or set normalize: false",
        )
    out = output_for(job, job.inputs[0])
    spans = spans_of(out.numel())
    scratch = scratch_for(spans, out.device)
    for span in spans:
        acc = f32(job.inputs[0], span, scratch).mul_(weights[0])
        for weight, tensor in zip(weights[1:], job.inputs[1:], strict=True):
            acc.add_(part_of(tensor, span), alpha=weight)  # fp32 += w·x, x widened as read
        if normalize and total != 1:  # x / 1 is x
            acc.div_(total)
        flat(out)[span] = acc
    return out


def _task_vectors(sparsify: Sparsifier | None, *, consensus: bool) -> Formula:
    """The task-vector family: sparsify, rescale, weight, (elect signs), normalize, lambda."""

    def formula(job: TensorJob) -> torch.Tensor:
        assert job.base is not None  # checked by Method.merge
        base = job.base
        n, weights = base.numel(), input_weights(job)
        spans = spans_of(n, row_width(base) if sparsify is _magprune else 1)
        # Up to a size, the task vectors are computed once for every pass.
        kept = _task_vector_spans(job, spans) if _keeps_passes(job) else None

        def deltas_of(i: int) -> Deltas:
            if kept is not None:
                return lambda: iter(kept[i])
            return lambda: (f32(job.inputs[i], s).sub_(f32(base, s)) for s in spans)

        maskers = [
            sparsify(job, i, values, deltas_of(i), n) if sparsify else None
            for i, values in enumerate(job.input_params)
        ]
        factors = [
            _rescale_factor(masker, deltas_of(i), spans, base.device)
            if masker is not None and job.params.get("rescale")
            else 1.0
            for i, masker in enumerate(maskers)
        ]
        divisor_all = math.fsum(weights)
        if abs(divisor_all) < _DIVISOR_EPS:
            divisor_all = 1.0
        out = output_for(job, base)
        scratch = scratch_for(spans, base.device)
        for j, span in enumerate(spans):
            theta0 = f32(base, span, scratch)
            weighted = []
            for i, masker in enumerate(maskers):
                # the last pass: it may change the kept task vectors in place
                delta = (
                    kept[i][j]
                    if kept is not None
                    else torch.sub(part_of(job.inputs[i], span), theta0)
                )
                if masker is not None:
                    _drop(delta, masker(delta, span))
                weighted.append(delta.mul_(weights[i] * factors[i]))
            numerator, divisor = (
                _elect(weighted, weights) if consensus else _sum(weighted, divisor_all)
            )
            merged = numerator.div_(divisor) if job.params["normalize"] else numerator
            flat(out)[span] = merged.mul_(float(job.params["lambda"])).add_(theta0)
        return out

    return formula


# The most task-vector elements (all inputs together) kept in fp32 between passes.
_KEEP_DELTAS_UPTO = 1 << 25


def _keeps_passes(job: TensorJob) -> bool:
    """Whether a tensor is small enough to keep its task vectors and DARE masks
    from one pass to the next instead of computing them again."""
    return job.inputs[0].numel() * len(job.inputs) <= _KEEP_DELTAS_UPTO


def _task_vector_spans(job: TensorJob, spans: list[slice]) -> list[list[torch.Tensor]]:
    """θᵢ − θ₀ of every input, span by span (each span of θ₀ widened once)."""
    assert job.base is not None
    scratch = scratch_for(spans, job.base.device)
    kept: list[list[torch.Tensor]] = [[] for _ in job.inputs]
    for span in spans:
        theta0 = f32(job.base, span, scratch)
        for deltas, tensor in zip(kept, job.inputs, strict=True):
            deltas.append(torch.sub(part_of(tensor, span), theta0))  # widened as it is read
    return kept


def _rescale_factor(
    masker: _Masker, deltas: Deltas, spans: list[slice], device: torch.device
) -> float:
    """‖δ‖₁ / ‖mask⊙δ‖₁ over the whole tensor; 1 when either is below 1e-7."""
    before = after = 0.0
    masker.reset()
    scratch = scratch_for(spans, device)
    for delta, span in zip(deltas(), spans, strict=True):
        magnitude = torch.abs(delta, out=scratch[: delta.numel()])
        before += float(magnitude.sum(dtype=torch.float64))
        after += float(_drop(magnitude, masker(delta, span)).sum(dtype=torch.float64))
    masker.reset()
    if before < _RESCALE_EPS or after < _RESCALE_EPS:
        return 1.0
    return float(torch.tensor(before, dtype=torch.float64) / after)


def _drop(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Zero `values` in place where the bool mask `keep` is false. Multiplying by
    its bytes as uint8 gives the same values (−0 for a dropped negative, NaN
    kept NaN) 3× faster than by the bool, which torch widens first."""
    return values.mul_(keep.view(torch.uint8))


def _sum(weighted: list[torch.Tensor], divisor: float) -> tuple[torch.Tensor, float]:
    numerator = weighted[0]
    for u in weighted[1:]:
        numerator.add_(u)
    return numerator, divisor


def _elect(weighted: list[torch.Tensor], weights: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ agreeing u, Σ agreeing w) for sign s = sgn⁺(Σ u): with s·u > 0 marking
    agreement, Σ [agrees]·u = s · Σ relu(s·u). Entries with u = 0 agree with neither."""
    sign = weighted[0].clone()
    for u in weighted[1:]:
        sign.add_(u)
    sign.ge_(0).mul_(2).sub_(1)  # sgn⁺: a zero sum (−0 too) elects +
    numerator = torch.zeros_like(sign)
    divisor = torch.zeros_like(sign)
    for weight, u in zip(weights, weighted, strict=True):
        agreeing = u.mul_(sign).clamp_min_(0)
        numerator.add_(agreeing)
        divisor.add_(agreeing.sign_(), alpha=weight)
    numerator.mul_(sign)
    # "zero" with a tolerance: a float sum like 0.3 + 0.3 − 0.6 is not exactly 0.
    # In arithmetic, d·k + (1 − k) with k = [|d| ≥ ε] in {0, 1}, exact either way:
    # 5× faster than torch.where here.
    keep = divisor.abs().ge_(_DIVISOR_EPS)
    divisor.mul_(keep)
    return numerator, divisor.add_(keep.sub_(1).neg_())


def _slerp(job: TensorJob) -> torch.Tensor:
    assert job.base is not None  # checked by Method.merge
    a, b = job.base, job.inputs[0]
    t = float(job.params["t"])
    if t in (0, 1):
        return cast_to_out(job, a if t == 0 else b)
    spans = spans_of(a.numel())
    dot = norm_a = norm_b = 0.0
    for span in spans:
        x, y = f32(a, span).double(), f32(b, span).double()
        dot, norm_a, norm_b = dot + float(x @ y), norm_a + float(x @ x), norm_b + float(y @ y)
    norm_a, norm_b = math.sqrt(norm_a), math.sqrt(norm_b)
    norm_a = 1.0 if norm_a <= _SLERP_NORM_EPS else norm_a
    norm_b = 1.0 if norm_b <= _SLERP_NORM_EPS else norm_b
    cosine = min(1.0, max(-1.0, dot / (norm_a * norm_b)))
    if abs(cosine) > _SLERP_LERP_ABOVE:
        # nearly (anti)parallel: sin θ ≈ 0 would blow up the slerp coefficients
        ca, cb = 1 - t, t
    else:
        theta = math.acos(cosine)
        ca, cb = math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)
    out = output_for(job, a)
    for span in spans:
        flat(out)[span] = f32(a, span).mul_(ca).add_(f32(b, span), alpha=cb)
    return out


def _nearswap(job: TensorJob) -> torch.Tensor:
    """Each element moves from the base towards the model by min(1, t / |θ₁ − θ₀|):
    where the two are within t of each other it takes the model's value, farther
    apart it stays near the base."""
    base, model = job.base, job.inputs[0]
    assert base is not None
    t = float(job.params["t"])
    out = output_for(job, base)
    for span in spans_of(base.numel()):
        a, b = f32(base, span), f32(model, span)
        weight = (t / (a - b).abs_().clamp_(min=_NEARSWAP_EPS)).clamp_(0.0, 1.0)
        flat(out)[span] = weight * b + (1 - weight) * a
    return out


def _model_stock(job: TensorJob) -> torch.Tensor:
    assert job.base is not None  # checked by Method.merge
    base = job.base
    k = len(job.inputs)
    width = row_width(base) if job.params["filter_wise"] and base.dim() > 1 else base.numel()
    out = output_for(job, base)
    # Whole tensor: one "row" of everything, its dot products summed over spans.
    # filter_wise: spans of whole rows, each row with its own interpolation factor.
    spans = spans_of(base.numel(), width if width < base.numel() else 1)
    if width == base.numel():
        gram = torch.zeros(k, k, dtype=torch.float64, device=base.device)
        for span in spans:
            d = torch.stack([f32(x, span) for x in job.inputs]).sub_(f32(base, span))
            gram += d.double() @ d.double().T
        t = _stock_t(gram.unsqueeze(0), k)
        for span in spans:
            flat(out)[span] = _stock_mix(job, base, span, t)
        return out
    for span in spans:
        d = torch.stack([f32(x, span) for x in job.inputs]).sub_(f32(base, span))
        rows = d.reshape(k, -1, width).double()
        gram = torch.einsum("irc,jrc->rij", rows, rows)
        t = _stock_t(gram, k).repeat_interleave(width)
        flat(out)[span] = _stock_mix(job, base, span, t)
    return out


def _stock_t(gram: torch.Tensor, k: int) -> torch.Tensor:
    """Per Gram matrix [r, k, k] of the deltas: t = k·c / (1 + (k−1)·c), c the mean
    pairwise cosine (each clamped to [−1, 1]); t = 0 where the denominator ≈ 0."""
    norms = torch.diagonal(gram, dim1=1, dim2=2).sqrt()
    cosine_sum = torch.zeros(gram.shape[0], dtype=torch.float64, device=gram.device)
    for i in range(k):
        for j in range(i + 1, k):
            cosine = gram[:, i, j] / (norms[:, i] * norms[:, j]).clamp_min(_STOCK_EPS)
            cosine_sum += cosine.clamp(-1.0, 1.0)
    c = (cosine_sum / (k * (k - 1) / 2)).float()
    denominator = 1 + (k - 1) * c
    degenerate = denominator.abs() < _STOCK_EPS
    return torch.where(degenerate, 0.0, k * c / torch.where(degenerate, 1.0, denominator))


def _stock_mix(job: TensorJob, base: TensorIn, span: slice, t: torch.Tensor) -> torch.Tensor:
    """t·mean(θᵢ) + (1 − t)·θ₀ over one span."""
    mean = f32(job.inputs[0], span)
    for x in job.inputs[1:]:
        mean.add_(f32(x, span))
    mean.div_(len(job.inputs))
    return mean.mul_(t).add_(f32(base, span) * (1 - t))


def _passthrough(job: TensorJob) -> torch.Tensor:
    scale = float(job.input_params[0]["scale"])
    tensor = job.inputs[0]
    if scale == 1:
        return cast_to_out(job, tensor)
    out = output_for(job, tensor)
    for span in spans_of(tensor.numel()):
        flat(out)[span] = f32(tensor, span).mul_(scale)
    return out


# ---------------------------------------------------------------- parameters

_WEIGHT = Param("weight", "float", None, "input", "Weight of this input's contribution.")
_GAMMA = Param(
    "gamma",
    "float",
    0.01,
    "input",
    "Fraction of largest-magnitude entries dropped as outliers.",
    low=0.0,
    high=1.0,
    high_open=True,
)
_EPSILON = Param(
    "epsilon",
    "float",
    0.15,
    "input",
    "Half-spread of DELLA's keep probabilities around density.",
    low=0.0,
    high=1.0,
    high_open=True,
)
_SCALE = Param("scale", "float", 1.0, "input", "Factor applied to the copied tensor.")
_LAMBDA = Param("lambda", "float", 1.0, "global", "Factor applied to the merged task vector.")
_INT8_MASK = Param(
    "int8_mask", "bool", False, "global", "Accepted for mergekit compatibility; no effect."
)
_T = Param(
    "t",
    "float",
    None,
    "global",
    "Interpolation factor: 0 = base, 1 = the other model.",
    low=0.0,
    high=1.0,
)
_FILTER_WISE = Param(
    "filter_wise", "bool", False, "global", "Compute the interpolation factor per row."
)


_NEARSWAP_T = Param(
    "t", "float", None, "global", "Distance below which the model's value is taken.", low=0.0
)
_ROW_WISE = Param(
    "nuslerp_row_wise", "bool", False, "global", "Interpolate each column vector (dim 0)."
)
_FLATTEN = Param(
    "nuslerp_flatten", "bool", True, "global", "One angle for the whole tensor; off: per vector."
)
_NORMALIZE_WEIGHTS = Param(
    "normalize_weights", "bool", True, "global", "Divide the weights by their sum."
)
_SPHERE_EPS = Param(
    "eps", "float", 1e-8, "global", "Added to norms against division by zero.", low=0.0
)
_MAX_ITER = Param("max_iter", "int", 10, "global", "Most gradient steps.", low=0.0)
_SELECT_TOPK = Param(
    "select_topk",
    "float",
    1.0,
    "global",
    "Fraction of elements kept: those of largest variance across the inputs.",
    low=0.0,
    high=1.0,
)
_RAM = "Reinforced Agent Merging (arXiv:2601.13572)"
_RAM_EPSILON = Param(
    "epsilon", "float", 1e-5, "global", "A change this small or smaller counts as none.", low=0.0
)
_RAM_R = Param("r", "float", 0.1, "global", "How much overlap scales unique changes up.")
_RAM_ALPHA = Param("alpha", "float", 0.2, "global", "The most overlap ratio that counts.")
_TOL = Param("tol", "float", 1e-5, "global", "Stop once a step is shorter than this.", low=0.0)


def _density(default: float | None) -> Param:
    return Param(
        "density",
        "float",
        default,
        "input",
        "Fraction of task-vector entries kept.",
        low=0.0,
        high=1.0,
        low_open=True,
    )


def _normalize(default: bool) -> Param:
    return Param(
        "normalize", "bool", default, "global", "Divide the merged result by the sum of weights."
    )


def _rescale(default: bool) -> Param:
    return Param(
        "rescale",
        "bool",
        default,
        "global",
        "Restore each sparsified task vector's L1 norm to its original.",
    )


def _family(
    name: str,
    reference: str,
    sparsify: Sparsifier | None,
    *,
    consensus: bool,
    extra: tuple[Param, ...],
    normalize: bool,
    combination: CombinationCheck | None = None,
) -> Method:
    return Method(
        name=name,
        reference=reference,
        params=(_WEIGHT, *extra, _normalize(normalize), _LAMBDA, _INT8_MASK),
        uses_base=True,
        min_inputs=1,
        max_inputs=None,
        formula=_task_vectors(sparsify, consensus=consensus),
        combination=combination,
    )


_TIES = "TIES-Merging (Yadav et al. 2023, arXiv:2306.01708)"
_DARE = "DARE (Yu et al. 2023, 'Language Models are Super Mario', arXiv:2311.03099)"
_BREADCRUMBS = "Model Breadcrumbs (Davari & Belilovsky 2023, arXiv:2312.06795)"
_DELLA = "DELLA-Merging (Deep et al. 2024, arXiv:2406.11617)"

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            name="linear",
            reference="Weighted average of the inputs (model soups, Wortsman et al. 2022)",
            params=(_WEIGHT, _normalize(True)),
            uses_base=False,
            min_inputs=1,
            max_inputs=None,
            formula=_linear,
        ),
        _family(
            "task_arithmetic",
            "Task arithmetic (Ilharco et al. 2023, arXiv:2212.04089)",
            None,
            consensus=False,
            extra=(),
            normalize=False,
        ),
        _family(
            "ties",
            f"{_TIES}: magnitude pruning and sign election",
            _magnitude,
            consensus=True,
            extra=(_density(1.0), _rescale(False)),
            normalize=True,
        ),
        _family(
            "dare_linear",
            f"{_DARE}: random drop, no sign election",
            _random,
            consensus=False,
            extra=(_density(None), _rescale(True)),
            normalize=False,
        ),
        _family(
            "dare_ties",
            f"{_DARE}: random drop with TIES sign election",
            _random,
            consensus=True,
            extra=(_density(None), _rescale(True)),
            normalize=False,
        ),
        _family(
            "breadcrumbs",
            f"{_BREADCRUMBS}: drop smallest and outlier entries, no sign election",
            _magnitude_outliers,
            consensus=False,
            extra=(_density(1.0), _GAMMA, _rescale(False)),
            normalize=False,
        ),
        _family(
            "breadcrumbs_ties",
            f"{_BREADCRUMBS}: drop smallest and outlier entries, with TIES sign election",
            _magnitude_outliers,
            consensus=True,
            extra=(_density(1.0), _GAMMA, _rescale(False)),
            normalize=False,
        ),
        _family(
            "della",
            f"{_DELLA}: magnitude-ranked random drop with sign election",
            _magprune,
            consensus=True,
            extra=(_density(None), _EPSILON, _rescale(True)),
            normalize=True,
            combination=_della_problem,
        ),
        _family(
            "della_linear",
            f"{_DELLA}: magnitude-ranked random drop, no sign election",
            _magprune,
            consensus=False,
            extra=(_density(None), _EPSILON, _rescale(True)),
            normalize=False,
            combination=_della_problem,
        ),
        Method(
            name="slerp",
            reference="Spherical linear interpolation (Shoemake 1985) between base and one model",
            params=(_T,),
            uses_base=True,
            min_inputs=1,
            max_inputs=1,
            formula=_slerp,
        ),
        Method(
            name="nearswap",
            reference="NearSwap (alchemonaut 2024): the model's value where it is near the base",
            params=(_NEARSWAP_T,),
            uses_base=True,
            min_inputs=1,
            max_inputs=1,
            formula=_nearswap,
        ),
        Method(
            name="nuslerp",
            reference="NuSLERP (mergekit): SLERP of two models, or of their task vectors",
            params=(_WEIGHT, _ROW_WISE, _FLATTEN),
            uses_base=True,
            base_optional=True,
            min_inputs=2,
            max_inputs=2,
            formula=spherical.nuslerp,
        ),
        Method(
            name="multislerp",
            reference="Multi-SLERP (Goddard 2024): barycentric interpolation on the hypersphere",
            params=(_WEIGHT, _NORMALIZE_WEIGHTS, _SPHERE_EPS),
            uses_base=True,
            base_optional=True,
            min_inputs=1,
            max_inputs=None,
            formula=spherical.multislerp,
        ),
        Method(
            name="karcher",
            reference="Karcher mean (arXiv:2603.04972): the Riemannian mean of the inputs",
            params=(_MAX_ITER, _TOL),
            uses_base=False,
            min_inputs=1,
            max_inputs=None,
            formula=spherical.karcher,
        ),
        Method(
            name="arcee_fusion",
            reference="Arcee Fusion (Arcee 2024): the model's changes that matter, by a KL fence",
            params=(),
            uses_base=True,
            min_inputs=1,
            max_inputs=1,
            formula=fusion.arcee_fusion,
        ),
        Method(
            name="sce",
            reference="SCE (Wan et al. 2024, arXiv:2408.07990): select, calculate, erase",
            params=(_SELECT_TOPK, _INT8_MASK),
            uses_base=True,
            min_inputs=1,
            max_inputs=None,
            formula=fusion.sce,
        ),
        Method(
            name="ram",
            reference=f"{_RAM}: unique changes kept, shared ones averaged",
            params=(_RAM_EPSILON,),
            uses_base=True,
            min_inputs=1,
            max_inputs=None,
            formula=ram.ram,
        ),
        Method(
            name="ramplus_tl",
            reference=f"{_RAM}, RAM+ tensor-local: unique changes scaled up by overlap",
            params=(_RAM_R, _RAM_ALPHA, _RAM_EPSILON),
            uses_base=True,
            min_inputs=1,
            max_inputs=None,
            formula=ram.ramplus_tl,
        ),
        Method(
            name="model_stock",
            reference="Model Stock (Jang et al. 2024, arXiv:2403.19522)",
            params=(_FILTER_WISE,),
            uses_base=True,
            min_inputs=2,
            max_inputs=None,
            formula=_model_stock,
        ),
        Method(
            name="passthrough",
            reference="Copies its single input (optionally scaled); builds layer stacks",
            params=(_SCALE,),
            uses_base=False,
            min_inputs=1,
            max_inputs=1,
            formula=_passthrough,
        ),
    )
}


def get_method(name: str) -> Method:
    """The method called `name`; an unknown name lists the valid ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise MergeConfigError(
            f"unknown merge method {name!r}", f"use one of: {', '.join(METHODS)}"
        ) from None
