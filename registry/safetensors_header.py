"""Read and validate the header of a safetensors file without loading its data.

The format: 8 bytes little-endian header length N, N bytes of UTF-8 JSON (an
object mapping tensor names to {dtype, shape, data_offsets} plus an optional
``__metadata__`` of strings), then the data buffer. The safetensors library
accepts some inputs we must not (it keeps the last of duplicate names), so every
rule is checked here and broken ones raise `InvalidArtifact` naming the file.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.registry.errors import InvalidArtifact

HEADER_CAP = 100 * 1024 * 1024  # the safetensors library's own limit

# Bits per element of every dtype the safetensors format defines.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "I64": 64,
    "U64": 64,
    "F64": 64,
}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"})


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file; offsets are relative to the data buffer."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    """The parsed header of one file; `tensors` are in data-buffer order."""

    path: Path
    header_len: int  # N, the JSON's length in bytes
    metadata: dict[str, str]
    tensors: tuple[TensorEntry, ...]

    @property
    def data_start(self) -> int:
        return 8 + self.header_len


def read_header(path: Path) -> SafetensorsHeader:
    """Parse and validate `path`'s header; raise `InvalidArtifact` on any defect."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _bad(path, f"file is {size} bytes, too short for a safetensors header")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > HEADER_CAP:
                raise _bad(path, f"header length {header_len} exceeds the {HEADER_CAP}-byte cap")
            if 8 + header_len > size:
                raise _bad(
                    path,
                    f"header length {header_len} runs past the end of the {size}-byte file "
                    "(truncated, or not a safetensors file)",
                )
            raw = f.read(header_len)
    except OSError as e:
        raise InvalidArtifact(f"{path}: cannot read ({e.strerror})", "check the path") from e
    tensors, metadata = _parse_json(path, raw)
    return SafetensorsHeader(
        path=path,
        header_len=header_len,
        metadata=metadata,
        tensors=_check_layout(path, tensors, size - 8 - header_len),
    )


def _bad(path: Path, what: str) -> InvalidArtifact:
    return InvalidArtifact(f"{path}: {what}", "re-save it with safetensors or check the file")


def _parse_json(path: Path, raw: bytes) -> tuple[list[TensorEntry], dict[str, str]]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _bad(path, f"header is not UTF-8 (byte {e.start})") from e

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise _bad(path, f"tensor name {key!r} appears twice in the header")
            seen[key] = value
        return seen

    try:
        obj = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise _bad(path, f"header is not valid JSON ({e.msg} at char {e.pos})") from e
    except ValueError as e:  # e.g. an integer past Python's digit limit
        raise _bad(path, f"header is not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise _bad(path, f"header is a JSON {type(obj).__name__}, not an object")

    metadata = obj.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _bad(path, "__metadata__ must map strings to strings")
    return [_parse_entry(path, name, spec) for name, spec in obj.items()], metadata


def _parse_entry(path: Path, name: str, spec: Any) -> TensorEntry:
    if not isinstance(spec, dict):
        raise _bad(path, f"tensor {name!r}: entry is not an object")
    dtype = spec.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise _bad(path, f"tensor {name!r}: unknown dtype {dtype!r}")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise _bad(path, f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    offsets = spec.get("data_offsets")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise _bad(
            path, f"tensor {name!r}: data_offsets {offsets!r} is not two non-negative integers"
        )
    begin, end = offsets
    if begin > end:
        raise _bad(path, f"tensor {name!r}: data_offsets [{begin}, {end}] are reversed")
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits != 8 * (end - begin):
        need = f"{bits // 8} bytes" if bits % 8 == 0 else f"{bits} bits"
        raise _bad(
            path,
            f"tensor {name!r}: shape {shape} of {dtype} needs {need} "
            f"but data_offsets span {end - begin}",
        )
    return TensorEntry(name, dtype, tuple(shape), begin, end)


def _is_count(value: Any) -> bool:
    # bool is an int subclass; JSON `true` is not a dimension.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(
    path: Path, tensors: list[TensorEntry], buffer_len: int
) -> tuple[TensorEntry, ...]:
    """The data buffer must be exactly the tensors, back to back, in some order."""
    ordered = sorted(tensors, key=lambda t: (t.begin, t.end))
    position = 0
    for t in ordered:
        if t.begin > position:
            raise _bad(
                path, f"tensor {t.name!r}: gap of {t.begin - position} bytes before its data"
            )
        if t.begin < position:
            raise _bad(path, f"tensor {t.name!r}: data overlaps the previous tensor's")
        position = t.end
    if position > buffer_len:
        raise _bad(
            path,
            f"tensor data ends at byte {position} of a {buffer_len}-byte data buffer "
            "(truncated file?)",
        )
    if position < buffer_len:
        raise _bad(path, f"{buffer_len - position} bytes after the last tensor belong to none")
    return tuple(ordered)
