"""Which layers and modules an artifact, or every artifact of a method, changed."""

from __future__ import annotations

from dataclasses import dataclass

from graft.lineage.diff import DiffRow
from graft.lineage.names import place_of
from graft.lineage.record import ensure_deltas, missing_pairs_in
from graft.registry import ArtifactNotFound, Store
from graft.registry.catalog import Connection


@dataclass(frozen=True)
class Touch(DiffRow):
    """A tensor an artifact changed against one of its parents (NAME@N)."""

    parent: str


def touched(store: Store, ref: str) -> list[Touch]:
    """Every tensor `ref` changed against its parent(s), in layer order."""
    with store.catalog.reading() as con:
        artifact_id = store.resolve(con, ref)
        if not missing_pairs_in(con, [artifact_id]):  # the usual case: one connection
            return _touches(con, artifact_id)
    ensure_deltas(store, [artifact_id])
    with store.catalog.reading() as con:
        return _touches(con, artifact_id)


def _touches(con: Connection, artifact_id: str) -> list[Touch]:
    rows = con.execute(
        """
        SELECT d.tensor, d.layer, d.block, d.module, d.status, d.rel_change,
               d.frac_changed, d.max_abs, d.stable_rank, d.rank, d.old_shape, d.new_shape,
               p.name || '@' || p.version
        FROM tensor_deltas d
        JOIN edges e ON e.child_id = d.child_id AND e.parent_id = d.parent_id
        JOIN artifacts p ON p.id = d.parent_id
        WHERE d.child_id = ? AND d.status <> 'identical'
        ORDER BY d.layer NULLS FIRST, d.tensor, 13
        """,
        [artifact_id],
    ).fetchall()
    return [Touch(*row) for row in rows]


@dataclass(frozen=True)
class TouchCell:
    """One (layer, module) of the grid: how many artifacts changed it, by how much."""

    layer: int | None
    block: str
    module: str
    artifacts: int
    mean_rel_change: float | None
    max_rel_change: float | None


@dataclass(frozen=True)
class MethodTouches:
    method: str
    artifacts: list[str]  # NAME@N of every artifact made by the method
    cells: list[TouchCell]


def touched_by_method(store: Store, method: str) -> MethodTouches:
    """Aggregate `touched` over every artifact made by `method`: trained by it
    (sft, dpo, ...), or an adapter of that type (lora: every LoRA, DoRA too)."""
    with store.catalog.reading() as con:
        found = con.execute(
            "SELECT id, name || '@' || version FROM artifacts "
            "WHERE lower(method) = lower($1) "
            "OR list_contains(string_split(adapter_type, '+'), lower($1)) "
            "ORDER BY created_at",
            [method],
        ).fetchall()
        if not found:
            methods = [
                m
                for (m,) in con.execute(
                    "SELECT DISTINCT m FROM (SELECT method AS m FROM artifacts UNION ALL "
                    "SELECT unnest(string_split(adapter_type, '+')) FROM artifacts) "
                    "WHERE m IS NOT NULL ORDER BY 1"
                ).fetchall()
            ]
            raise ArtifactNotFound(
                f"no artifact was made by method {method!r}",
                f"methods in the store: {', '.join(methods) or 'none recorded'}",
            )
        ids = [i for i, _ in found]
        if not missing_pairs_in(con, ids):  # the usual case: one connection
            return MethodTouches(method, [r for _, r in found], _cells(con, ids))
    ensure_deltas(store, ids)
    with store.catalog.reading() as con:
        return MethodTouches(method, [r for _, r in found], _cells(con, ids))


def _cells(con: Connection, ids: list[str]) -> list[TouchCell]:
    rows = con.execute(
        """
        SELECT d.layer, d.block, d.module, count(DISTINCT d.child_id),
               avg(d.rel_change), max(d.rel_change)
        FROM tensor_deltas d
        JOIN edges e ON e.child_id = d.child_id AND e.parent_id = d.parent_id
        WHERE d.child_id IN (SELECT unnest(?::VARCHAR[])) AND d.status <> 'identical'
        GROUP BY ALL ORDER BY 1 NULLS FIRST, 2, 3
        """,
        [ids],
    ).fetchall()
    return [TouchCell(*row) for row in rows]


def layers_of(store: Store, ref: str) -> list[int]:
    """The layer indices an artifact's tensors (or the base tensors it adapts) sit in."""
    layers = {place_of(t.name).layer for _, t in store.resolve_ref(ref).tensors}
    return sorted(layer for layer in layers if layer is not None)
