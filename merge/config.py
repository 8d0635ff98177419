"""Merge configs: mergekit-style YAML read into checked, frozen values.

The YAML means what it means to mergekit 0.1.5 (../shared/MERGE_SEMANTICS.md),
with one difference: keys graft does not know, and parameters the method does
not use, are errors naming the key instead of being dropped silently.

A parameter value is a scalar, a gradient (a list of numbers interpolated over
the layer stack) or a list of `{filter, value}` entries; `ParamValue.at`
evaluates it for one tensor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from graft.merge.errors import MergeConfigError
from graft.merge.methods import Method, get_method

DType = Literal["F32", "F16", "BF16"]
DTYPES: dict[str, DType] = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "fp32": "F32",
    "fp16": "F16",
    "bf16": "BF16",
}

Scalar = float | bool


@dataclass(frozen=True)
class ParamValue:
    """One parameter's value as written: a scalar, a gradient, or filter entries.

    `entries` holds (filter, value) pairs, where a filter of None matches every
    tensor and a value is a scalar or a gradient (tuple of numbers).
    """

    entries: tuple[tuple[str | None, Scalar | tuple[float, ...]], ...]

    def at(self, tensor: str, t: float | None) -> Scalar | None:
        """The value for `tensor` at relative depth `t` (None outside the layer
        stack: a gradient gives its first value); None when no filter matches."""
        for pattern, value in self.entries:
            if pattern is None or pattern == "*" or pattern in tensor:
                return _interpolate(value, t) if isinstance(value, tuple) else value
        return None

    def scalars(self) -> list[Scalar]:
        return [x for _, v in self.entries for x in (v if isinstance(v, tuple) else (v,))]


def _interpolate(gradient: tuple[float, ...], t: float | None) -> float:
    if t is None or len(gradient) == 1:
        return gradient[0]
    x = t * (len(gradient) - 1)
    i = min(math.floor(x), len(gradient) - 2)
    return gradient[i] + (x - i) * (gradient[i + 1] - gradient[i])


Params = Mapping[str, ParamValue]


@dataclass(frozen=True)
class InputSpec:
    """One entry of `models:`; `model` is a REF, a path or `BASE+ADAPTER`."""

    model: str
    params: Params = field(default_factory=dict)


@dataclass(frozen=True)
class SliceSource:
    model: str
    layer_range: tuple[int, int]  # half-open
    params: Params = field(default_factory=dict)


@dataclass(frozen=True)
class SliceSpec:
    sources: tuple[SliceSource, ...]
    params: Params = field(default_factory=dict)


@dataclass(frozen=True)
class MergeConfig:
    """A checked merge config. `models` lists the inputs in config order; the
    base, when not listed there, is appended without parameters."""

    method: Method
    base: str | None
    models: tuple[InputSpec, ...]
    slices: tuple[SliceSpec, ...] | None
    params: Params
    dtype: DType | None
    out_dtype: DType | None
    tokenizer_source: str | None
    document: dict[str, Any]  # the YAML as read, for the model card and metadata


TOP_KEYS = (
    "merge_method",
    "base_model",
    "models",
    "slices",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
)


def load_config(path: Path) -> MergeConfig:
    """Read and check a YAML merge config file."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise MergeConfigError(f"{path}: cannot read ({e.strerror})", "check the path") from e
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise MergeConfigError(f"{path}: not valid YAML{line}", "fix the syntax") from e
    return parse_config(doc, source=str(path))


def parse_config(doc: object, *, source: str = "config") -> MergeConfig:
    """Check a config already read into Python values."""
    where = _Where(source)
    mapping = where.mapping(doc, "the config", TOP_KEYS)
    if "merge_method" not in mapping:
        raise MergeConfigError(f"{source}: merge_method is missing", "name a merge method")
    method = get_method(where.string(mapping["merge_method"], "merge_method"))
    base = where.string(mapping["base_model"], "base_model") if "base_model" in mapping else None
    params = where.params(mapping.get("parameters"), "parameters", method)

    models: tuple[InputSpec, ...] = ()
    slices: tuple[SliceSpec, ...] | None = None
    if "models" in mapping and "slices" in mapping:
        raise MergeConfigError(f"{source}: both models and slices given", "use one of them")
    if "slices" in mapping:
        slices = tuple(
            where.slice(s, f"slices[{i}]", method)
            for i, s in enumerate(where.sequence(mapping["slices"], "slices"))
        )
        if not slices:
            raise MergeConfigError(f"{source}: slices is empty", "list at least one slice")
    else:
        entries = where.sequence(mapping.get("models", []), "models")
        models = tuple(where.input(m, f"models[{i}]", method) for i, m in enumerate(entries))
        if base is not None and all(m.model != base for m in models):
            models = (*models, InputSpec(base))
        if not models:
            raise MergeConfigError(f"{source}: no models to merge", "list them under models:")

    if method.needs_base and base is None:
        raise MergeConfigError(
            f"{source}: {method.name} needs base_model", "name the model the others were tuned from"
        )
    return MergeConfig(
        method=method,
        base=base,
        models=models,
        slices=slices,
        params=params,
        dtype=where.dtype(mapping.get("dtype"), "dtype"),
        out_dtype=where.dtype(mapping.get("out_dtype"), "out_dtype"),
        tokenizer_source=where.optional_string(mapping.get("tokenizer_source"), "tokenizer_source"),
        document=mapping,
    )


@dataclass(frozen=True)
class _Where:
    """Checks parts of the document, naming the key at fault in errors."""

    source: str

    def fail(self, key: str, problem: str, hint: str) -> MergeConfigError:
        return MergeConfigError(f"{self.source}: {key} {problem}", hint)

    def mapping(self, value: object, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, "must be a mapping", "see the README for an example config")
        for k in value:
            if k not in allowed:
                raise self.fail(
                    f"{key}: key {k!r}", "is not known", f"allowed here: {', '.join(allowed)}"
                )
        return value

    def sequence(self, value: object, key: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(key, "must be a list", "write it as a YAML list (- item)")
        return value

    def string(self, value: object, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, "must be a non-empty string", "write a name, path or REF")
        return value

    def optional_string(self, value: object, key: str) -> str | None:
        return None if value is None else self.string(value, key)

    def dtype(self, value: object, key: str) -> DType | None:
        if value is None:
            return None
        if not isinstance(value, str) or value not in DTYPES:
            raise self.fail(
                key, f"{value!r} is not a dtype graft writes", "use " + ", ".join(DTYPES)
            )
        return DTYPES[value]

    def input(self, value: object, key: str, method: Method) -> InputSpec:
        if isinstance(value, str):  # mergekit accepts a bare model name too
            return InputSpec(value)
        entry = self.mapping(value, key, ("model", "parameters"))
        if "model" not in entry:
            raise self.fail(key, "has no model", "add model: REF")
        model = self.string(entry["model"], f"{key}.model")
        params = self.params(entry.get("parameters"), f"{key}.parameters", method, per_model=True)
        return InputSpec(model, params)

    def slice(self, value: object, key: str, method: Method) -> SliceSpec:
        entry = self.mapping(value, key, ("sources", "parameters"))
        sources = []
        for i, s in enumerate(self.sequence(entry.get("sources"), f"{key}.sources")):
            k = f"{key}.sources[{i}]"
            src = self.mapping(s, k, ("model", "layer_range", "parameters"))
            if "model" not in src or "layer_range" not in src:
                raise self.fail(k, "needs model and layer_range", "add both")
            bounds = src["layer_range"]
            if (
                not isinstance(bounds, list)
                or len(bounds) != 2
                or not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)
                or not 0 <= bounds[0] < bounds[1]
            ):
                raise self.fail(
                    f"{k}.layer_range", f"{bounds!r} is not [start, end)", "e.g. [0, 16]"
                )
            sources.append(
                SliceSource(
                    self.string(src["model"], f"{k}.model"),
                    (bounds[0], bounds[1]),
                    self.params(src.get("parameters"), f"{k}.parameters", method, per_model=True),
                )
            )
        if not sources:
            raise self.fail(f"{key}.sources", "is empty", "list at least one source")
        return SliceSpec(
            tuple(sources), self.params(entry.get("parameters"), f"{key}.parameters", method)
        )

    def params(
        self, value: object, key: str, method: Method, *, per_model: bool = False
    ) -> dict[str, ParamValue]:
        if value is None:
            return {}
        names = tuple(p.name for p in method.params)
        out = {}
        for name, raw in self.mapping(value, key, names).items():
            param = method.param(name)
            assert param is not None  # checked by mapping()
            if per_model and param.scope == "global":
                raise self.fail(
                    f"{key}.{name}",
                    "applies to the whole merge, not to one model",
                    "set it under the top-level (or the slice's) parameters",
                )
            parsed = self.value(raw, f"{key}.{name}")
            for scalar in parsed.scalars():
                problem = param.check(scalar)
                if problem:
                    raise self.fail(f"{key}.{name}", f"= {scalar!r}: {problem}", param.doc)
            out[name] = parsed
        return out

    def value(self, raw: object, key: str) -> ParamValue:
        if _is_scalar(raw):
            return ParamValue(((None, _scalar(raw)),))
        if isinstance(raw, list) and raw and all(_is_number(x) for x in raw):
            return ParamValue(((None, tuple(float(x) for x in raw)),))
        if isinstance(raw, list) and raw and all(isinstance(x, dict) for x in raw):
            entries = []
            for i, item in enumerate(raw):
                item = self.mapping(item, f"{key}[{i}]", ("filter", "value"))
                if "value" not in item:
                    raise self.fail(f"{key}[{i}]", "has no value", "add value: NUMBER")
                pattern = item.get("filter")
                if pattern is not None and not isinstance(pattern, str):
                    raise self.fail(f"{key}[{i}].filter", "must be a string", "e.g. mlp")
                inner = self.value(item["value"], f"{key}[{i}].value")
                if len(inner.entries) != 1 or inner.entries[0][0] is not None:
                    raise self.fail(
                        f"{key}[{i}].value",
                        "cannot nest filters",
                        "use a number or a list of numbers",
                    )
                entries.append((pattern, inner.entries[0][1]))
            return ParamValue(tuple(entries))
        raise self.fail(
            key,
            f"= {raw!r} is not a value",
            "use a number, true/false, a list of numbers, or a list of {filter, value}",
        )


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _is_scalar(x: object) -> bool:
    return isinstance(x, bool) or _is_number(x)


def _scalar(x: Any) -> Scalar:
    return x if isinstance(x, bool) else float(x)
