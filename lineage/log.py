"""`graft log`: the ancestry (or descendant) tree of an artifact."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from graft.registry import Store


@dataclass(frozen=True)
class LogEntry:
    """An artifact `depth` edges from the one asked about, linked to `via`."""

    depth: int
    id: str
    ref: str  # NAME@N
    kind: str
    relation: str  # how the child relates to the parent
    method: str | None
    via: str  # NAME@N of the neighbour one step closer
    params: dict[str, Any] = field(default_factory=dict)  # e.g. a merge input's weight


def log(store: Store, ref: str, *, children: bool = False) -> tuple[str, list[LogEntry]]:
    """(NAME@N of `ref`, its ancestors — or with `children`, its descendants)."""
    near, far = ("parent_id", "child_id") if children else ("child_id", "parent_id")
    with store.catalog.reading() as con:
        artifact_id = store.resolve(con, ref)
        rows = con.execute(
            f"""
            WITH RECURSIVE walk(depth, id, via, relation, method, params) AS (
                SELECT 1, {far}, {near}, relation, method, params FROM edges WHERE {near} = ?
                UNION  -- not ALL: merges of merges would repeat whole subtrees
                SELECT w.depth + 1, e.{far}, e.{near}, e.relation, e.method, e.params
                FROM walk w JOIN edges e ON e.{near} = w.id
                WHERE w.depth < 1000
            )
            SELECT w.depth, a.id, a.name || '@' || a.version, a.kind, w.relation, w.method,
                   v.name || '@' || v.version, w.params
            FROM walk w JOIN artifacts a ON a.id = w.id JOIN artifacts v ON v.id = w.via
            ORDER BY w.depth, 3
            """,
            [artifact_id],
        ).fetchall()
        me = con.execute(
            "SELECT name || '@' || version FROM artifacts WHERE id = ?", [artifact_id]
        ).fetchone()
    return str(me[0]) if me else artifact_id, [
        LogEntry(depth, id_, ref_, kind, relation, method, via, json.loads(params or "{}"))
        for depth, id_, ref_, kind, relation, method, via, params in rows
    ]


def base_parents(store: Store) -> dict[str, str]:
    """For every merge made onto a base: its id → the base's id (the edge whose
    params say role "base")."""
    with store.catalog.reading() as con:
        rows = con.execute(
            "SELECT child_id, parent_id FROM edges "
            "WHERE json_extract_string(params, '$.role') = 'base'"
        ).fetchall()
    return {str(child): str(parent) for child, parent in rows}
