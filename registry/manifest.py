"""Manifests: the immutable, self-checking record of one artifact.

A manifest lists the artifact's files in order; a safetensors file is its
header blob (the 8 length bytes plus the JSON, padding and all) followed by one
blob per tensor in data order, so export rebuilds it byte for byte. The id is
a hash of the files alone, so the same content always gets the same id; a
checksum over the whole document catches edits to the rest.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from graft.registry.keys import hash_bytes

FORMAT_VERSION = 1
KEY = re.compile(r"[0-9a-f]{32}")

Kind = Literal["model", "adapter", "merge", "checkpoint"]
KINDS: tuple[str, ...] = get_args(Kind)
Relation = Literal["finetune", "adapter", "merge", "quantized", "checkpoint", "extract"]


@dataclass(frozen=True)
class TensorRecord:
    """A tensor of a safetensors file; `offset` is relative to the data buffer."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    blob: str


@dataclass(frozen=True)
class FileRecord:
    """One file of an artifact, as it sat in the added folder.

    For a safetensors file `blob` holds the header bytes and `tensors` the
    data; any other file is the single blob `blob`.
    """

    path: str
    size: int
    blob: str
    tensors: tuple[TensorRecord, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def is_safetensors(self) -> bool:
        return self.path.endswith(".safetensors")

    def blob_keys(self) -> list[str]:
        return [self.blob, *(t.blob for t in self.tensors)]


@dataclass(frozen=True)
class Parent:
    """An edge to a parent; `params` says how it was used (a merge's weight, density...)."""

    id: str
    relation: Relation
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    id: str
    name: str
    version: int
    kind: Kind
    created_at: str  # ISO 8601, UTC
    source: str | None
    files: tuple[FileRecord, ...]
    parents: tuple[Parent, ...] = ()
    method: str | None = None
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def tensors(self) -> list[tuple[FileRecord, TensorRecord]]:
        return [(f, t) for f in self.files for t in f.tensors]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_json(self) -> bytes:
        doc = {"format": FORMAT_VERSION, **asdict(self)}
        doc["checksum"] = hash_bytes(_canonical(doc))
        return json.dumps(doc, indent=1).encode()


def content_id(files: tuple[FileRecord, ...]) -> str:
    """Hash of what the files hold, independent of names, dates and metadata."""
    return hash_bytes(_canonical([[f.path, f.blob_keys()] for f in files]))


def parse_manifest(data: bytes) -> Manifest:
    """Rebuild a manifest from its JSON; ValueError when it is damaged."""
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if doc.pop("format", None) != FORMAT_VERSION:
        raise ValueError("unknown manifest format")
    if doc.pop("checksum", None) != hash_bytes(_canonical({"format": FORMAT_VERSION, **doc})):
        raise ValueError("checksum mismatch")
    files = tuple(
        FileRecord(
            path=f["path"],
            size=f["size"],
            blob=f["blob"],
            tensors=tuple(TensorRecord(**{**t, "shape": tuple(t["shape"])}) for t in f["tensors"]),
            metadata=f["metadata"],
        )
        for f in doc.pop("files")
    )
    parents = tuple(Parent(**p) for p in doc.pop("parents"))
    manifest = Manifest(files=files, parents=parents, **doc)
    if manifest.id != content_id(files):
        raise ValueError("id does not match the files listed")
    _check(manifest)
    return manifest


def _check(m: Manifest) -> None:
    """What export and pull rely on, for a manifest from anywhere (a remote too):
    keys are keys, paths stay inside the artifact's folder, sizes add up."""
    for key in [m.id, *(p.id for p in m.parents), *(k for f in m.files for k in f.blob_keys())]:
        if not (isinstance(key, str) and KEY.fullmatch(key)):
            raise ValueError(f"{key!r} is not a key")
    paths = [f.path for f in m.files]
    if len(set(paths)) != len(paths):
        raise ValueError("a file is listed twice")
    for f in m.files:
        if not _safe_path(f.path):
            raise ValueError(f"file path {f.path!r} leaves the artifact's folder")
        if not _natural(f.size) or any(not _natural(n) for n in _numbers(f)):
            raise ValueError(f"{f.path}: sizes are not natural numbers")
        if sum(t.nbytes for t in f.tensors) > f.size:
            raise ValueError(f"{f.path}: its tensors hold more bytes than the file")


def _safe_path(path: object) -> bool:
    if not isinstance(path, str) or path.startswith("/") or any(c in path for c in "\\\0"):
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def _natural(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def _numbers(f: FileRecord) -> list[object]:
    return [n for t in f.tensors for n in (t.offset, t.nbytes, *t.shape)]


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
