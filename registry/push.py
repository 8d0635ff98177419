"""`graft push`: send artifacts, with their ancestors, to a remote.

What the remote lacks goes up in the order that keeps it consistent at every
moment: blobs (a delta-encoded blob after the blob it refers to), then each
artifact's lineage statistics, its manifest and last its name claim, ancestors
before descendants. A push cut anywhere leaves nothing that points at
something missing; running it again sends only the rest.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from graft.registry.errors import ArtifactNotFound, GraftError
from graft.registry.manifest import Manifest
from graft.registry.objects import ByteCounter, Objects, RemoteError
from graft.registry.remote_index import Claim
from graft.registry.remotes import (
    blob_key,
    check_name,
    claim_key,
    deltas_key,
    get_remote,
    manifest_key,
    open_objects,
)
from graft.registry.store import Store

UPLOADS = 8  # blobs in flight at once (a large one also goes up in parallel parts)
MAX_CLAIM_TRIES = 1000

OnProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class Pushed:
    ref: str  # NAME@N here
    claim: str  # NAME@N on the remote
    new: bool  # claimed by this push (else it was there already)


@dataclass(frozen=True)
class PushResult:
    remote: str
    artifacts: list[Pushed]
    blobs_sent: int
    bytes_sent: int


def push(
    store: Store,
    refs: list[str],
    remote_name: str | None = None,
    *,
    ancestors: bool = True,
    on_progress: OnProgress | None = None,
    prepare: Callable[[list[str]], object] = lambda ids: None,
) -> PushResult:
    """Send the artifacts `refs` name (with their ancestors) to the remote;
    `prepare` is called first with their ids (lineage records their deltas)."""
    remote = get_remote(store, remote_name)
    objects = open_objects(remote)
    manifests = _to_push(store, refs, ancestors)
    for m in manifests:
        check_name(m.name)
    prepare([m.id for m in manifests])
    on_remote = {key[6:].replace("/", "") for key, _ in objects.list("blobs/")}
    order = _upload_order(store, manifests, on_remote)
    sizes = [store.blobs.size(k) for level in order for k in level]
    sent = ByteCounter(sum(sizes), on_progress)
    with ThreadPoolExecutor(UPLOADS) as pool:
        for level in order:  # every blob of a level refers only to earlier levels
            list(pool.map(lambda key: _upload_blob(store, objects, key, sent), level))
    pushed = []
    for m in manifests:
        deltas = _deltas_parquet(store, m.id)
        if deltas is not None:
            objects.upload(deltas_key(m.id), io.BytesIO(deltas), len(deltas), lambda _: None)
        objects.create(manifest_key(m.id), m.to_json())
        claim, new = _claim(objects, m)
        pushed.append(Pushed(m.ref, f"{claim.name}@{claim.version}", new))
    return PushResult(remote.name, pushed, len(sizes), sent.done)


def _to_push(store: Store, refs: list[str], ancestors: bool) -> list[Manifest]:
    """The artifacts named (and their ancestors stored here), ancestors first."""
    with store.catalog.reading() as con:
        ids = [store.resolve(con, ref) for ref in refs]
    out: dict[str, Manifest] = {}

    def visit(artifact_id: str, named: bool) -> None:
        if artifact_id in out:
            return
        if not store.is_local(artifact_id):
            if named:
                raise ArtifactNotFound(
                    f"{store.load_manifest(artifact_id).ref} is not stored here",
                    "pull it first, or push it from where it was registered",
                )
            return  # an ancestor known only from a remote: it is on one already
        m = store.load_manifest(artifact_id)
        if ancestors:
            for p in m.parents:
                visit(p.id, False)
        out[artifact_id] = m

    for artifact_id in ids:
        visit(artifact_id, True)
    return list(out.values())


def _upload_order(store: Store, manifests: list[Manifest], on_remote: set[str]) -> list[list[str]]:
    """The blobs the remote lacks, in levels: a blob's reference sits in an earlier one."""
    depth: dict[str, int] = {}

    def level(key: str) -> int:
        if key in on_remote:
            return -1
        if key not in depth:
            ref = store.blobs.reference(key)
            depth[key] = 0 if ref is None else level(ref) + 1
        return depth[key]

    for m in manifests:
        for f in m.files:
            for key in f.blob_keys():
                level(key)
    levels: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for key, d in depth.items():
        levels[d].append(key)
    return levels


def _upload_blob(store: Store, objects: Objects, key: str, sent: ByteCounter) -> None:
    # One open file read through: a repack that replaces the blob meanwhile
    # cannot mix its old and new bytes into one upload.
    try:
        with open(store.blobs.path(key), "rb") as f:
            size = f.seek(0, io.SEEK_END)
            f.seek(0)
            objects.upload(blob_key(key), f, size, sent.add)
    except FileNotFoundError as e:
        raise GraftError(f"blob {key} is missing here", "run `graft verify`") from e


def _deltas_parquet(store: Store, artifact_id: str) -> bytes | None:
    import pyarrow.parquet as pq

    with store.catalog.reading() as con:
        table = con.sql(
            "SELECT * FROM tensor_deltas WHERE child_id = ? ORDER BY parent_id, tensor",
            params=[artifact_id],
        ).to_arrow_table()
    if not table.num_rows:
        return None
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def _claim(objects: Objects, m: Manifest) -> tuple[Claim, bool]:
    """The version of `m.name` on the remote that holds `m`: the one there already,
    else the next free one, created only if absent (so racing pushes each get one)."""
    for _ in range(MAX_CLAIM_TRIES):
        claims = _claims_of(objects, m.name)
        for claim in claims:
            if claim.id == m.id:
                return claim, False
        version = max((c.version for c in claims), default=0) + 1
        doc = json.dumps({"id": m.id}).encode()
        if objects.create(claim_key(m.name, version), doc):
            return Claim(m.name, version, m.id), True
    raise RemoteError(f"could not claim a version of {m.name!r}", "retry the push")


def _claims_of(objects: Objects, name: str) -> list[Claim]:
    from graft.registry.pull import read_claim  # one parser for claims, in fetch

    prefix = f"names/{name}/"
    out = []
    for key, _ in objects.list(prefix):
        version = key[len(prefix) :].removesuffix(".json")
        if version.isdigit() and key.endswith(".json"):
            claim = read_claim(objects, name, int(version))
            if claim is not None:
                out.append(claim)
    return out
