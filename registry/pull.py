"""`graft fetch` and `graft pull`: what the team registered, from a remote.

Everything a remote sends is checked as strictly as a file from disk: claims
must name a key, manifests must parse (checksum, id, safe paths, sizes — see
`manifest.parse_manifest`), and a blob is kept only once its bytes, decoded,
hash to its key and have the size its manifest says. Whatever fails is named
and left behind; the store is changed only by what passed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from graft.registry.add import next_version
from graft.registry.blobs import BlobReader
from graft.registry.catalog import Connection
from graft.registry.errors import ArtifactNotFound, CorruptBlob
from graft.registry.fsutil import fsync_dir, write_atomic
from graft.registry.manifest import KEY, FileRecord, Manifest, parse_manifest
from graft.registry.objects import ByteCounter, Objects, RemoteError
from graft.registry.remote_index import (
    Claim,
    fetched_deltas_path,
    fetched_manifest_path,
    index_remotes,
    load_claims,
    save_claims,
)
from graft.registry.remotes import (
    BadRemote,
    blob_key,
    check_name,
    claim_key,
    deltas_key,
    get_remote,
    manifest_key,
    open_objects,
)
from graft.registry.store import Store

log = logging.getLogger(__name__)

DOWNLOADS = 8
CHECKERS = os.cpu_count() or 1  # blobs decoded and checked at once (most are 1-2 chunks)
MAX_DOC_BYTES = 64 * 1024 * 1024  # a claim, manifest or deltas file larger than this is not one

OnProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class FetchResult:
    remote: str
    claims: int  # versions claimed on the remote
    new_manifests: int
    refused: list[str]  # remote objects that failed their checks, with why


@dataclass(frozen=True)
class PullResult:
    remote: str
    artifacts: list[str]  # NAME@N here, of each artifact now stored here
    blobs_received: int
    bytes_received: int


def read_claim(objects: Objects, name: str, version: int) -> Claim | None:
    """The claim NAME@VERSION, or None when it is missing or not a claim."""
    data = objects.get(claim_key(name, version))
    try:
        artifact_id = json.loads(data or b"")["id"]
    except (ValueError, KeyError, TypeError):
        return None
    return Claim(name, version, artifact_id) if KEY.fullmatch(str(artifact_id)) else None


def fetch(store: Store, remote_name: str | None = None) -> FetchResult:
    """Bring the remote's claims, manifests and lineage statistics into the catalog
    (no weights): new ones only, as claims and manifests never change."""
    remote = get_remote(store, remote_name)
    return _fetch(store, remote.name, open_objects(remote))


def _fetch(store: Store, remote: str, objects: Objects) -> FetchResult:
    known = {(c.name, c.version): c for c in load_claims(store, remote)}
    refused: list[str] = []
    new_keys = []
    for key, size in objects.list("names/"):
        parsed = _claim_key(key)
        if parsed is None or parsed in known:
            continue
        if size > MAX_DOC_BYTES:
            refused.append(f"{key}: not a claim ({size} bytes)")
        else:
            new_keys.append((key, parsed))
    with ThreadPoolExecutor(DOWNLOADS) as pool:
        read = pool.map(lambda item: read_claim(objects, *item[1]), new_keys)
        new_claims = []
        for (key, _), claim in zip(new_keys, read, strict=True):
            if claim is None:
                refused.append(f"{key}: not a claim")
            else:
                new_claims.append(claim)
        claims = [*known.values(), *new_claims]
        listed = dict(objects.list("manifests/"))
        with_deltas = {k for k, size in objects.list("deltas/") if size <= MAX_DOC_BYTES}
        wanted = [
            i
            for i in sorted({c.id for c in claims})
            if not fetched_manifest_path(store, remote, i).is_file()
            and manifest_key(i) in listed  # else claimed before its manifest is up: wait
        ]
        problems = pool.map(
            lambda i: _fetch_artifact(
                store,
                objects,
                remote,
                i,
                listed[manifest_key(i)],
                deltas_key(i) in with_deltas,
            ),
            wanted,
        )
        artifact_problems = [p for p in problems if p]
    refused += artifact_problems
    new = len(wanted) - len(artifact_problems)
    save_claims(store, remote, claims)
    with store.catalog.writing() as con:
        store.sync_catalog(con)
        index_remotes(con, store)
    return FetchResult(remote, len(claims), new, refused)


def _claim_key(key: str) -> tuple[str, int] | None:
    name, _, leaf = key[len("names/") :].rpartition("/")
    version = leaf.removesuffix(".json")
    if not (leaf.endswith(".json") and version.isdigit() and name):
        return None
    try:
        return check_name(name), int(version)
    except BadRemote:
        return None


def _fetch_artifact(
    store: Store, objects: Objects, remote: str, artifact_id: str, size: int, has_deltas: bool
) -> str | None:
    """Keep the artifact's manifest (and deltas) here; the problem, if refused."""
    if size > MAX_DOC_BYTES:
        return f"{manifest_key(artifact_id)}: not a manifest ({size} bytes)"
    data = objects.get(manifest_key(artifact_id))
    if data is None:
        return None  # claimed, manifest not there yet: a push in progress elsewhere
    try:
        m = parse_manifest(data)
        if m.id != artifact_id:
            raise ValueError(f"it holds artifact {m.id}")
    except (ValueError, KeyError, TypeError) as e:
        return f"{manifest_key(artifact_id)}: {e}"
    if has_deltas:
        deltas = objects.get(deltas_key(artifact_id))
        if deltas is not None and _parquet_ok(deltas):
            path = fetched_deltas_path(store, remote, artifact_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, deltas, store.work.mine())
    path = fetched_manifest_path(store, remote, artifact_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, store.work.mine())
    return None


def _parquet_ok(data: bytes) -> bool:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from graft.registry.remote_index import DELTA_COLUMNS

    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError):
        return False
    return set(DELTA_COLUMNS) <= set(table.column_names)


def pull(
    store: Store,
    refs: list[str],
    remote_name: str | None = None,
    *,
    ancestors: bool = True,
    on_progress: OnProgress | None = None,
) -> PullResult:
    """Download what the local store lacks of the artifacts (and their ancestors)
    and register them here under their names on the remote."""
    remote = get_remote(store, remote_name)
    objects = open_objects(remote)
    _fetch(store, remote.name, objects)
    manifests = _to_pull(store, remote.name, refs, ancestors)
    names = {c.id: c.name for c in reversed(load_claims(store, remote.name))}
    received = ByteCounter(0, on_progress)
    with store.pin_blobs(), tempfile.TemporaryDirectory(dir=store.work.mine()) as scratch:
        count = _receive_blobs(store, objects, manifests, Path(scratch), received)
        registered = []
        with store.catalog.writing() as con:
            store.sync_catalog(con)
            for m in manifests:
                if store.is_local(m.id):
                    continue
                name = names.get(m.id, m.name)
                local = replace(m, name=name, version=next_version(con, name))
                store.write_manifest(local)
                store.sync_catalog(con)
                registered.append(local.ref)
            index_remotes(con, store)
    return PullResult(remote.name, registered, count, received.done)


def _to_pull(store: Store, remote: str, refs: list[str], ancestors: bool) -> list[Manifest]:
    """The manifests named, as fetched (checked again), ancestors first."""
    with store.catalog.reading() as con:
        ids = [_remote_id(store, con, remote, ref) for ref in refs]
    out: dict[str, Manifest] = {}

    def visit(artifact_id: str) -> None:
        if artifact_id in out:
            return
        m = store.load_manifest(artifact_id)
        if ancestors:
            for p in m.parents:
                visit(p.id)
        out[artifact_id] = m

    for artifact_id in ids:
        visit(artifact_id)
    return list(out.values())


def _remote_id(store: Store, con: Connection, remote: str, ref: str) -> str:
    """The id of REF as the remote names it (NAME[@N] there), or of any REF whose
    manifest came from that remote."""
    with contextlib.suppress(ArtifactNotFound):
        return store.resolve(con, ref if ":" in ref.split("@")[0] else f"{remote}:{ref}")
    with contextlib.suppress(ArtifactNotFound):
        artifact_id = store.resolve(con, ref)
        if fetched_manifest_path(store, remote, artifact_id).is_file():
            return artifact_id
    raise ArtifactNotFound(
        f"remote {remote!r} has no artifact {ref!r}", f"see `graft ls --remote {remote}`"
    )


def resolve_local(store: Store, ref: str) -> Manifest:
    """`Store.resolve_ref`, pulling first an artifact known only from a remote
    (and saying so on stderr): what export, merge and fold read must be here."""
    with store.catalog.reading() as con:
        artifact_id = store.resolve(con, ref)
        row = con.execute("SELECT remote FROM artifacts WHERE id = ?", [artifact_id]).fetchone()
    if row and row[0]:
        log.warning("graft: %s is only on remote %r: pulling it first", ref, row[0])
        pull(store, [artifact_id], row[0])
    return store.load_manifest(artifact_id)


def _receive_blobs(
    store: Store, objects: Objects, manifests: list[Manifest], scratch: Path, received: ByteCounter
) -> int:
    """Download the blobs missing here (and the blobs they are deltas against) and
    publish each once checked, several at a time while the others still download:
    a blob whose reference is not here yet waits for it, so each decodes when checked."""
    sizes = {
        key: size
        for m in manifests
        if not store.is_local(m.id)
        for f in m.files
        for key, size in _sizes(f)
    }
    todo = sorted(k for k in sizes if not store.blobs.has(k))
    on_remote = dict(objects.list("blobs/")) if todo else {}  # sizes, for the progress bar
    waiting: dict[str, list[tuple[str, Path]]] = {}  # reference → blobs that wait for it
    folders: set[Path] = set()  # of published blobs, fsynced once at the end
    with (
        ThreadPoolExecutor(DOWNLOADS) as downloads,
        ThreadPoolExecutor(CHECKERS, thread_name_prefix="graft-check") as checkers,
    ):
        in_flight: dict[Future[Path], tuple[str, str]] = {}  # → (step, key)
        asked: set[str] = set()

        def ask(key: str) -> None:
            if key not in asked:
                asked.add(key)
                received.total += on_remote.get(blob_key(key), 0)
                future = downloads.submit(_download, objects, key, scratch, received)
                in_flight[future] = ("download", key)

        def check(key: str, path: Path) -> None:
            in_flight[checkers.submit(_adopt, store, key, path, sizes.get(key))] = ("check", key)

        for key in todo:
            ask(key)
        try:
            while in_flight:
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    step, key = in_flight.pop(future)
                    path = future.result()
                    if step == "check":  # published: what waited for it can be checked
                        folders.add(path)
                        for waiter, waiter_path in waiting.pop(key, []):
                            check(waiter, waiter_path)
                        continue
                    ref = _refused_unless(
                        key, functools.partial(store.blobs.reference_of, key, path)
                    )
                    if ref is None or store.blobs.has(ref):
                        check(key, path)
                    else:
                        waiting.setdefault(ref, []).append((key, path))
                        ask(ref)
        finally:
            for future in in_flight:
                future.cancel()
    for folder in folders:
        fsync_dir(folder)
    if waiting:  # references that never arrived: a loop of them
        key = next(iter(waiting))
        raise RemoteError(
            f"{blob_key(key)} on the remote refers to blobs in a loop: refused, nothing kept",
            "push it again from a store that holds it intact",
        )
    return len(asked)


def _adopt(store: Store, key: str, path: Path, size: int | None) -> Path:
    """Publish the downloaded blob once checked (`BlobStore.adopt`); a blob that is
    only a reference of what was asked for has the size it decodes to."""
    if size is None:
        size = _refused_unless(key, lambda: _decoded_size(store, key, path))
    return _refused_unless(key, lambda: store.blobs.adopt(key, path, size))


def _sizes(f: FileRecord) -> list[tuple[str, int]]:
    """Each blob of a file with the size its manifest gives it."""
    tensors = [(t.blob, t.nbytes) for t in f.tensors]
    return [(f.blob, f.size - sum(n for _, n in tensors)), *tensors]


def _download(objects: Objects, key: str, scratch: Path, received: ByteCounter) -> Path:
    """The blob in a file of its own, durable (fsynced here, while others download)."""
    fd, tmp = tempfile.mkstemp(dir=scratch, prefix="pull-")
    with os.fdopen(fd, "wb") as out:
        objects.download(blob_key(key), out, received.add)
        out.flush()
        os.fsync(out.fileno())
    return Path(tmp)


def _decoded_size(store: Store, key: str, path: Path) -> int:
    with BlobReader(store.blobs, key, f"blob {key}", path=path) as blob:
        return blob.size


T = TypeVar("T")


def _refused_unless(key: str, check: Callable[[], T]) -> T:
    try:
        return check()
    except CorruptBlob as e:
        raise RemoteError(
            f"{blob_key(key)} on the remote is damaged ({e.message}): refused, nothing kept",
            "push it again from a store that holds it intact",
        ) from None
