"""Raw bytes against bytes on disk, per artifact and for the whole store."""

from __future__ import annotations

from dataclasses import dataclass

from graft.registry.errors import CorruptBlob
from graft.registry.manifest import Manifest
from graft.registry.store import Store


@dataclass(frozen=True)
class Usage:
    """Raw bytes (what the blobs decode to) against bytes on disk."""

    name: str  # "store", or an artifact's NAME@N
    raw_bytes: int
    stored_bytes: int

    @property
    def ratio(self) -> float:
        return self.stored_bytes / self.raw_bytes if self.raw_bytes else 1.0


def usage(store: Store, ref: str | None = None) -> tuple[Usage, list[Usage]]:
    """Raw vs stored bytes of the whole store (each blob on disk once), and of each
    artifact (or of `ref`)."""
    manifests = [store.resolve_ref(ref)] if ref else store.load_manifests()
    rows = [artifact_usage(store, m) for m in manifests]
    on_disk = [_sizes(store, key) for key in list(store.blobs.keys())]
    total = Usage("store", sum(r for r, _ in on_disk), sum(s for _, s in on_disk))
    return total, rows


def artifact_usage(store: Store, manifest: Manifest) -> Usage:
    """Raw vs stored bytes of the blobs an artifact names, each once, shared or not."""
    sizes = [_sizes(store, k) for k in {k for f in manifest.files for k in f.blob_keys()}]
    return Usage(manifest.ref, sum(r for r, _ in sizes), sum(s for _, s in sizes))


def _sizes(store: Store, key: str) -> tuple[int, int]:
    """(raw, stored) bytes of a blob; (0, 0) when it is missing or damaged."""
    try:
        with store.blobs.open(key) as blob:
            return blob.size, blob.stored_size
    except CorruptBlob:
        return 0, 0
