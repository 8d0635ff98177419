"""What `graft ls` and `graft show` print: catalog queries, no blob reads beyond
a manifest (kept apart from the store's maintenance so that `graft ls` imports
little)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from graft.registry.amendments import Amendment
from graft.registry.catalog import Connection
from graft.registry.manifest import Manifest
from graft.registry.store import Store
from graft.registry.usage import Usage, artifact_usage


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
    relations: list[str] = field(default_factory=list)  # how it came from its parents: merge, ...

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
                    WHERE r.id = a.id),
                   list(DISTINCT e.relation ORDER BY e.relation)
                       FILTER (WHERE e.relation IS NOT NULL)
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
            relations=r[12] or [],
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
        children = children_of(con, artifact_id)
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


def children_of(con: Connection, artifact_id: str) -> list[str]:
    """NAME@N of each direct child."""
    rows = con.execute(
        "SELECT a.name || '@' || a.version FROM edges e JOIN artifacts a ON a.id = e.child_id "
        "WHERE e.parent_id = ? ORDER BY 1",
        [artifact_id],
    ).fetchall()
    return [r[0] for r in rows]
