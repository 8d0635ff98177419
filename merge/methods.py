"""The one registry of merge methods: names, typed parameters and per-tensor formulas.

Each `Method` in `METHODS` declares its parameters (named as in mergekit YAML, with type,
default and scope) so the planner, the CLI and the TUI all validate against one source, and
its `merge(job)` turns one `TensorJob` (fp32 tensors on one device) into one fp32 output
tensor. The formulas follow graft's merge-semantics specification (mergekit 0.1.5 meaning):

- linear, passthrough: weighted average / copy of the inputs; the base is not special.
- task_arithmetic, ties, dare_*, breadcrumbs*, della*: task vectors δᵢ = θᵢ − θ₀, sparsified
  per input (magnitude, random, magnitude outliers, DELLA magprune), optionally L1-rescaled,
  weighted, optionally sign-elected, normalized, scaled by lambda and added back to θ₀.
- slerp, model_stock: interpolations between the base and the other input(s).

Random masks (DARE, DELLA) come from a CPU generator keyed by (seed, tensor name, input index),
so they are identical whatever the thread count, tensor order or device (results then agree up
to the rounding of float reductions such as L1 norms, which torch may order differently).
Pure torch: no file I/O, no global state. Merge functions never modify the job's tensors, and
may return one of them unchanged (passthrough at scale 1, slerp at t = 0 or 1).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import xxhash

from merge.errors import MergeConfigError, MergeInputError

ParamKind = Literal["float", "bool"]
Scope = Literal["input", "global"]
ParamValue = float | bool

# The spec's tolerances: below the epsilons a norm, divisor or denominator counts as zero.
_RESCALE_EPS = 1e-7
_DIVISOR_EPS = 1e-8
_SLERP_NORM_EPS = 1e-8
_SLERP_LERP_ABOVE = 0.9995
_STOCK_EPS = 1e-6


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
        too_low = self.low is not None and (
            number < self.low or (self.low_open and number == self.low)
        )
        too_high = self.high is not None and (
            number > self.high or (self.high_open and number == self.high)
        )
        if too_low or too_high:
            return f"must be in {self.range_text}"
        return None


@dataclass(frozen=True)
class TensorJob:
    """Everything one output tensor's merge needs, already in fp32 on one device.

    `inputs` are the non-base inputs θ1..θN in config order (for linear and passthrough: all
    inputs, the base included if it is one); an input's index in this tuple keys its random
    mask. `input_params[i]` holds input i's input-scope values and `params` the global ones;
    missing values that have a default are filled in by `Method.merge`.
    """

    name: str
    base: torch.Tensor | None
    inputs: tuple[torch.Tensor, ...]
    input_params: tuple[dict[str, ParamValue], ...]
    params: dict[str, ParamValue]
    seed: int = 0


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
    uses_base: bool
    min_inputs: int
    max_inputs: int | None
    formula: Formula
    combination: CombinationCheck | None = None

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
        if self.uses_base and job.base is None:
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


def keyed_uniform(seed: int, name: str, index: int, shape: Sequence[int]) -> torch.Tensor:
    """Uniform [0, 1) fp32 draws on CPU for input `index` of tensor `name` under `seed`.

    The generator is seeded from a hash of the three, so the draws never depend on what else
    is merged, in which order, on how many threads or on which device.
    """
    key = xxhash.xxh3_64_intdigest(f"{seed}\x00{name}\x00{index}".encode())
    generator = torch.Generator(device="cpu")
    generator.manual_seed(key)
    return torch.rand(tuple(shape), generator=generator, dtype=torch.float32)


def keep_mask(
    seed: int,
    name: str,
    index: int,
    shape: Sequence[int],
    keep_prob: float | torch.Tensor,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Bool mask: element kept where its keyed draw < `keep_prob` (a number or per element).

    A tensor `keep_prob` is compared on its own device (comparing identical fp32 values is
    exact everywhere); the mask is returned on `device`, else on `keep_prob`'s, else on CPU.
    """
    draws = keyed_uniform(seed, name, index, shape)
    if isinstance(keep_prob, torch.Tensor):
        mask = draws.to(keep_prob.device) < keep_prob.to(torch.float32)
    else:
        mask = draws < keep_prob
    return mask if device is None else mask.to(device)


# ---------------------------------------------------------------- helpers


def _weights(job: TensorJob) -> list[float]:
    return [float(values["weight"]) for values in job.input_params]


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    """A 2-D view whose rows are the tensor's rows; 0-D and 1-D tensors are one row."""
    if tensor.dim() <= 1:
        return tensor.reshape(1, tensor.numel())
    # explicit width: reshape(0, -1) is ambiguous for empty tensors
    return tensor.reshape(tensor.shape[0], math.prod(tensor.shape[1:]))


def _rank_mask(values: torch.Tensor, k: int, *, largest: bool) -> torch.Tensor:
    """Bool mask of exactly the k largest (or smallest) entries of a 1-D tensor.

    A kthvalue threshold avoids sorting the whole tensor; entries equal to the threshold are
    taken lowest index first, so the count is exact and deterministic.
    """
    n = values.numel()
    if k <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(values, dtype=torch.bool)
    threshold = _kth_smallest(values, n - k + 1 if largest else k)
    mask = values > threshold if largest else values < threshold
    short = k - int(torch.count_nonzero(mask))
    if short > 0:
        ties = torch.nonzero(values == threshold).squeeze(1)[:short]
        mask[ties] = True
    return mask


_SAMPLE = 1 << 16


def _kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """torch.kthvalue(values, k).values, exactly, in about a third of the time
    on large tensors: a strided sample brackets the answer, then only the
    entries inside the bracket are selected from (full select if it misses)."""
    n = values.numel()
    if n <= 16 * _SAMPLE:
        return torch.kthvalue(values, k).values
    sample = torch.sort(values[:: n // _SAMPLE]).values
    m = sample.numel()
    at = (k - 1) * m // n
    margin = 8 * math.isqrt(m) + 16
    lo, hi = sample[max(at - margin, 0)], sample[min(at + margin, m - 1)]
    below = int(torch.count_nonzero(values < lo))
    inside = values[(values >= lo) & (values <= hi)]
    if below < k <= below + inside.numel():
        return torch.kthvalue(inside, k - below).values
    return torch.kthvalue(values, k).values


def _l1(tensor: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(tensor, ord=1)


# ---------------------------------------------------------------- sparsifiers
# Each gets the unweighted task vector and returns a keep-mask, or None for "keep all".

Sparsifier = Callable[
    [torch.Tensor, Mapping[str, ParamValue], TensorJob, int], "torch.Tensor | None"
]


def _magnitude(
    delta: torch.Tensor, values: Mapping[str, ParamValue], job: TensorJob, index: int
) -> torch.Tensor | None:
    """TIES: keep the k = max(1, ⌊ρn⌋) entries of largest |δ| over the whole tensor."""
    density = float(values["density"])
    if density >= 1:
        return None
    if density <= 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    k = max(1, math.floor(density * delta.numel()))
    return _rank_mask(delta.abs().reshape(-1), k, largest=True).reshape(delta.shape)


def _random(
    delta: torch.Tensor, values: Mapping[str, ParamValue], job: TensorJob, index: int
) -> torch.Tensor | None:
    """DARE: keep each entry independently with probability ρ (keyed mask)."""
    density = float(values["density"])
    if density >= 1:
        return None
    return keep_mask(job.seed, job.name, index, delta.shape, density, delta.device)


def _magnitude_outliers(
    delta: torch.Tensor, values: Mapping[str, ParamValue], job: TensorJob, index: int
) -> torch.Tensor | None:
    """Breadcrumbs: with |δ| ascending, keep ranks b … b+t−1 (t = ⌊ρn⌋, b = n − t − ⌊γn⌋)."""
    density = float(values["density"])
    if density >= 1:
        return None
    n = delta.numel()
    kept = math.floor(density * n)
    outliers = math.floor(float(values["gamma"]) * n)
    dropped = max(0, n - kept - outliers)
    magnitude = delta.abs().reshape(-1)
    # both masks break ties lowest index first, so the smaller is a subset of the larger
    mask = _rank_mask(magnitude, dropped + kept, largest=False)
    mask &= ~_rank_mask(magnitude, dropped, largest=False)
    return mask.reshape(delta.shape)


def _della_problem(values: Mapping[str, ParamValue]) -> str | None:
    density, epsilon = float(values["density"]), float(values["epsilon"])
    if density < 1 and not (density - epsilon > 0 and density + epsilon < 1):
        return (
            f"della needs density - epsilon > 0 and density + epsilon < 1, "
            f"got density {density:g} and epsilon {epsilon:g}"
        )
    return None


def _magprune(
    delta: torch.Tensor, values: Mapping[str, ParamValue], job: TensorJob, index: int
) -> torch.Tensor | None:
    """DELLA: per row, rank r (0-based, |δ| ascending) kept with p = ρ − ε + 2ε·r/(n_row − 1).

    A row of one element has no spread to rank, so it gets p = ρ (avoids dividing by zero).
    """
    density, epsilon = float(values["density"]), float(values["epsilon"])
    if density >= 1:
        return None
    if density <= 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    rows = _rows(delta.abs())
    n_row = rows.shape[1]
    if n_row <= 1:
        by_rank = torch.full((n_row,), density, dtype=torch.float64)
    else:
        by_rank = (density - epsilon) + 2 * epsilon * torch.arange(n_row, dtype=torch.float64) / (
            n_row - 1
        )
    # built on CPU so the probabilities are bit-identical on every device
    by_rank = by_rank.to(device=delta.device, dtype=torch.float32)
    order = torch.argsort(rows, dim=1, stable=True)
    prob = torch.empty_like(rows).scatter_(1, order, by_rank.expand_as(rows))
    return keep_mask(job.seed, job.name, index, delta.shape, prob.reshape(delta.shape))


# ---------------------------------------------------------------- formulas


def _linear(job: TensorJob) -> torch.Tensor:
    weights = _weights(job)
    total = math.fsum(weights)
    normalize = bool(job.params["normalize"])
    if normalize and abs(total) < _DIVISOR_EPS:
        raise MergeInputError(
            f"the linear weights for tensor {job.name!r} sum to 0, so normalize cannot divide "
            "by them",
            "change the weights or set normalize: false",
        )
    out = torch.zeros_like(job.inputs[0])
    for weight, tensor in zip(weights, job.inputs, strict=True):
        out.add_(tensor, alpha=weight)
    return out.div_(total) if normalize else out


def _task_vectors(sparsify: Sparsifier | None, *, consensus: bool) -> Formula:
    """The task-vector family: sparsify, rescale, weight, (elect signs), normalize, lambda."""

    def formula(job: TensorJob) -> torch.Tensor:
        assert job.base is not None  # checked by Method.merge
        base = job.base
        weights = _weights(job)
        rescale = bool(job.params.get("rescale", False))
        # sign election needs every weighted vector; without it a running sum is enough
        weighted: list[torch.Tensor] = []
        numerator: torch.Tensor | None = None
        for index, (tensor, values) in enumerate(zip(job.inputs, job.input_params, strict=True)):
            delta = tensor - base
            mask = sparsify(delta, values, job, index) if sparsify else None
            if mask is not None:
                before = _l1(delta) if rescale else None
                delta.mul_(mask)
                if before is not None:
                    after = _l1(delta)
                    usable = (before >= _RESCALE_EPS) & (after >= _RESCALE_EPS)
                    # stays on the device: no sync per input
                    delta.mul_(torch.where(usable, before / after.clamp_min(_RESCALE_EPS), 1.0))
            u = delta.mul_(weights[index])
            if consensus:
                weighted.append(u)
            elif numerator is None:
                numerator = u
            else:
                numerator.add_(u)

        divisor: torch.Tensor | float
        if consensus:
            # With s = sgn⁺(Σ u), the agreeing entries are those with s·u > 0, so
            # Σ [agrees]·u = s · Σ relu(s·u): a few in-place passes per input.
            sign = torch.zeros_like(base)
            for u in weighted:
                sign.add_(u)
            sign = torch.where(sign >= 0, 1.0, -1.0)  # sgn⁺: a zero sum elects +
            numerator = torch.zeros_like(base)
            divisor = torch.zeros_like(base)
            for weight, u in zip(weights, weighted, strict=True):
                agreeing = u.mul_(sign).clamp_min_(0)  # u = 0 agrees with neither sign
                numerator.add_(agreeing)
                divisor.add_(agreeing.sign_(), alpha=weight)
            del weighted
            numerator.mul_(sign)
            # "zero" with the same tolerance as below: a float sum like 0.3 + 0.3 − 0.6 is
            # not exactly 0 and must not blow the result up
            divisor = torch.where(divisor.abs() < _DIVISOR_EPS, 1.0, divisor)
        else:
            divisor = math.fsum(weights)
            if abs(divisor) < _DIVISOR_EPS:
                divisor = 1.0
        assert numerator is not None  # at least one input
        if job.params["normalize"]:
            numerator.div_(divisor)
        return numerator.mul_(float(job.params["lambda"])).add_(base)

    return formula


def _slerp(job: TensorJob) -> torch.Tensor:
    assert job.base is not None  # checked by Method.merge
    a, b = job.base, job.inputs[0]
    t = float(job.params["t"])
    if t == 0:
        return a
    if t == 1:
        return b
    norm_a = float(torch.linalg.vector_norm(a))
    norm_b = float(torch.linalg.vector_norm(b))
    norm_a = 1.0 if norm_a <= _SLERP_NORM_EPS else norm_a
    norm_b = 1.0 if norm_b <= _SLERP_NORM_EPS else norm_b
    cosine = float(torch.dot(a.reshape(-1), b.reshape(-1))) / (norm_a * norm_b)
    cosine = min(1.0, max(-1.0, cosine))
    if abs(cosine) > _SLERP_LERP_ABOVE:
        # nearly (anti)parallel: sin θ ≈ 0 would blow up the slerp coefficients
        return a.mul(1 - t).add_(b, alpha=t)
    theta = math.acos(cosine)
    sin_theta = math.sin(theta)
    return a.mul(math.sin((1 - t) * theta) / sin_theta).add_(
        b, alpha=math.sin(t * theta) / sin_theta
    )


def _model_stock(job: TensorJob) -> torch.Tensor:
    assert job.base is not None  # checked by Method.merge
    base = job.base
    k = len(job.inputs)
    filter_wise = bool(job.params["filter_wise"])
    # per row: [rows, cols] views; whole tensor: one row of everything
    deltas = [
        _rows(tensor - base) if filter_wise else (tensor - base).reshape(1, -1)
        for tensor in job.inputs
    ]
    norms = [torch.linalg.vector_norm(d, dim=1) for d in deltas]
    cosine_sum = torch.zeros_like(norms[0])
    for i in range(k):
        for j in range(i + 1, k):
            dot = torch.einsum("rc,rc->r", deltas[i], deltas[j])
            cosine = dot / (norms[i] * norms[j]).clamp_min(_STOCK_EPS)
            cosine_sum.add_(cosine.clamp_(-1.0, 1.0))
    del deltas
    c = cosine_sum / (k * (k - 1) / 2)
    denominator = 1 + (k - 1) * c
    degenerate = denominator.abs() < _STOCK_EPS
    t = torch.where(degenerate, 0.0, k * c / torch.where(degenerate, 1.0, denominator))
    # one t per row, broadcast over the rest of the row
    t = t.reshape(-1, *([1] * (base.dim() - 1))) if filter_wise and base.dim() > 1 else t.sum()
    mean = torch.zeros_like(base)
    for tensor in job.inputs:
        mean.add_(tensor)
    mean.div_(k)
    return mean.mul_(t).add_(base * (1 - t))


def _passthrough(job: TensorJob) -> torch.Tensor:
    scale = float(job.input_params[0]["scale"])
    tensor = job.inputs[0]
    return tensor if scale == 1 else tensor * scale


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
