"""What a fetch keeps of each remote, and how it enters the catalog.

``remotes/<remote>/`` in the store holds the remote's claims (``names.json``),
the manifests of its artifacts and their lineage statistics, each checked as
it arrived. The catalog indexes them like local artifacts, so `ls`, `log`,
`touched` and SQL see the team's registry: an artifact stored here keeps its
local row; one only on a remote gets a row named ``REMOTE:NAME`` (after its
first claim there) with `remote` set, and the deltas pushed with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb

from graft.registry.catalog import Connection, delete_artifacts, insert_manifests
from graft.registry.errors import GraftError
from graft.registry.fsutil import write_atomic
from graft.registry.manifest import Manifest, parse_manifest
from graft.registry.store import Store

DELTA_COLUMNS = (
    "child_id",
    "parent_id",
    "tensor",
    "status",
    "layer",
    "block",
    "module",
    "frac_changed",
    "rel_change",
    "max_abs",
    "delta_norm",
    "rank",
    "stable_rank",
    "old_shape",
    "new_shape",
)


@dataclass(frozen=True, order=True)
class Claim:
    name: str
    version: int
    id: str


def fetched_dir(store: Store, remote: str) -> Path:
    return store.root / "remotes" / remote


def load_claims(store: Store, remote: str) -> list[Claim]:
    try:
        doc = json.loads((fetched_dir(store, remote) / "names.json").read_bytes())
    except FileNotFoundError:
        return []
    return sorted(Claim(n, v, i) for n, v, i in doc["claims"])


def save_claims(store: Store, remote: str, claims: list[Claim]) -> None:
    doc = {"claims": [[c.name, c.version, c.id] for c in sorted(claims)]}
    fetched_dir(store, remote).mkdir(parents=True, exist_ok=True)
    write_atomic(
        fetched_dir(store, remote) / "names.json", json.dumps(doc).encode(), store.work.mine()
    )


def fetched_manifest_path(store: Store, remote: str, artifact_id: str) -> Path:
    return fetched_dir(store, remote) / "manifests" / f"{artifact_id}.json"


def fetched_deltas_path(store: Store, remote: str, artifact_id: str) -> Path:
    return fetched_dir(store, remote) / "deltas" / f"{artifact_id}.parquet"


def index_remotes(con: Connection, store: Store) -> None:
    """Replace the catalog's rows of every fetched remote with what its folder holds."""
    fetched = con.execute("SELECT id FROM artifacts WHERE remote IS NOT NULL").fetchall()
    gone = [r[0] for r in fetched]
    delete_artifacts(con, gone)
    con.execute("DELETE FROM remote_names")
    local = {r[0] for r in con.execute("SELECT id FROM artifacts").fetchall()}
    root = store.root / "remotes"
    for remote in sorted(p.name for p in root.iterdir()) if root.is_dir() else []:
        claims = load_claims(store, remote)
        if claims:
            con.execute(
                "INSERT INTO remote_names SELECT ?, unnest(?), unnest(?), unnest(?)",
                [
                    remote,
                    [c.name for c in claims],
                    [c.version for c in claims],
                    [c.id for c in claims],
                ],
            )
        first_claim = {}
        for c in reversed(claims):
            first_claim[c.id] = c
        fresh = []
        for artifact_id, claim in sorted(first_claim.items()):
            if artifact_id in local:
                continue
            try:
                m = parse_manifest(fetched_manifest_path(store, remote, artifact_id).read_bytes())
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not fetched (a claim made after the listing), or damaged
            fresh.append(replace(m, name=f"{remote}:{claim.name}", version=claim.version))
            local.add(artifact_id)
        insert_manifests(con, fresh, store.blobs)
        con.execute(
            "UPDATE artifacts SET remote = ? WHERE id IN (SELECT unnest(?::VARCHAR[]))",
            [remote, [m.id for m in fresh]],
        )
        for m in fresh:
            _import_deltas(con, store, remote, m)


def _import_deltas(con: Connection, store: Store, remote: str, m: Manifest) -> None:
    """The rows pushed with `m`, for pairs (m, one of its parents) not known yet."""
    path = fetched_deltas_path(store, remote, m.id)
    if not path.is_file():
        return
    columns = ", ".join(DELTA_COLUMNS)
    try:
        con.execute(
            f"""
            INSERT INTO tensor_deltas ({columns})
            SELECT {columns} FROM read_parquet(?) r
            WHERE r.child_id = ? AND r.parent_id IN (SELECT unnest(?::VARCHAR[]))
              AND NOT EXISTS (SELECT 1 FROM delta_pairs d
                              WHERE d.child_id = r.child_id AND d.parent_id = r.parent_id)
            """,
            [str(path), m.id, [p.id for p in m.parents]],
        )
        con.execute(
            """
            INSERT INTO delta_pairs (child_id, parent_id)
            SELECT DISTINCT r.child_id, r.parent_id FROM read_parquet(?) r
            WHERE r.child_id = ? AND r.parent_id IN (SELECT unnest(?::VARCHAR[]))
              AND NOT EXISTS (SELECT 1 FROM delta_pairs d
                              WHERE d.child_id = r.child_id AND d.parent_id = r.parent_id)
            """,
            [str(path), m.id, [p.id for p in m.parents]],
        )
    except duckdb.Error as e:
        raise GraftError(
            f"{path}: the lineage statistics fetched for {m.id[:12]} are damaged ({e})",
            "delete the file and run `graft fetch` again",
        ) from e
