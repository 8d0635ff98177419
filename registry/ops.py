"""Store operations behind `graft export|verify|gc|rm|reindex`."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from graft.registry.blobs import MissingReference
from graft.registry.catalog import Connection, delete_artifacts, insert_manifests
from graft.registry.direct import DirectWriter
from graft.registry.errors import CorruptBlob, GraftError, StoreError
from graft.registry.fsutil import fsync_dir
from graft.registry.listing import children_of
from graft.registry.manifest import Manifest
from graft.registry.pull import resolve_local
from graft.registry.remote_index import index_remotes
from graft.registry.store import Store


def export(
    store: Store, ref: str, out_dir: Path, on_progress: Callable[[int, int], None] | None = None
) -> Manifest:
    """Rebuild the artifact's files in `out_dir`, byte for byte as they were added.

    The files are assembled in a temp folder beside `out_dir` and renamed into
    place at the end, so an interrupted export leaves no half-written folder.
    """
    manifest = resolve_local(store, ref)
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise StoreError(f"{out_dir} exists and is not an empty folder", "choose a new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    done, total = 0, manifest.size

    def on_bytes(n: int) -> None:
        nonlocal done
        done += n
        if on_progress:
            on_progress(done, total)

    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.graft-"))
    try:
        for f in manifest.files:
            (staging / f.path).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(staging / f.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                out = DirectWriter(fd)
                store.blobs.copy_to(f.blob_keys(), out, on_bytes)
                out.flush()
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(staging)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(staging, out_dir)
        fsync_dir(out_dir.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


BlobProblem = Literal["missing", "corrupt", "wrong size", "missing reference"]


@dataclass(frozen=True)
class Problem:
    """Something `verify` found wrong; `tensor` is None for whole files and manifests."""

    artifact: str  # NAME@N, or the manifest's file name when it is unreadable
    what: BlobProblem | Literal["damaged manifest"]
    file: str | None = None
    tensor: str | None = None
    blob: str | None = None

    def __str__(self) -> str:
        where = " ".join(
            part
            for part in (
                self.artifact,
                self.file and f"file {self.file}",
                self.tensor and f"tensor {self.tensor!r}",
                self.blob and f"blob {self.blob}",
            )
            if part
        )
        return f"{where}: {self.what}"


@dataclass(frozen=True)
class VerifyReport:
    artifacts: int
    blobs: int
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(store: Store, ref: str | None = None) -> VerifyReport:
    """Re-hash manifests and every blob they name; report each defect.

    It first brings the catalog index in line with the manifests (the repair a
    crash between writing a manifest and indexing it leaves for the next write).
    """
    with store.catalog.writing() as con:
        store.sync_catalog(con)
        ids = [store.resolve(con, ref)] if ref else sorted(store.manifest_ids())
    problems: list[Problem] = []
    checked: dict[str, BlobProblem | None] = {}  # blob → its problem, None when sound
    for artifact_id in ids:
        try:
            manifest = store.load_manifest(artifact_id)
        except StoreError:
            problems.append(Problem(f"manifests/{artifact_id}.json", "damaged manifest"))
            continue
        for f in manifest.files:
            header_len = f.size - sum(t.nbytes for t in f.tensors)
            parts = [(None, f.blob, header_len), *((t.name, t.blob, t.nbytes) for t in f.tensors)]
            for tensor, key, size in parts:
                if key not in checked:
                    checked[key] = _check_blob(store, key, size)
                what = checked[key]
                if what:
                    problems.append(Problem(manifest.ref, what, f.path, tensor, key))
    return VerifyReport(len(ids), len(checked), problems)


def _check_blob(store: Store, key: str, size: int) -> BlobProblem | None:
    """Decode the blob through its references and re-hash it."""
    if not store.blobs.path(key).is_file():
        return "missing"
    try:
        with store.blobs.open(key, from_disk=True) as blob:
            if blob.size != size:
                return "wrong size"
            for _ in blob.stream():
                pass
    except MissingReference:
        return "missing reference"
    except CorruptBlob:
        return "corrupt"
    return None


@dataclass(frozen=True)
class GcResult:
    blobs_removed: int
    bytes_freed: int
    temp_files_removed: int


def gc(store: Store, *, dry_run: bool = False) -> GcResult:
    """Delete blobs no manifest references (directly or as the reference of an
    encoded blob), and leftovers of interrupted writes.

    Holds the store's exclusive pin, so it waits for adds that are between
    writing blobs and indexing them, and they wait for it.
    """
    with store.exclusive():
        referenced: set[str] = set()
        for artifact_id in store.manifest_ids():
            try:
                manifest = store.load_manifest(artifact_id)
            except StoreError as e:
                raise StoreError(
                    f"{e.message}; gc cannot tell which blobs it needs",
                    "run `graft verify`, then remove or restore that manifest",
                ) from e
            for f in manifest.files:
                referenced.update(f.blob_keys())
        # An encoded blob is a delta against another: keep every chain whole.
        todo = list(referenced)
        while todo:
            key = todo.pop()
            try:
                ref = store.blobs.reference(key)
            except CorruptBlob as e:
                raise StoreError(
                    f"{e.message}; gc cannot tell which blobs it refers to",
                    "run `graft verify`, then restore or remove what it reports",
                ) from e
            if ref and ref not in referenced:
                referenced.add(ref)
                todo.append(ref)
        removed = freed = 0
        for key in list(store.blobs.keys()):
            if key not in referenced:
                removed += 1
                freed += store.blobs.size(key)
                if not dry_run:
                    store.blobs.delete(key)
        if not dry_run:
            store.stat_cache.clear()  # it may name blobs just deleted
        temps = store.work.sweep(everything=True, dry_run=dry_run)  # live writers' stay
    return GcResult(removed, freed, temps)


def remove(store: Store, ref: str, *, force: bool = False) -> Manifest:
    """Unregister an artifact (its blobs stay until `gc`)."""
    with store.catalog.writing() as con:
        artifact_id = store.resolve(con, ref)
        manifest = store.load_manifest(artifact_id)
        if not store.is_local(artifact_id):
            raise StoreError(
                f"{ref} is not stored here, only known from a remote", "nothing to remove"
            )
        children = children_of(con, artifact_id)
        if children and not force:
            raise StoreError(
                f"{manifest.ref} is the parent of {', '.join(children)}",
                "remove those first, or pass --force",
            )
        store.remove_manifest(artifact_id)
        delete_artifacts(con, [artifact_id])
    return manifest


def reindex(store: Store) -> tuple[int, list[str]]:
    """Rebuild the catalog from the manifests; return (indexed, damaged manifest files)."""
    manifests, damaged = [], []
    for artifact_id in sorted(store.manifest_ids()):
        try:
            manifests.append(store.load_manifest(artifact_id))
        except GraftError:
            damaged.append(f"manifests/{artifact_id}.json")

    def fill(con: Connection) -> None:
        insert_manifests(con, manifests, store.blobs, store.newest_amendments())
        index_remotes(con, store)  # and what was fetched from remotes

    store.catalog.rebuild(fill)
    return len(manifests), damaged
