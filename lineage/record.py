"""Compute deltas once and keep them in the catalog's `tensor_deltas` table."""

from __future__ import annotations

import contextlib
from dataclasses import asdict

from graft.registry import GraftError, Store
from graft.registry.catalog import Connection, bulk_insert


def missing_pairs(store: Store, artifact_ids: list[str]) -> list[tuple[str, str]]:
    """(child, parent) edges among `artifact_ids` whose deltas are not computed yet."""
    with store.catalog.reading() as con:
        return missing_pairs_in(con, artifact_ids)


def missing_pairs_in(con: Connection, artifact_ids: list[str]) -> list[tuple[str, str]]:
    """`missing_pairs` on an open connection.

    A merge with a base is compared with its base only, and a full model is
    never compared with an adapter it was folded from: those deltas say nothing.
    """
    rows = con.execute(
        """
        SELECT e.child_id, e.parent_id FROM edges e
        JOIN artifacts c ON c.id = e.child_id
        JOIN artifacts p ON p.id = e.parent_id
        WHERE e.child_id IN (SELECT unnest(?::VARCHAR[]))
          AND c.remote IS NULL AND p.remote IS NULL  -- a fetched one's deltas come with it
          AND NOT (c.kind <> 'adapter' AND p.kind = 'adapter')
          AND (json_extract_string(e.params, '$.role') IS NOT DISTINCT FROM 'base'
               OR NOT EXISTS (SELECT 1 FROM edges b WHERE b.child_id = e.child_id
                              AND json_extract_string(b.params, '$.role') = 'base'))
          AND NOT EXISTS (SELECT 1 FROM delta_pairs d
                          WHERE d.child_id = e.child_id AND d.parent_id = e.parent_id)
        ORDER BY 1, 2
        """,
        [artifact_ids],
    ).fetchall()
    return [(c, p) for c, p in rows]


def record_deltas(store: Store, pairs: list[tuple[str, str]]) -> None:
    """Compute (outside any lock) and store the deltas of each (child, parent) pair
    not computed yet."""
    pairs = _not_done(store, pairs)
    if not pairs:
        return
    from graft.lineage.deltas import compute_deltas  # numpy: only when there is work

    for child_id, parent_id in pairs:
        deltas = compute_deltas(
            store, store.load_manifest(child_id), store.load_manifest(parent_id)
        )
        rows = [
            {
                "child_id": child_id,
                "parent_id": parent_id,
                **asdict(d),
                "old_shape": _shape(d.old_shape),
                "new_shape": _shape(d.new_shape),
            }
            for d in deltas
        ]
        with store.catalog.writing() as con:
            done = con.execute(
                "SELECT 1 FROM delta_pairs WHERE child_id = ? AND parent_id = ?",
                [child_id, parent_id],
            ).fetchone()
            if done:  # another process got there first
                continue
            bulk_insert(con, "tensor_deltas", rows)
            con.execute(
                "INSERT INTO delta_pairs (child_id, parent_id) VALUES (?, ?)", [child_id, parent_id]
            )


def _not_done(store: Store, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    if not pairs:
        return []
    with store.catalog.reading() as con:
        done = set(
            con.execute(
                "SELECT child_id, parent_id FROM delta_pairs "
                "WHERE child_id IN (SELECT unnest(?::VARCHAR[]))",
                [sorted({child for child, _ in pairs})],
            ).fetchall()
        )
    return [p for p in pairs if p not in done]


def ensure_deltas(store: Store, artifact_ids: list[str]) -> None:
    record_deltas(store, missing_pairs(store, artifact_ids))


def catch_up(store: Store) -> None:
    """Record every pair's deltas not computed yet (what `graft add` leaves for
    later); a pair whose blobs are damaged is skipped, for `verify` to name."""
    with store.catalog.reading() as con:
        ids = [r[0] for r in con.execute("SELECT id FROM artifacts").fetchall()]
    for pair in missing_pairs(store, ids):
        with contextlib.suppress(GraftError):
            record_deltas(store, [pair])


def _shape(shape: tuple[int, ...] | None) -> list[int] | None:
    return list(shape) if shape is not None else None


def recompute(store: Store, ref: str | None = None) -> int:
    """Forget and recompute the deltas of `ref` (default: every artifact); return
    how many (child, parent) pairs were computed."""
    with store.catalog.writing() as con:
        ids = (
            [store.resolve(con, ref)]
            if ref
            else [r[0] for r in con.execute("SELECT id FROM artifacts").fetchall()]
        )
        for table in ("tensor_deltas", "delta_pairs"):
            con.execute(
                f"DELETE FROM {table} WHERE child_id IN (SELECT unnest(?::VARCHAR[]))", [ids]
            )
    pairs = missing_pairs(store, ids)
    record_deltas(store, pairs)
    return len(pairs)
