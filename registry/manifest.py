"""Manifests: the immutable, self-checking record of one artifact.

A manifest lists the artifact's files in order; a safetensors file is its
header blob (the 8 length bytes plus the JSON, padding and all) followed by one
blob per tensor in data order, so export rebuilds it byte for byte. The id is
a hash of the files alone, so the same content always gets the same id; a
checksum over the whole document catches edits to the rest.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from graft.registry.blobs import hash_bytes

FORMAT_VERSION = 1

Kind = Literal["model", "adapter", "merge", "checkpoint"]
KINDS: tuple[str, ...] = get_args(Kind)
Relation = Literal["finetune", "adapter", "merge", "quantized", "checkpoint"]


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
    return manifest


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
