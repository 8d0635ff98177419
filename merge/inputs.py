"""The models a merge reads, one tensor at a time, whatever they are.

A model reference in a config is a local path (file or folder), `hf:ORG/NAME`,
a registered artifact (NAME, NAME@N, id prefix), or `BASE+ADAPTER`: the base
with a LoRA adapter folded in, computed per tensor as it is read. Every source
only ever holds the headers; tensor bytes are read when asked for.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from graft.lineage.hub import is_hub_ref, resolve_hub
from graft.lineage.tensors import TORCH_DTYPES, load_tensor
from graft.merge.errors import AdapterError, MergeConfigError, MergeInputError
from graft.merge.lora import LoraAdapter, check_base, fold, read_adapter
from graft.registry import ArtifactNotFound, Manifest, Store
from graft.registry.pull import resolve_local
from graft.registry.safetensors_header import DTYPE_BITS, FLOAT_DTYPES, SafetensorsHeader
from graft.registry.sources import scan


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors dtype: F32, BF16, ...
    shape: tuple[int, ...]

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BITS[self.dtype] // 8


class ModelSource(Protocol):
    """A model (or adapter) whose tensors can be read one by one."""

    @property
    def label(self) -> str:
        """The reference as the config wrote it."""

    @property
    def tensors(self) -> dict[str, TensorInfo]: ...

    @property
    def artifact_id(self) -> str | None:
        """Its id in the store, when it is registered."""

    @property
    def path(self) -> Path | None:
        """The local folder or file it was read from, when not from the store."""

    def load(self, name: str) -> torch.Tensor:
        """The tensor in its own dtype, on the CPU."""

    def load_f32(self, name: str) -> torch.Tensor: ...

    def companion(self, rel: str) -> bytes | None:
        """A non-weights file (config.json, tokenizer files, ...) by relative path."""

    def companions(self) -> list[str]: ...


@dataclass
class StoredModel:
    """A registered artifact, read from its blobs."""

    store: Store
    manifest: Manifest
    label: str
    tensors: dict[str, TensorInfo] = field(init=False)

    def __post_init__(self) -> None:
        self._records = {t.name: t for _, t in self.manifest.tensors}
        self.tensors = {n: TensorInfo(t.dtype, t.shape) for n, t in self._records.items()}

    @property
    def artifact_id(self) -> str:
        return self.manifest.id

    @property
    def path(self) -> None:
        return None

    def load(self, name: str, into: torch.Tensor | None = None) -> torch.Tensor:
        return load_tensor(self.store, self._records[name], into)

    def load_f32(self, name: str) -> torch.Tensor:
        return self.load(name).to(torch.float32)

    def companion(self, rel: str) -> bytes | None:
        for f in self.manifest.files:
            if f.path == rel and not f.tensors:
                return self.store.blobs.read(f.blob)
        return None

    def companions(self) -> list[str]:
        return [f.path for f in self.manifest.files if not f.is_safetensors]


@dataclass
class LocalModel:
    """A folder or safetensors file on disk, read with positioned reads."""

    path: Path
    label: str
    tensors: dict[str, TensorInfo] = field(init=False)

    def __post_init__(self) -> None:
        source = scan(self.path)
        if source.pickles and not source.weights:
            raise MergeConfigError(
                f"model {self.label!r}: its weights are pickled, which graft does not unpickle",
                "add it with `graft add --allow-pickle` and merge the registered artifact",
            )
        self._companions = source.companions
        self._where: dict[str, tuple[SafetensorsHeader, int, int]] = {}
        for header in source.weights.values():
            for t in header.tensors:
                self._where[t.name] = (header, header.data_start + t.begin, t.nbytes)
        self.tensors = {
            t.name: TensorInfo(t.dtype, t.shape)
            for header in source.weights.values()
            for t in header.tensors
        }

    @property
    def artifact_id(self) -> None:
        return None

    def load(self, name: str, into: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor, read into the uint8 buffer `into` (of its byte size) when given."""
        header, offset, nbytes = self._where[name]
        info = self.tensors[name]
        data = _read_exact(header.path, offset, nbytes, name, into)
        return data.view(TORCH_DTYPES[info.dtype]).reshape(info.shape)

    def load_f32(self, name: str) -> torch.Tensor:
        return self.load(name).to(torch.float32)

    def companion(self, rel: str) -> bytes | None:
        path = self._companions.get(rel)
        if path is None:
            return None
        try:
            return path.read_bytes()
        except OSError as e:  # e.g. permissions; not the output's fault
            raise MergeInputError(
                f"{path}: cannot read it ({e.strerror})",
                "make it readable, or merge the registered artifact instead",
            ) from e

    def companions(self) -> list[str]:
        return list(self._companions)


@dataclass
class FoldedModel:
    """`BASE+ADAPTER`: the base's tensors, with the adapter's updates folded in
    (in fp32) as each is read."""

    base: ModelSource
    adapter: ModelSource
    lora: LoraAdapter
    label: str

    @property
    def tensors(self) -> dict[str, TensorInfo]:
        return self.base.tensors

    @property
    def artifact_id(self) -> None:
        return None

    @property
    def path(self) -> None:
        return None

    def load(self, name: str) -> torch.Tensor:
        if name not in self.lora.updates:
            return self.base.load(name)
        return self.load_f32(name).to(TORCH_DTYPES[self.tensors[name].dtype])

    def load_f32(self, name: str) -> torch.Tensor:
        update = self.lora.updates.get(name)
        base = self.base.load_f32(name)
        return fold(update, base, self.adapter.load_f32) if update else base

    def companion(self, rel: str) -> bytes | None:
        return self.base.companion(rel)

    def companions(self) -> list[str]:
        return self.base.companions()


@dataclass(frozen=True)
class SpanTensor:
    """A large float tensor read a span of elements at a time (from a blob or a
    safetensors file): what the merge formulas see of very large tensors."""

    read: Callable[[int, int], torch.Tensor]  # (byte offset in the tensor, length) -> uint8
    shape: torch.Size
    dtype: torch.dtype
    device: torch.device

    def numel(self) -> int:
        return self.shape.numel()

    def dim(self) -> int:
        return len(self.shape)

    def span(self, span: slice) -> torch.Tensor:
        size = self.dtype.itemsize
        data = self.read(span.start * size, (span.stop - span.start) * size)
        return data.view(self.dtype).to(self.device)


def _read_exact(
    path: Path, offset: int, nbytes: int, what: str, into: torch.Tensor | None = None
) -> torch.Tensor:
    """`nbytes` at `offset`, read straight into the uint8 buffer a tensor will use
    (`into`, when given; torch.empty does not zero a fresh one)."""
    data = torch.empty(nbytes, dtype=torch.uint8) if into is None else into
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:  # e.g. a blob deleted from a damaged store
        raise MergeInputError(
            f"{path}: cannot read {what} ({e.strerror})",
            "run `graft verify` if it is in the store, then re-add what it reports",
        ) from e
    try:
        got = os.preadv(fd, [data.numpy().data], offset) if nbytes else 0
    finally:
        os.close(fd)
    if got != nbytes:
        raise MergeConfigError(
            f"{path}: ends inside {what}", "the file changed or is truncated; re-save it"
        )
    return data


def span_tensor(source: ModelSource, name: str, device: torch.device) -> SpanTensor | None:
    """`name` as a SpanTensor, when `source` holds it as plain float bytes."""
    info = source.tensors[name]
    if not info.is_float or not all(info.shape):
        return None
    shape, dtype = torch.Size(info.shape), TORCH_DTYPES[info.dtype]
    if isinstance(source, StoredModel):
        blob = source.store.blobs.open(source._records[name].blob, name)

        def read_blob(offset: int, nbytes: int) -> torch.Tensor:
            data = torch.empty(nbytes, dtype=torch.uint8)
            blob.readinto(offset, data.numpy().data)
            blob.prefetch(offset + nbytes, nbytes)  # the next span decodes while this merges
            return data

        return SpanTensor(read_blob, shape, dtype, device)
    if isinstance(source, LocalModel):
        header, start, _ = source._where[name]
        path = header.path

        def read_file(offset: int, nbytes: int) -> torch.Tensor:
            return _read_exact(path, start + offset, nbytes, "a tensor")

        return SpanTensor(read_file, shape, dtype, device)
    return None


def is_adapter(source: ModelSource) -> bool:
    return source.companion("adapter_config.json") is not None


def open_model(ref: str, store: Store | None) -> ModelSource:
    """Open a model reference; `BASE+ADAPTER` folds the adapter into the base."""
    if "+" in ref and not Path(ref).exists():
        base_ref, adapter_ref = ref.split("+", 1)
        base, adapter = open_model(base_ref, store), open_model(adapter_ref, store)
        if is_adapter(base) or not is_adapter(adapter):
            raise MergeConfigError(
                f"model {ref!r}: BASE+ADAPTER needs a full model before the + and a "
                "LoRA adapter after it",
                "check the order and the two references",
            )
        lora = open_lora(adapter)
        try:
            check_base(lora, {n: t.shape for n, t in base.tensors.items()})
        except AdapterError as e:
            raise AdapterError(f"{ref}: {e.message}", e.hint) from e
        return FoldedModel(base, adapter, lora, ref)
    path = Path(ref)
    if is_hub_ref(ref):
        path, _ = resolve_hub(ref)
    if path.exists():
        return LocalModel(path, ref)
    if store is not None:
        try:
            return StoredModel(store, resolve_local(store, ref), ref)
        except ArtifactNotFound:
            pass
    raise MergeConfigError(
        f"model {ref!r} is neither a file or folder nor a registered artifact",
        "check the path, or `graft ls` for registered names",
    )


def open_lora(adapter: ModelSource) -> LoraAdapter:
    raw = adapter.companion("adapter_config.json")
    try:
        config = json.loads(raw or b"")
    except ValueError as e:
        raise AdapterError(
            f"{adapter.label}: adapter_config.json is not valid JSON", "fix or re-save it"
        ) from e
    return read_adapter(config, {n: t.shape for n, t in adapter.tensors.items()})
