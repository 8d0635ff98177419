"""`add`: register a file or folder as an artifact.

Order of work, for crash safety and concurrency:
1. validate everything (sources.scan) — a bad input never touches the store;
2. under a shared gc pin, stream every file through the hash into blobs
   (no catalog lock held: parallel adds hash and copy side by side);
3. under the catalog's exclusive lock: assign the version, write the manifest
   atomically, index it. A crash before the manifest leaves only unreferenced
   blobs (for `gc`); after it, the next catalog write indexes the manifest.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from graft.registry.catalog import Connection, insert_manifests
from graft.registry.errors import (
    ArtifactNotFound,
    CycleRefused,
    GraftError,
    InvalidArtifact,
    PickleRefused,
    SourceChanged,
)
from graft.registry.manifest import (
    FileRecord,
    Kind,
    Manifest,
    Parent,
    Relation,
    TensorRecord,
    content_id,
)
from graft.registry.safetensors_header import SafetensorsHeader, TensorEntry, read_header
from graft.registry.sources import Source, scan
from graft.registry.statcache import file_identity
from graft.registry.store import Store

OnProgress = Callable[[int, int], None]  # (bytes done, bytes total)
STORE_THREADS = 2

RELATION_OF_KIND: dict[str, Relation] = {
    "model": "finetune",
    "adapter": "adapter",
    "checkpoint": "checkpoint",
    "merge": "merge",
}


@dataclass(frozen=True)
class AddResult:
    manifest: Manifest
    bytes_new: int  # blob and manifest bytes this add wrote
    existed: bool  # the same content was already registered
    skipped: tuple[str, ...]  # input files left out, with why
    # Artifacts registered before it that declare it as their base, now linked to it
    # (`lineage.register` fills it in).
    linked: tuple[str, ...] = ()


def add(
    store: Store,
    path: Path,
    *,
    name: str | None = None,
    parent: str | None = None,
    method: str | None = None,
    meta: dict[str, str] | None = None,
    kind: Kind | None = None,
    allow_pickle: bool = False,
    on_progress: OnProgress | None = None,
    choose_parent: Callable[[tuple[FileRecord, ...]], str | None] | None = None,
    links: Sequence[Parent] = (),
) -> AddResult:
    """Register `path`; return the (new or existing) artifact and what was written.

    `parent` (a REF) gets the relation that suits the kind; `links` are
    further edges with their own relation and params (a merge's inputs; their
    `id` may be any REF). Without either, `choose_parent` may name a parent
    (an id) once the files' blobs are known, before the manifest is written.
    """
    path = Path(path)
    source = scan(path)
    if source.pickles and not allow_pickle:
        first = next(iter(source.pickles.values()))
        raise PickleRefused(
            f"{first}: pickled weights, which graft does not unpickle by default",
            "re-save as safetensors, or pass --allow-pickle to convert with "
            "torch.load(weights_only=True)",
        )
    parent_id = _parent_id(store, parent) if parent else None
    links = [replace(link, id=_parent_id(store, link.id)) for link in links]

    with store.pin_blobs(), tempfile.TemporaryDirectory(dir=store.work.mine()) as scratch:
        weights = {**source.weights, **_convert_pickles(source, Path(scratch))}
        files, bytes_new = _store_files(store, source, weights, on_progress)
        artifact_id = content_id(files)
        existing = _existing(store, artifact_id)
        linked = ([parent_id] if parent_id else []) + [link.id for link in links]
        if existing and _indexed(store, existing, linked):  # the common re-add: no write lock
            return AddResult(existing, bytes_new, True, source.skipped)
        if parent_id is None and not links and choose_parent:
            parent_id = choose_parent(files)
        with store.catalog.writing() as con:
            store.sync_catalog(con)
            existing = _existing(store, artifact_id)
            if existing:
                return AddResult(existing, bytes_new, True, source.skipped)
            chosen_kind = kind or source.kind
            manifest = Manifest(
                id=artifact_id,
                name=name or source.default_name,
                version=next_version(con, name or source.default_name),
                kind=chosen_kind,
                created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
                source=str(path.absolute()),
                files=files,
                parents=(
                    *([Parent(parent_id, RELATION_OF_KIND[chosen_kind])] if parent_id else []),
                    *links,
                ),
                method=method,
                meta=dict(meta or {}),
            )
            bytes_new += store.write_manifest(manifest)
            insert_manifests(con, [manifest], store.blobs)
    return AddResult(manifest, bytes_new, False, source.skipped)


def _parent_id(store: Store, ref: str) -> str:
    try:
        with store.catalog.reading() as con:
            return store.resolve(con, ref)
    except ArtifactNotFound as e:
        raise ArtifactNotFound(
            f"parent {ref!r} is not in the store", "add it first, or check `graft ls`"
        ) from e


def _existing(store: Store, artifact_id: str) -> Manifest | None:
    """The registered manifest with this id, if its manifest file is complete."""
    if not store.manifest_path(artifact_id).is_file():
        return None
    try:
        return store.load_manifest(artifact_id)
    except GraftError:
        return None  # damaged: write it anew


def _indexed(store: Store, existing: Manifest, linked: list[str]) -> bool:
    """Whether registered content offered again is in the catalog (its manifest
    may have been written by an add killed before the catalog took it).

    CycleRefused if one of the artifacts to link it to (`linked`) descends from
    it or is it: edges only ever point from a new artifact to registered ones,
    so this and `graft amend` are the ways a user can ask for a cycle; the
    store is left as it was.
    """
    with store.catalog.reading() as con:
        for parent_id in linked:
            if descends_from(con, parent_id, existing.id):
                raise CycleRefused(
                    f"{existing.ref} is already registered and is an ancestor of the parent "
                    "given (or the parent itself): linking them would make a cycle",
                    "check --parent",
                )
        row = con.execute("SELECT 1 FROM artifacts WHERE id = ?", [existing.id]).fetchone()
        return row is not None


def descends_from(con: Connection, artifact_id: str, ancestor_id: str) -> bool:
    """Whether `ancestor_id` is `artifact_id` or one of its ancestors."""
    row = con.execute(
        """
        WITH RECURSIVE up(id) AS (
            SELECT ?::VARCHAR
            UNION SELECT e.parent_id FROM up JOIN edges e ON e.child_id = up.id
        )
        SELECT 1 FROM up WHERE id = ?
        """,
        [artifact_id, ancestor_id],
    ).fetchone()
    return row is not None


def next_version(con: Connection, name: str) -> int:
    row = con.execute(
        "SELECT coalesce(max(version), 0) FROM artifacts WHERE name = ?", [name]
    ).fetchone()
    return int(row[0]) + 1 if row else 1


def _store_files(
    store: Store,
    source: Source,
    weights: dict[str, SafetensorsHeader],
    on_progress: OnProgress | None,
) -> tuple[tuple[FileRecord, ...], int]:
    """Stream every file into blobs; publish them all (`blobs.sync`) or none."""
    plan: dict[str, Path | SafetensorsHeader] = {**source.companions, **weights}
    total = sum(os.path.getsize(_path_of(p)) for p in plan.values())
    done = 0
    lock = threading.Lock()  # tensors are stored two at a time

    def on_bytes(n: int) -> None:
        nonlocal done
        with lock:
            done += n
            if on_progress:
                on_progress(done, total)

    records, written = [], 0
    try:
        for rel in sorted(plan):
            cacheable = rel not in source.pickles  # converted files live in scratch
            record, n = _store_file(store, rel, plan[rel], on_bytes, cacheable=cacheable)
            records.append(record)
            written += n
        store.blobs.sync()
    except BaseException:
        store.blobs.discard()
        raise
    return tuple(records), written


def _store_file(
    store: Store,
    rel: str,
    item: Path | SafetensorsHeader,
    on_bytes: Callable[[int], None],
    *,
    cacheable: bool,
) -> tuple[FileRecord, int]:
    file_path = _path_of(item)
    try:
        with open(file_path, "rb") as f:
            st = os.fstat(f.fileno())
            cached = store.stat_cache.get(file_path, st, rel) if cacheable else None
            if cached:
                on_bytes(st.st_size)
                return cached, 0
            if isinstance(item, SafetensorsHeader):
                record, n = _store_safetensors(store, rel, item, f, st.st_size, on_bytes)
            else:
                blob, n = store.blobs.put_range(f, 0, st.st_size, on_bytes)
                record = FileRecord(path=rel, size=st.st_size, blob=blob)
            if file_identity(os.fstat(f.fileno())) != file_identity(st):
                raise EOFError("modified during the add")
    except EOFError as e:
        raise SourceChanged(
            f"{file_path}: changed while being added ({e})",
            "wait until whatever writes it has finished, then add again",
        ) from e
    except OSError as e:
        raise InvalidArtifact(
            f"{file_path}: cannot read ({e.strerror})", "check permissions"
        ) from e
    if cacheable:
        store.stat_cache.put(file_path, st, record)
    return record, n


def _path_of(item: Path | SafetensorsHeader) -> Path:
    return item.path if isinstance(item, SafetensorsHeader) else item


def _store_safetensors(
    store: Store,
    rel: str,
    header: SafetensorsHeader,
    f: BinaryIO,
    size: int,
    on_bytes: Callable[[int], None],
) -> tuple[FileRecord, int]:
    header_blob, written = store.blobs.put_range(f, 0, header.data_start, on_bytes)

    def put(t: TensorEntry) -> tuple[str, int]:
        return store.blobs.put_range(f, header.data_start + t.begin, t.nbytes, on_bytes)

    # Two at once: one tensor is read and hashed while the other's bytes go to disk.
    pool = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="graft-add")
    try:
        stored = list(pool.map(put, header.tensors))
    finally:
        pool.shutdown(cancel_futures=True)
    tensors = []
    for t, (blob, n) in zip(header.tensors, stored, strict=True):
        written += n
        tensors.append(TensorRecord(t.name, t.dtype, t.shape, t.begin, t.nbytes, blob))
    record = FileRecord(rel, size, header_blob, tuple(tensors), header.metadata)
    return record, written


def _convert_pickles(source: Source, scratch: Path) -> dict[str, SafetensorsHeader]:
    """Load pickled weights with weights_only=True and re-save them as safetensors."""
    if not source.pickles:
        return {}
    import torch
    from safetensors.torch import save_file

    converted = {}
    for rel, pickle_path in source.pickles.items():
        try:
            state = torch.load(pickle_path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # torch raises many types for a bad or unsafe pickle
            raise InvalidArtifact(
                f"{pickle_path}: cannot load with weights_only=True ({type(e).__name__})",
                "it holds more than tensors; convert it yourself in a trusted environment",
            ) from e
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise InvalidArtifact(
                f"{pickle_path}: not a flat dict of tensors", "convert it yourself"
            )
        # safetensors refuses tensors sharing storage (tied weights): give each its own.
        tensors = {k: v.detach().clone().contiguous() for k, v in state.items()}
        out = scratch / rel
        save_file(tensors, str(out), metadata={"format": "pt"})
        converted[rel] = read_header(out)
    return converted
