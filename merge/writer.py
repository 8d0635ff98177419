"""Stream planned tensors into safetensors shards, one tensor at a time.

Every tensor's dtype and shape is known from the plan, so each shard's header
is written first and tensor bytes are appended as they are computed: memory
never holds more than the tensor being written. Metadata that is only known at
the end (which tensors the merge changed) goes into space reserved in the
header — JSON allows trailing spaces — rewritten in place by `finish`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from graft.registry.direct import DirectWriter
from graft.registry.fsutil import fsync_dir, write_atomic

INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    dtype: str  # safetensors dtype
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class _Shard:
    file: str
    tensors: tuple[PlannedTensor, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def shard_layout(
    tensors: list[PlannedTensor], shard_size: int, single_name: str = "model.safetensors"
) -> list[_Shard]:
    """Tensors in order, a new shard whenever the next would pass `shard_size`."""
    groups: list[list[PlannedTensor]] = [[]]
    size = 0
    for t in tensors:
        if groups[-1] and size + t.nbytes > shard_size:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += t.nbytes
    if len(groups) == 1:
        return [_Shard(single_name, tuple(groups[0]))]
    n = len(groups)
    return [
        _Shard(f"model-{i:05d}-of-{n:05d}.safetensors", tuple(g)) for i, g in enumerate(groups, 1)
    ]


class ShardWriter:
    """Writes the tensors of `layout` into `folder`, in order, as they come."""

    def __init__(
        self,
        folder: Path,
        tensors: list[PlannedTensor],
        shard_size: int,
        metadata: dict[str, str],
        *,
        single_name: str = "model.safetensors",
    ) -> None:
        self.folder = folder
        self.shards = shard_layout(tensors, shard_size, single_name)
        # Room for late metadata: at most every tensor name, JSON-quoted twice.
        self._reserve = 2 * len(json.dumps([t.name for t in tensors])) + 256
        self._metadata = dict(metadata)
        self._header_len: dict[str, int] = {}
        self._queue = [(s, t) for s in self.shards for t in s.tensors]
        self._next = 0
        self._file: DirectWriter | None = None  # the open shard's

    @property
    def files(self) -> list[str]:
        return [s.file for s in self.shards]

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next planned tensor (must come in plan order, right dtype/shape)."""
        shard, planned = self._queue[self._next]
        assert name == planned.name and tuple(tensor.shape) == planned.shape, name
        if planned is shard.tensors[0]:
            self._open(shard)
        assert self._file is not None
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        assert data.nbytes == planned.nbytes, name
        self._file.write(data.data)
        self._next += 1
        if planned is shard.tensors[-1]:
            self._close()

    def finish(self, late_metadata: dict[str, str]) -> None:
        """Put `late_metadata` into every header, flush everything to disk and
        write the shard index (when there is more than one shard)."""
        assert self._next == len(self._queue), "not every planned tensor was written"
        self._metadata.update(late_metadata)
        for shard in self.shards:
            header = self._header(shard, self._header_len[shard.file])
            fd = os.open(self.folder / shard.file, os.O_WRONLY)
            try:
                os.pwrite(fd, header, 8)
                os.fsync(fd)
            finally:
                os.close(fd)
        if len(self.shards) > 1:
            index = {
                "metadata": {"total_size": sum(s.nbytes for s in self.shards)},
                "weight_map": {t.name: s.file for s in self.shards for t in s.tensors},
            }
            write_atomic(self.folder / INDEX_NAME, json.dumps(index, indent=2).encode())
        fsync_dir(self.folder)

    def close(self) -> None:
        self._close()

    def _open(self, shard: _Shard) -> None:
        header = self._header(shard, None)
        self._header_len[shard.file] = len(header)
        fd = os.open(self.folder / shard.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self._file = DirectWriter(fd)
        self._file.write(len(header).to_bytes(8, "little"))
        self._file.write(header)

    def _close(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            finally:
                os.close(self._file.fd)
                self._file = None

    def _header(self, shard: _Shard, length: int | None) -> bytes:
        """The header JSON, padded with spaces to `length` (or to a multiple of 8
        plus the reserve for late metadata)."""
        doc: dict[str, object] = {"__metadata__": self._metadata}
        offset = 0
        for t in shard.tensors:
            doc[t.name] = {
                "dtype": t.dtype,
                "shape": list(t.shape),
                "data_offsets": [offset, offset + t.nbytes],
            }
            offset += t.nbytes
        raw = json.dumps(doc, separators=(",", ":")).encode()
        if length is None:
            length = -(-(len(raw) + self._reserve) // 8) * 8
        if len(raw) > length:
            raise AssertionError("late metadata outgrew the space reserved for it")
        return raw + b" " * (length - len(raw))
