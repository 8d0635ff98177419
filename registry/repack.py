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

After an add, `after_add` leaves a request (`locks/repack-wanted`) and starts
`python -m graft.registry.repack STORE` detached, like `git gc --auto`. A
background repack that finds another running leaves: the running one sees
the request when it is done, and goes round again.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

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
from graft.registry.decoded import Raw
from graft.registry.direct import DirectWriter
from graft.registry.errors import CorruptBlob, GraftError, StoreBusy, StoreError
from graft.registry.fsutil import file_lock, fsync_dir
from graft.registry.manifest import Manifest, TensorRecord
from graft.registry.settings import load as load_settings
from graft.registry.store import Store

if TYPE_CHECKING:
    import numpy as np

MAX_CHAIN = 8  # deltas of deltas: deeper chains are re-based on their root, like a key frame
MIN_BYTES = 64 * 1024  # smaller blobs stay raw: frames and footer would eat the gain
TRIAL_BYTES = 256 * 1024  # a delta's start, encoded both ways to choose between delta and solo
WANTED = "repack-wanted"  # in locks/: an add asked for a repack
KEPT_RAW = "repack-kept-raw"  # in cache/: blobs tried, or added with --no-compress


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


def repack(
    store: Store,
    ref: str | None = None,
    *,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> RepackResult:
    """Encode the raw tensor blobs of `ref` (default: every artifact), once any
    repack already running has finished."""
    if not load_settings(store).compress:
        raise StoreError(
            f"{store.root}: compression is off for this store",
            "turn it on with `graft config compress true`",
        )
    with _repack_lock(store, store.lock_timeout):
        return _repack(store, ref, workers, on_progress)


def _repack_lock(store: Store, timeout: float) -> contextlib.AbstractContextManager[None]:
    return file_lock(
        store.locks_dir / "repack.lock", shared=False, timeout=timeout, what="the repack lock"
    )


def _repack(
    store: Store,
    ref: str | None,
    workers: int | None,
    on_progress: Callable[[int, int], None] | None,
) -> RepackResult:
    with store.pin_blobs():
        manifests = [store.resolve_ref(ref)] if ref else store.load_manifests()
        tried = _TriedLog(store.cache_dir / KEPT_RAW)
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


RepackMode = Literal["background", "inline", "off"]


def repack_mode(store: Store) -> RepackMode:
    """How an add compacts the store: $GRAFT_REPACK, else the store's settings.
    Checked before an add writes anything, so a bad value stops it early."""
    settings = load_settings(store)
    mode = os.environ.get("GRAFT_REPACK") or ("background" if settings.auto_repack else "off")
    if mode not in ("background", "inline", "off"):
        raise StoreError(
            f"GRAFT_REPACK={mode!r} is not one of background, inline, off",
            "fix or unset GRAFT_REPACK",
        )
    return cast(RepackMode, mode) if settings.compress else "off"


def after_add(
    store: Store,
    manifest: Manifest,
    *,
    mode: RepackMode,
    compress: bool,
    detached: str = "graft.registry.repack",
) -> None:
    """What follows an add: with `compress` false its blobs stay raw for good; then
    the store compacts as `mode` says, in the background by running the module
    `detached` (its main calls `run_requested`)."""
    if not compress:
        tried = _TriedLog(store.cache_dir / KEPT_RAW)
        for _, t in manifest.tensors:
            tried.add(t.blob)
    if mode == "inline":
        with _repack_lock(store, store.lock_timeout):
            _repack(store, None, None, None)
    elif mode == "background":
        (store.locks_dir / WANTED).touch()
        subprocess.Popen(
            [sys.executable, "-m", detached, str(store.root)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # outlives the add, and its terminal
        )


def run_requested(store: Store, before_pass: Callable[[], object] = lambda: None) -> None:
    """Repack while requests keep coming, calling `before_pass` first each time;
    leave at once when another repack runs."""
    wanted = store.locks_dir / WANTED
    while wanted.exists():
        try:
            with _repack_lock(store, 0):
                while wanted.exists():  # a request that comes during a pass gets a pass
                    wanted.unlink(missing_ok=True)
                    before_pass()
                    _repack(store, None, None, None)
        except StoreBusy:
            return  # the one running sees the request when it is done


class _TriedLog:
    """Keys to keep raw: tried and not worth encoding, or added with --no-compress
    (an append-only file, so later repacks skip them)."""

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
            try:
                out = DirectWriter(fd)
                _write_encoded(out, target, source, ref)
                stored = out.tell()
                if stored > target.nbytes * (1 - MIN_SAVING):
                    raise _NotWorthIt
                out.flush()
                os.fchmod(fd, 0o444)
                os.fsync(fd)
            finally:
                os.close(fd)
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
    from graft.registry.transforms import convert_reference  # numpy: only when encoding

    assert target.ref_dtype is not None
    mine, theirs = ITEM_SIZES[target.dtype], ITEM_SIZES[target.ref_dtype]
    data = ref.read(offset // mine * theirs, length // mine * theirs)
    return convert_reference(data, target.ref_dtype, target.dtype)


def _write_encoded(
    out: DirectWriter, target: Target, source: BlobReader, ref: BlobReader | None
) -> None:
    """Write the encoded blob: a delta when it encodes the start of the blob
    smaller than solo does."""
    from graft.registry.transforms import encode_chunk  # numpy: only when encoding

    out.write(MAGIC)
    codec: Codec = "delta" if ref else "solo"
    chunks: list[Chunk] = []
    for offset, length in chunk_spans(target.nbytes, ITEM_SIZES[target.dtype]):
        raw = source.read(offset, length)
        reference = None
        if codec == "delta":
            assert ref is not None
            reference = _reference_span(target, ref, offset, length)
            if not chunks and _solo_is_smaller(target.dtype, raw, reference):
                codec, reference = "solo", None
        chunk, frames = encode_chunk(codec, target.dtype, raw, reference)
        for frame in frames:
            out.write(frame)
        chunks.append(chunk)
    delta = codec == "delta"
    footer = Footer(
        target.key,
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


def _solo_is_smaller(dtype: str, raw: Raw, reference: np.ndarray) -> bool:
    """Whether the first `TRIAL_BYTES` encode smaller alone than as a delta (a
    tensor that training replaced, or one that merely shares a name)."""
    from graft.registry.transforms import encode_chunk

    n = min(len(raw), TRIAL_BYTES - TRIAL_BYTES % ITEM_SIZES[dtype])
    solo, _ = encode_chunk("solo", dtype, raw[:n], None)
    delta, _ = encode_chunk("delta", dtype, raw[:n], reference[: n // ITEM_SIZES[dtype]])
    return sum(solo.planes) <= sum(delta.planes)


if __name__ == "__main__":  # the background repack that `after_add` starts
    try:
        run_requested(Store.open(Path(sys.argv[1])))
    except GraftError:
        sys.exit(1)  # nobody is listening; the next add or `graft repack` tries again
