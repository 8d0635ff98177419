"""`graft amend`: fix a registered artifact's parent, method, meta or name."""

from __future__ import annotations

import datetime as dt

from graft.registry.add import RELATION_OF_KIND, descends_from, next_version
from graft.registry.amendments import Amendment
from graft.registry.catalog import delete_artifacts, insert_manifests
from graft.registry.errors import ArtifactNotFound, CycleRefused, GraftError
from graft.registry.manifest import Manifest
from graft.registry.store import Store


def amend(
    store: Store,
    ref: str,
    *,
    parent: str | None = None,
    method: str | None = None,
    meta: dict[str, str] | None = None,
    name: str | None = None,
) -> Manifest:
    """Record an amendment of `ref` and index it; return the amended manifest.

    `parent` replaces the artifact's parent edges with one to `parent` (a
    REF), with the relation that suits its kind; `name` gives it the next
    version of that name. The content, and so the id, stay as they are.
    """
    if not (parent or method or meta or name):
        raise GraftError("nothing to amend", "give --parent, --method, --meta or --name")
    with store.catalog.writing() as con:
        store.sync_catalog(con)
        artifact_id = store.resolve(con, ref)
        if not store.is_local(artifact_id):
            raise ArtifactNotFound(
                f"{ref!r} is only on a remote", f"pull it first: `graft pull {ref}`"
            )
        manifest = store.load_manifest(artifact_id)
        parent_id = None
        if parent is not None:
            if manifest.kind == "merge":
                raise GraftError(
                    f"{manifest.ref} is a merge: its parents are the inputs of its recipe",
                    "amend --method, --meta or --name only",
                )
            try:
                parent_id = store.resolve(con, parent)
            except ArtifactNotFound as e:
                raise ArtifactNotFound(
                    f"parent {parent!r} is not in the store", "add it first, or check `graft ls`"
                ) from e
            if descends_from(con, parent_id, artifact_id):
                raise CycleRefused(
                    f"{parent!r} is {manifest.ref} or descends from it: "
                    "making it the parent would make a cycle",
                    "check --parent",
                )
        renamed = name is not None and name != manifest.name
        amendment = Amendment(
            at=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            parent=parent_id,
            relation=RELATION_OF_KIND[manifest.kind] if parent_id else None,
            method=method,
            meta=dict(meta or {}),
            name=name if renamed else None,
            version=next_version(con, name) if renamed and name else None,
        )
        store.write_amendment(artifact_id, amendment)
        amended = store.load_manifest(artifact_id)
        delete_artifacts(con, [artifact_id], keep_deltas=True)
        insert_manifests(con, [amended], store.blobs, store.newest_amendments())
    return amended
