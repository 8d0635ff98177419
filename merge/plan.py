"""Plan a merge: every output tensor, the input tensors it reads, its parameters.

The plan is pure bookkeeping over tensor headers — no tensor bytes are read —
so every config or input error surfaces before anything is computed or written.

A config without `slices` is one segment covering each model's whole layer
stack. With slices, each slice is a segment whose output layers follow the
previous one's; its sources' layers `start + o` feed output layer
`out_start + o`. Tensors outside the stack come from the first segment
(embeddings) or the last (final norm, head, the rest).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal

from graft.lineage.names import place_of, with_layer
from graft.merge.adapters import UNSUPPORTED_METHODS, ZeroBase, delta_sources
from graft.merge.config import InputSpec, MergeConfig, Params, ParamValue, Scalar
from graft.merge.errors import MergeConfigError, MergeInputError
from graft.merge.inputs import ModelSource, TensorInfo, is_adapter, open_model
from graft.merge.vocab import UnionVocab, union_vocab
from graft.registry import Store
from graft.registry.safetensors_header import DTYPE_BITS


@dataclass(frozen=True)
class TensorRef:
    source: int  # index into MergePlan.sources
    name: str


@dataclass(frozen=True)
class TensorTask:
    """One output tensor: what to read, with which parameters, what to write."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype written
    base: TensorRef | None
    inputs: tuple[TensorRef, ...]
    input_params: tuple[dict[str, Scalar], ...]
    params: dict[str, Scalar]
    copy: bool  # not a float: written as is when every input agrees
    vocab: bool = False  # one row per token: read through the union vocabulary

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BITS[self.dtype] // 8


@dataclass(frozen=True)
class InputUse:
    """How the merge uses one model, for lineage: role and its parameters as written."""

    source: int
    label: str
    role: Literal["base", "input"]
    params: dict[str, Any]


@dataclass(frozen=True)
class MergePlan:
    config: MergeConfig
    sources: tuple[ModelSource, ...]
    uses: tuple[InputUse, ...]
    tasks: tuple[TensorTask, ...]
    num_layers: int | None  # the output's layer count when slices changed it
    files_from: int  # the source whose config and tokenizer files are copied
    tokenizer_from: int
    method_name: str  # recorded in the lineage: the method, or e.g. "lora_fold"
    # Set when the inputs are LoRA adapters merged into one adapter: the full
    # model they adapt (None when the config names none), for lineage.
    merges_adapters: bool = False
    adapter_base: ModelSource | None = None
    # label → id of each input read from files, registered before the run so
    # that the files written name it (`output.parents`).
    registered: Mapping[str, str] = field(default_factory=dict)
    vocab: UnionVocab | None = None  # with tokenizer_source: union

    @cached_property  # asked after every tensor, for progress
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tasks)

    @property
    def base(self) -> int | None:
        return next((u.source for u in self.uses if u.role == "base"), None)


@dataclass(frozen=True)
class _Member:
    source: int
    params: Params
    start: int  # first layer read


@dataclass(frozen=True)
class _Segment:
    members: tuple[_Member, ...]
    params: Params
    length: int  # layers
    out_start: int


def build_plan(config: MergeConfig, store: Store | None) -> MergePlan:
    """Open every model the config names and plan each output tensor.

    When every input is a LoRA adapter (and the base, if named, a full model),
    the plan merges the adapters' weight updates into one adapter instead.
    """
    opened = _open_inputs(config, store)
    adapters = _adapter_inputs(config, opened)
    if adapters is not None:
        config, opened = adapters.config, adapters.sources
    sources = list(opened.values())
    index = {ref: i for i, ref in enumerate(opened)}

    def source_of(ref: str) -> int:
        if ref not in index:
            index[ref] = len(sources)
            sources.append(open_model(ref, store))
        return index[ref]

    segments = _segments(config, source_of, sources)
    base = index[config.base] if config.base is not None and config.method.uses_base else None
    reference = segments[0].members[0].source if base is None else base
    vocab = None
    if config.tokenizer_source == "union":
        order = list(dict.fromkeys([reference, *(index[ref] for ref in opened)]))
        base_model = index[config.base] if config.base is not None else None
        vocab = union_vocab(sources, order, {i: _vocab_rows(sources[i]) for i in order}, base_model)
    planner = _Planner(config, sources, base, vocab)
    tasks = [
        t for i, seg in enumerate(segments) for t in planner.segment_tasks(seg, i, len(segments))
    ]
    if not tasks:
        raise MergeInputError(
            f"{sources[reference].label}: no tensors to merge", "check the models and layer ranges"
        )
    tokenizer_from = reference
    if config.tokenizer_source not in (None, "base", "union"):
        tokenizer_from = source_of(config.tokenizer_source)
    num_layers = segments[-1].out_start + segments[-1].length if config.slices else None
    return MergePlan(
        config=config,
        sources=tuple(sources),
        uses=tuple(_uses(config, sources, index, base)),
        tasks=tuple(tasks),
        num_layers=num_layers,
        files_from=reference,
        tokenizer_from=tokenizer_from,
        method_name=config.method.name,
        merges_adapters=adapters is not None,
        adapter_base=adapters.base if adapters else None,
        vocab=vocab,
    )


def _open_inputs(config: MergeConfig, store: Store | None) -> dict[str, ModelSource]:
    refs = [m.model for m in config.models]
    refs += [s.model for sl in config.slices or () for s in sl.sources]
    return {ref: open_model(ref, store) for ref in dict.fromkeys(refs)}


@dataclass(frozen=True)
class _AdapterInputs:
    config: MergeConfig
    sources: dict[str, ModelSource]
    base: ModelSource | None


def _adapter_inputs(config: MergeConfig, opened: dict[str, ModelSource]) -> _AdapterInputs | None:
    """For a merge of adapters: the inputs as dense updates, a zero base for the
    methods that take one, and the real base kept for lineage. None otherwise."""
    inputs = {ref: s for ref, s in opened.items() if ref != config.base}
    kinds = {ref: is_adapter(s) for ref, s in inputs.items()}
    base = opened.get(config.base) if config.base is not None else None
    if not any(kinds.values()) and not (base is not None and is_adapter(base)):
        return None
    plain = [ref for ref, adapter in kinds.items() if not adapter]
    if plain or (base is not None and is_adapter(base)):
        adapters = [ref for ref, adapter in kinds.items() if adapter]
        problem = (
            f"the inputs mix full models ({', '.join(plain)}) and LoRA adapters "
            f"({', '.join(adapters)})"
            if plain
            else f"base_model {config.base!r} is a LoRA adapter"
        )
        raise MergeConfigError(
            problem,
            "merge full models (write BASE+ADAPTER to fold an adapter in), or LoRA "
            "adapters with base_model naming their base",
        )
    if config.tokenizer_source == "union":
        raise MergeConfigError(
            "tokenizer_source: union cannot merge LoRA adapters",
            "fold each into its base (BASE+ADAPTER) to merge full models",
        )
    if config.method.name in UNSUPPORTED_METHODS or config.slices:
        raise MergeConfigError(
            f"{config.method.name}{' with slices' if config.slices else ''} cannot merge "
            "adapters into an adapter",
            "merge them into a full model: write BASE+ADAPTER for each input",
        )
    deltas = delta_sources(list(inputs.values()))
    sources: dict[str, ModelSource] = dict(zip(inputs, deltas, strict=True))
    models = tuple(m for m in config.models if m.model != config.base)
    if config.method.uses_base and config.base is not None:
        sources = {config.base: ZeroBase(deltas[0].targets, base, config.base), **sources}
        models = (*models, InputSpec(config.base))
    return _AdapterInputs(replace(config, models=models), sources, base)


def _segments(config: MergeConfig, source_of: Any, sources: list[ModelSource]) -> list[_Segment]:
    if config.slices is None:
        whole = tuple(_Member(source_of(m.model), m.params, 0) for m in config.models)
        reference = source_of(config.base) if config.base else whole[0].source
        return [_Segment(whole, {}, _layer_count(sources[reference]), 0)]
    segments, out_start = [], 0
    for i, spec in enumerate(config.slices):
        members: list[_Member] = []
        lengths = set()
        for src in spec.sources:
            member = _Member(source_of(src.model), src.params, src.layer_range[0])
            available = _layer_count(sources[member.source])
            if src.layer_range[1] > available:
                raise MergeConfigError(
                    f"slices[{i}]: layer_range {list(src.layer_range)} of {src.model!r} "
                    f"goes past its {available} layers",
                    "shorten the range",
                )
            lengths.add(src.layer_range[1] - src.layer_range[0])
            members.append(member)
        if len(lengths) > 1:
            raise MergeConfigError(
                f"slices[{i}]: its sources' layer ranges differ in length ({sorted(lengths)})",
                "give every source of a slice the same number of layers",
            )
        segments.append(_Segment(tuple(members), spec.params, lengths.pop(), out_start))
        out_start += segments[-1].length
    return segments


def _vocab_rows(source: ModelSource) -> int:
    """Rows of the input embedding: the tokens the model has weights for."""
    for name, info in source.tensors.items():
        if len(info.shape) == 2 and place_of(name).block == "embedding":
            return info.shape[0]
    raise MergeInputError(
        f"{source.label!r} has no token embedding", "tokenizer_source: union merges language models"
    )


def _layer_count(source: ModelSource) -> int:
    layers = [place_of(n).layer for n in source.tensors]
    return max((x for x in layers if x is not None), default=-1) + 1


class _Planner:
    def __init__(
        self,
        config: MergeConfig,
        sources: list[ModelSource],
        base: int | None,
        vocab: UnionVocab | None,
    ) -> None:
        self.config, self.sources, self.base, self.vocab = config, sources, base, vocab
        self.method = config.method

    def segment_tasks(self, seg: _Segment, i: int, n: int) -> list[TensorTask]:
        base = next((m for m in seg.members if m.source == self.base), None)
        if self.method.needs_base and base is None:
            raise MergeConfigError(
                f"slices[{i}] has no source from base_model {self.config.base!r}",
                f"{self.method.name} needs the base in every slice",
            )
        inputs = [m for m in seg.members if m is not base or not self.method.uses_base]
        self._check_count(len(inputs), f"slices[{i}]" if self.config.slices else "models")
        reference = base or seg.members[0]
        ref_names = self.sources[reference.source].tensors
        tasks = []
        for name in _ordered(ref_names):
            layer = place_of(name).layer
            if layer is None:
                embedding = place_of(name).block == "embedding"
                if (embedding and i != 0) or (not embedding and i != n - 1):
                    continue
                tasks.append(self._task(name, name, None, None, seg, base, inputs))
            elif reference.start <= layer < reference.start + seg.length:
                offset = layer - reference.start
                t = offset / (seg.length - 1) if seg.length > 1 else 1.0
                tasks.append(
                    self._task(
                        with_layer(name, seg.out_start + offset), name, offset, t, seg, base, inputs
                    )
                )
        return tasks

    def _check_count(self, count: int, where: str) -> None:
        m = self.method
        if count < m.min_inputs or (m.max_inputs is not None and count > m.max_inputs):
            wanted = (
                f"exactly {m.min_inputs}"
                if m.max_inputs == m.min_inputs
                else f"at least {m.min_inputs}"
                if m.max_inputs is None
                else f"{m.min_inputs} to {m.max_inputs}"
            )
            besides = " besides the base" if m.uses_base else ""
            raise MergeConfigError(
                f"{m.name} takes {wanted} model(s){besides}; {where} gives {count}",
                "change the models listed or the merge_method",
            )

    def _task(
        self,
        out_name: str,
        ref_name: str,
        offset: int | None,
        t: float | None,
        seg: _Segment,
        base: _Member | None,
        inputs: list[_Member],
    ) -> TensorTask:
        def ref(member: _Member) -> TensorRef:
            name = ref_name if offset is None else with_layer(ref_name, member.start + offset)
            return TensorRef(member.source, name)

        base_ref = ref(base) if base is not None and self.method.uses_base else None
        refs = [ref(m) for m in inputs]
        info, vocab = self._info(ref(base or inputs[0]), [*([base_ref] if base_ref else []), *refs])
        if not info.is_float:
            return TensorTask(out_name, info.shape, info.dtype, base_ref, tuple(refs), (), {}, True)
        top = [seg.params, self.config.params]
        input_params = tuple(
            {
                p.name: self._value(p.name, p.default, [m.params, *top], out_name, t, m)
                for p in self.method.params
                if p.scope == "input"
            }
            for m in inputs
        )
        params = {
            p.name: self._value(p.name, p.default, top, out_name, t, None)
            for p in self.method.params
            if p.scope == "global"
        }
        dtype = self.config.out_dtype or self.config.dtype or info.dtype
        return TensorTask(
            out_name, info.shape, dtype, base_ref, tuple(refs), input_params, params, False, vocab
        )

    def _info(self, first: TensorRef, refs: list[TensorRef]) -> tuple[TensorInfo, bool]:
        """The output tensor's dtype and shape, and whether it is laid out in the
        union vocabulary (inputs then differ in rows only)."""
        expected = self.sources[first.source].tensors.get(first.name)
        assert expected is not None
        vocab = self.vocab
        if vocab is not None and not vocab.covers(first.source, first.name, expected):
            vocab = None
        for r in refs:
            got = self.sources[r.source].tensors.get(r.name)
            label = self.sources[r.source].label
            if got is None:
                raise MergeInputError(
                    f"tensor {r.name} is missing from {label!r}",
                    "merge models of the same architecture (tensors present in only some "
                    "inputs cannot be merged)",
                )
            if vocab is not None and vocab.covers(r.source, r.name, got):
                same = got.shape[1:] == expected.shape[1:]
            else:
                same = got.shape == expected.shape
            if not same:
                raise MergeInputError(
                    f"tensor {r.name}: shape {list(got.shape)} in {label!r} but "
                    f"{list(expected.shape)} in {self.sources[first.source].label!r}",
                    "merge models with the same shapes (for different vocabularies: "
                    "tokenizer_source: union)",
                )
        if vocab is not None:
            return TensorInfo(expected.dtype, (vocab.size, *expected.shape[1:])), True
        return expected, False

    def _value(
        self,
        name: str,
        default: Scalar | None,
        scopes: list[Params],
        tensor: str,
        t: float | None,
        member: _Member | None,
    ) -> Scalar:
        """First scope whose value matches `tensor` wins, then the default."""
        for scope in scopes:
            value = scope[name].at(tensor, t) if name in scope else None
            if value is not None:
                return value
        if default is None:
            whose = f" of {self.sources[member.source].label!r}" if member else ""
            raise MergeConfigError(
                f"parameter {name!r}{whose} has no value for tensor {tensor}",
                f"{self.method.name} requires it: set it in the model's or the top-level "
                "parameters (a filter list needs an entry matching every tensor)",
            )
        return default


def _ordered(names: dict[str, TensorInfo]) -> list[str]:
    """Embeddings, then the layer stack in order, then the rest: a stable order
    that also keeps each layer's tensors together in the output shards."""

    def key(name: str) -> tuple[int, int, str]:
        place = place_of(name)
        if place.layer is not None:
            return (1, place.layer, name)
        return (0 if place.block == "embedding" else 2, 0, name)

    return sorted(names, key=key)


def _uses(
    config: MergeConfig, sources: list[ModelSource], index: dict[str, int], base: int | None
) -> list[InputUse]:
    """Each model once, with the parameters the config gave it (its own, else the
    slice's or the top level's, as written; defaults filled in)."""
    uses: dict[int, InputUse] = {}
    members: list[tuple[str, Params, Params]]
    if config.slices is None:
        members = [(m.model, m.params, {}) for m in config.models]
    else:
        members = [(s.model, s.params, sl.params) for sl in config.slices for s in sl.sources]
    for ref, own, slice_params in members:
        i = index[ref]
        if i in uses:
            continue
        role: Literal["base", "input"] = "base" if i == base else "input"
        params: dict[str, Any] = {}
        if role == "input" or not config.method.uses_base:
            for p in config.method.params:
                if p.scope != "input":
                    continue
                written = own.get(p.name) or slice_params.get(p.name) or config.params.get(p.name)
                if written is not None:
                    params[p.name] = _plain(written)
                elif p.default is not None:
                    params[p.name] = p.default
        uses[i] = InputUse(i, ref, role, params)
    if config.tokenizer_source not in (None, "base") and config.tokenizer_source in index:
        i = index[config.tokenizer_source]
        uses.setdefault(i, InputUse(i, config.tokenizer_source, "input", {"tokenizer": True}))
    return sorted(uses.values(), key=lambda u: (u.role != "base", u.source))


def _plain(value: ParamValue) -> Any:
    """A parameter as YAML wrote it: a scalar, a gradient list, or filter entries."""
    if len(value.entries) == 1 and value.entries[0][0] is None:
        v = value.entries[0][1]
        return list(v) if isinstance(v, tuple) else v
    return [
        {
            **({"filter": f} if f is not None else {}),
            "value": list(v) if isinstance(v, tuple) else v,
        }
        for f, v in value.entries
    ]
