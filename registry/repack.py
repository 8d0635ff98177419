"""`graft repack` and `graft du`: compact stored blobs, and say what they cost.

`add` writes blobs raw, at the speed of a copy; repack encodes them afterwards
(`registry.codecs`): a tensor whose parent holds a tensor of the same name
and element count becomes a delta against it, any other a solo encoding, and
a blob that would not shrink by `MIN_SAVING` stays raw. Artifacts go oldest
first, so a parent is encoded before its children refer to it, and the blobs
of one artifact are encoded in parallel.

Each encoded blob is written to a temp file, fsynced and renamed over the raw
one: a reader that has the raw one open keeps reading it, and a kill at any
moment leaves every blob either raw or completely encoded. Repack holds the
store's shared pin (so `gc` cannot delete a reference it is about to use)
and a lock of its own (one repack at a time).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from graft.registry.blobs import BlobReader
from graft.registry.codecs import (
    DELTA_DTYPES,
    ITEM_SIZES,
    MAGIC,
    MIN_SAVING,
    TAIL,
    Chunk,
    Codec,
    Footer,
    chunk_spans,
)
from graft.registry.errors import CorruptBlob, StoreError
from graft.registry.fsutil import file_lock, fsync_dir
from graft.registry.manifest import Manifest, TensorRecord
from graft.registry.store import Store
from graft.registry.transforms import convert_reference, encode_chunk

MAX_CHAIN = 8  # deltas of deltas: deeper chains are re-based on their root, like a key frame
MIN_BYTES = 64 * 1024  # smaller blobs stay raw: frames and footer would eat the gain


@dataclass(frozen=True)
class Target:
    """A raw blob to encode, and the reference it may be a delta against."""

    key: str
    dtype: str
    nbytes: int
    ref: str | None
    ref_dtype: str | None


@dataclass(frozen=True)
class RepackResult:
    encoded: int  # blobs encoded now
    kept_raw: int  # tried, but encoding would not save enough
    bytes_before: int  # on disk, of the blobs looked at
    bytes_after: int


@dataclass(frozen=True)
class Usage:
    """Raw bytes (what the blobs decode to) against bytes on disk."""

    name: str  # "store", or an artifact's NAME@N
    raw_bytes: int
    stored_bytes: int

    @property
    def ratio(self) -> float:
        return self.stored_bytes / self.raw_bytes if self.raw_bytes else 1.0


def repack(
    store: Store,
    ref: str | None = None,
    *,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> RepackResult:
    """Encode the raw tensor blobs of `ref` (default: every artifact)."""
    lock = store.locks_dir / "repack.lock"
    with (
        store.pin_blobs(),
        file_lock(lock, shared=False, timeout=store.lock_timeout, what="the repack lock"),
    ):
        manifests = [store.resolve_ref(ref)] if ref else _oldest_first(store)
        tried = _TriedLog(store.stat_cache.root / "repack-kept-raw")
        # What is raw now; references are chosen wave by wave, once the parents are done.
        waves, seen = [], set(tried.keys)
        for m in manifests:
            waves.append((m, _raw_tensors(store, m, seen)))
        total, done = sum(t.nbytes for _, wave in waves for t in wave), 0
        encoded = kept = before = after = 0
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            for m, tensors in waves:
                parents = _parent_tensors(store, m)
                wave = [_target(store, t, parents.get(t.name)) for t in tensors]
                for target, stored in zip(
                    wave, pool.map(lambda t: _encode(store, t), wave), strict=True
                ):
                    before += target.nbytes
                    if stored is None:
                        kept += 1
                        after += target.nbytes
                        tried.add(target.key)
                    else:
                        encoded += 1
                        after += stored
                    done += target.nbytes
                    if on_progress:
                        on_progress(done, total)
                for folder in {store.blobs.path(t.key).parent for t in wave}:
                    fsync_dir(folder)
    return RepackResult(encoded, kept, before, after)


def _oldest_first(store: Store) -> list[Manifest]:
    manifests = []
    for artifact_id in store.manifest_ids():
        with contextlib.suppress(StoreError):  # damaged ones are `verify`'s to report
            manifests.append(store.load_manifest(artifact_id))
    return sorted(manifests, key=lambda m: (m.created_at, m.id))


class _TriedLog:
    """Keys tried and kept raw, so later repacks skip them (an append-only file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            lines = path.read_text().split()
        except FileNotFoundError:
            lines = []
        self.keys = {k for k in lines if len(k) == 32}  # a torn last line is ignored

    def add(self, key: str) -> None:
        self.keys.add(key)
        with open(self.path, "a") as f:
            f.write(key + "\n")


def _raw_tensors(store: Store, manifest: Manifest, seen: set[str]) -> list[TensorRecord]:
    """The tensors of `manifest` whose blobs are raw and not yet seen (adds them to `seen`)."""
    found = []
    for _, t in manifest.tensors:
        if t.nbytes < MIN_BYTES or t.dtype not in ITEM_SIZES or t.blob in seen:
            continue
        seen.add(t.blob)
        if not _is_encoded(store, t.blob):
            found.append(t)
    return found


def _target(store: Store, t: TensorRecord, theirs: TensorRecord | None) -> Target:
    return Target(t.blob, t.dtype, t.nbytes, *_reference_for(store, t, theirs))


def _parent_tensors(store: Store, manifest: Manifest) -> dict[str, TensorRecord]:
    """Tensors of the artifact's parents by name (the first parent holding a name wins)."""
    found: dict[str, TensorRecord] = {}
    for parent in manifest.parents:
        try:
            theirs = store.load_manifest(parent.id)
        except StoreError:  # removed since: the child is encoded on its own
            continue
        for _, t in theirs.tensors:
            found.setdefault(t.name, t)
    return found


def _is_encoded(store: Store, key: str) -> bool:
    try:
        with store.blobs.open(key) as blob:
            return blob.footer is not None
    except CorruptBlob:
        return True  # missing or damaged: nothing to encode; `verify` reports it


def _reference_for(
    store: Store, t: TensorRecord, theirs: TensorRecord | None
) -> tuple[str | None, str | None]:
    """The blob (and its dtype) that `t` may be a delta against, if any."""
    if (
        theirs is None
        or theirs.blob == t.blob
        or t.dtype not in DELTA_DTYPES
        or theirs.dtype not in DELTA_DTYPES
        or t.nbytes // ITEM_SIZES[t.dtype] != theirs.nbytes // ITEM_SIZES[theirs.dtype]
    ):
        return None, None
    chain = _chain(store, theirs.blob, theirs.dtype)
    if any(key == t.blob for key, _ in chain):
        return None, None  # it would refer to itself
    return chain[0] if len(chain) <= MAX_CHAIN else chain[-1]  # len(chain): t's depth


def _chain(store: Store, key: str, dtype: str) -> list[tuple[str, str]]:
    """`key` and the blobs it is a delta against, in order, each with its dtype."""
    chain = [(key, dtype)]
    while len(chain) <= MAX_CHAIN:
        try:
            with store.blobs.open(chain[-1][0]) as blob:
                footer = blob.footer
        except CorruptBlob:
            break
        if not footer or not footer.ref or not footer.ref_dtype:
            break
        chain.append((footer.ref, footer.ref_dtype))
    return chain


def _encode(store: Store, target: Target) -> int | None:
    """Encode one blob in place; its stored size, or None when it stays raw."""
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(store.blobs.open(target.key))
        if source.footer:
            return source.stored_size  # encoded meanwhile by someone else
        ref = stack.enter_context(store.blobs.open(target.ref)) if target.ref else None
        fd, tmp = tempfile.mkstemp(dir=store.work.mine(), prefix="repack-")
        try:
            with os.fdopen(fd, "wb") as out:
                _write_encoded(out, target, source, ref)
                stored = out.tell()
                if stored > target.nbytes * (1 - MIN_SAVING):
                    raise _NotWorthIt
                os.fchmod(out.fileno(), 0o444)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, store.blobs.path(target.key))
            return stored
        except _NotWorthIt:
            return None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


class _NotWorthIt(Exception):
    pass


def _reference_span(target: Target, ref: BlobReader, offset: int, length: int) -> np.ndarray:
    assert target.ref_dtype is not None
    mine, theirs = ITEM_SIZES[target.dtype], ITEM_SIZES[target.ref_dtype]
    data = ref.read(offset // mine * theirs, length // mine * theirs)
    return convert_reference(data, target.ref_dtype, target.dtype)


def _write_encoded(
    out: BinaryIO, target: Target, source: BlobReader, ref: BlobReader | None
) -> None:
    """Write the encoded blob: a delta when it encodes the first chunk smaller than solo."""
    out.write(MAGIC)
    codec: Codec = "delta" if ref else "solo"
    chunks: list[Chunk] = []
    for offset, length in chunk_spans(target.nbytes, ITEM_SIZES[target.dtype]):
        raw = source.read(offset, length)
        if codec == "solo":
            chunk, frames = encode_chunk("solo", target.dtype, raw, None)
        else:
            assert ref is not None
            reference = _reference_span(target, ref, offset, length)
            chunk, frames = encode_chunk("delta", target.dtype, raw, reference)
            if not chunks:
                solo = encode_chunk("solo", target.dtype, raw, None)
                if sum(solo[0].planes) <= sum(chunk.planes):
                    codec, (chunk, frames) = "solo", solo
        for frame in frames:
            out.write(frame)
        chunks.append(chunk)
    delta = codec == "delta"
    footer = Footer(
        codec,
        target.dtype,
        target.nbytes,
        target.ref if delta else None,
        target.ref_dtype if delta else None,
        tuple(chunks),
    )
    data = footer.to_json()
    out.write(data)
    out.write(TAIL.pack(len(data), MAGIC))


def usage(store: Store, ref: str | None = None) -> tuple[Usage, list[Usage]]:
    """Raw vs stored bytes of the whole store, and of each artifact (or of `ref`).

    An artifact counts every blob it names once, shared or not; the store
    counts each blob on disk once.
    """
    sizes: dict[str, tuple[int, int]] = {}  # key -> (raw, stored)

    def size_of(key: str) -> tuple[int, int]:
        if key not in sizes:
            try:
                with store.blobs.open(key) as blob:
                    sizes[key] = (blob.size, blob.stored_size)
            except CorruptBlob:
                sizes[key] = (0, 0)
        return sizes[key]

    manifests = [store.resolve_ref(ref)] if ref else _oldest_first(store)
    rows = []
    for m in manifests:
        keys = {k for f in m.files for k in f.blob_keys()}
        raw = sum(size_of(k)[0] for k in keys)
        rows.append(Usage(m.ref, raw, sum(size_of(k)[1] for k in keys)))
    on_disk = [size_of(key) for key in list(store.blobs.keys())]
    total = Usage("store", sum(r for r, _ in on_disk), sum(s for _, s in on_disk))
    return total, rows
