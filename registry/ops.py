"""Store operations behind `graft ls|show|export|verify|gc|rm|reindex`."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from graft.registry.amendments import Amendment
from graft.registry.blobs import MissingReference
from graft.registry.catalog import Connection, delete_artifacts, insert_manifests
from graft.registry.errors import CorruptBlob, GraftError, StoreError
from graft.registry.fsutil import fsync_dir
from graft.registry.manifest import Manifest
from graft.registry.pull import resolve_local
from graft.registry.remote_index import index_remotes
from graft.registry.repack import Usage, artifact_usage
from graft.registry.store import Store


@dataclass(frozen=True)
class ArtifactRow:
    """One line of `graft ls`."""

    id: str
    name: str
    version: int
    kind: str
    created_at: str
    size_bytes: int
    n_tensors: int
    method: str | None
    parents: list[str] = field(default_factory=list)  # NAME@N of each parent
    where: list[str] = field(default_factory=lambda: ["local"])  # and/or remotes holding it
    adapter_type: str | None = None  # lora, lora+dora, ia3, ... (adapters only)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def list_artifacts(
    store: Store, *, name: str | None = None, kind: str | None = None, remote: str | None = None
) -> list[ArtifactRow]:
    """Every artifact the catalog knows (stored here or fetched from a remote), or
    with `remote`, the versions claimed on that remote (as of the last fetch)."""
    with store.catalog.reading() as con:
        rows = con.execute(
            """
            WITH shown AS (
                SELECT id, name, version FROM artifacts WHERE ?::VARCHAR IS NULL
                UNION ALL
                SELECT id, name, version FROM remote_names WHERE remote = ?
            )
            SELECT a.id, s.name, s.version, a.kind,
                   strftime(a.created_at, '%Y-%m-%dT%H:%M:%SZ'), a.size_bytes, a.n_tensors,
                   a.method, a.adapter_type,
                   list(p.name || '@' || p.version ORDER BY p.name) FILTER (WHERE p.id IS NOT NULL),
                   a.remote IS NULL,
                   (SELECT list(DISTINCT r.remote ORDER BY r.remote) FROM remote_names r
                    WHERE r.id = a.id)
            FROM shown s JOIN artifacts a ON a.id = s.id
            LEFT JOIN edges e ON e.child_id = a.id
            LEFT JOIN artifacts p ON p.id = e.parent_id
            WHERE (? IS NULL OR s.name = ?) AND (? IS NULL OR a.kind = ?)
            GROUP BY a.id, s.name, s.version, a.kind, a.created_at, a.size_bytes, a.n_tensors,
                     a.method, a.adapter_type, a.remote
            ORDER BY a.created_at, s.name, s.version
            """,
            [remote, remote, name, name, kind, kind],
        ).fetchall()
    return [
        ArtifactRow(
            id=r[0],
            name=r[1],
            version=r[2],
            kind=r[3],
            created_at=r[4],
            size_bytes=r[5],
            n_tensors=r[6],
            method=r[7],
            adapter_type=r[8],
            parents=r[9] or [],
            where=(["local"] if r[10] else []) + (r[11] or []),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class LineageStep:
    """An ancestor, `depth` edges above the artifact shown."""

    depth: int
    id: str
    ref: str
    kind: str
    relation: str
    method: str | None


@dataclass(frozen=True)
class SharedTensors:
    """How many of the artifact's tensors are a parent's, byte for byte (same blob)."""

    parent: str  # NAME@N
    tensors: int
    nbytes: int


@dataclass(frozen=True)
class ArtifactDetail:
    manifest: Manifest
    ancestors: list[LineageStep]
    children: list[str]  # NAME@N of each direct child
    shared: list[SharedTensors]  # one per direct parent
    usage: Usage  # raw vs stored bytes of its blobs
    adapter: dict[str, Any] | None  # its adapter_config.json, for an adapter
    adapter_type: str | None  # lora, lora+dora, ia3, ...
    amendments: list[Amendment]  # what `graft amend` changed, oldest first


def show(store: Store, ref: str) -> ArtifactDetail:
    with store.catalog.reading() as con:
        artifact_id = store.resolve(con, ref)
        ancestors = [
            LineageStep(*row)
            for row in con.execute(
                """
                WITH RECURSIVE up(depth, id, relation, method) AS (
                    SELECT 1, parent_id, relation, method FROM edges WHERE child_id = ?
                    UNION ALL
                    SELECT up.depth + 1, e.parent_id, e.relation, e.method
                    FROM up JOIN edges e ON e.child_id = up.id
                    WHERE up.depth < 100
                )
                SELECT up.depth, a.id, a.name || '@' || a.version, a.kind, up.relation, up.method
                FROM up JOIN artifacts a ON a.id = up.id ORDER BY up.depth, a.name
                """,
                [artifact_id],
            ).fetchall()
        ]
        children = _children(con, artifact_id)
        adapter, adapter_type = con.execute(
            "SELECT adapter_config, adapter_type FROM artifacts WHERE id = ?", [artifact_id]
        ).fetchone() or (None, None)
        shared = [
            SharedTensors(*row)
            for row in con.execute(
                """
                SELECT p.name || '@' || p.version, count(pt.blob), coalesce(sum(pt.nbytes), 0)
                FROM edges e
                JOIN artifacts p ON p.id = e.parent_id
                JOIN tensors t ON t.artifact_id = e.child_id
                LEFT JOIN tensors pt
                    ON pt.artifact_id = e.parent_id AND pt.name = t.name AND pt.blob = t.blob
                WHERE e.child_id = ?
                GROUP BY 1 ORDER BY 1
                """,
                [artifact_id],
            ).fetchall()
        ]
    manifest = store.load_manifest(artifact_id)
    return ArtifactDetail(
        manifest,
        ancestors,
        children,
        shared,
        artifact_usage(store, manifest),
        json.loads(adapter) if adapter else None,
        adapter_type,
        store.amendments(artifact_id),
    )


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
            with open(staging / f.path, "wb") as out:
                store.blobs.copy_to(f.blob_keys(), out, on_bytes)
                out.flush()
                os.fsync(out.fileno())
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
        children = _children(con, artifact_id)
        if children and not force:
            raise StoreError(
                f"{manifest.ref} is the parent of {', '.join(children)}",
                "remove those first, or pass --force",
            )
        store.remove_manifest(artifact_id)
        delete_artifacts(con, [artifact_id])
    return manifest


def _children(con: Connection, artifact_id: str) -> list[str]:
    rows = con.execute(
        "SELECT a.name || '@' || a.version FROM edges e JOIN artifacts a ON a.id = e.child_id "
        "WHERE e.parent_id = ? ORDER BY 1",
        [artifact_id],
    ).fetchall()
    return [r[0] for r in rows]


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
