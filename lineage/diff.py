"""`graft diff A B` and `graft touched --series RUN`: deltas between any two artifacts."""

from __future__ import annotations

import re
from dataclasses import dataclass

from graft.lineage.names import base_tensor_of
from graft.lineage.record import record_deltas
from graft.registry import ArtifactNotFound, GraftError, Manifest, Store


class NothingInCommon(GraftError, ValueError):
    """Two artifacts share no tensor name, so there is nothing to compare."""


@dataclass(frozen=True)
class DiffRow:
    """How a tensor of B differs from A's (`rel_change` is relative to A)."""

    tensor: str
    layer: int | None
    block: str
    module: str
    status: str
    rel_change: float | None
    frac_changed: float | None
    max_abs: float | None
    stable_rank: float | None
    rank: int | None
    old_shape: list[int] | None
    new_shape: list[int] | None


def diff(store: Store, a: str, b: str) -> tuple[str, str, list[DiffRow]]:
    """(A's NAME@N, B's NAME@N, one row per tensor of either), B measured against A."""
    with store.catalog.reading() as con:
        a_id, b_id = store.resolve(con, a), store.resolve(con, b)
    ma, mb = store.load_manifest(a_id), store.load_manifest(b_id)
    if not _base_names(ma) & _base_names(mb):
        raise NothingInCommon(
            f"{ma.ref} and {mb.ref} have no tensor names in common",
            "diff compares same-named tensors: pick two versions of one model, "
            "or an adapter and its base",
        )
    record_deltas(store, [(b_id, a_id)])
    with store.catalog.reading() as con:
        rows = con.execute(
            """
            SELECT tensor, layer, block, module, status, rel_change, frac_changed, max_abs,
                   stable_rank, rank, old_shape, new_shape
            FROM tensor_deltas WHERE child_id = ? AND parent_id = ?
            ORDER BY layer NULLS FIRST, tensor
            """,
            [b_id, a_id],
        ).fetchall()
    return ma.ref, mb.ref, [DiffRow(*row) for row in rows]


def _base_names(m: Manifest) -> set[str]:
    """Tensor names, with adapter keys mapped to the base tensors they modify."""
    return {base_tensor_of(t.name) for _, t in m.tensors}


@dataclass(frozen=True)
class LayerGrowth:
    """Mean relative change of one layer's changed tensors, at each checkpoint."""

    layer: int | None
    rel_change: list[float | None]  # one per checkpoint, in step order


@dataclass(frozen=True)
class Series:
    run: str
    base: str  # NAME@N the run started from
    checkpoints: list[str]  # NAME@N, in step order
    steps: list[int]  # the N of each RUN/checkpoint-N
    layers: list[LayerGrowth]
    losses: list[float | None]  # each checkpoint's last logged loss (trainer_state.json)


def series(store: Store, run: str) -> Series:
    """How the change against the run's base grew, checkpoint by checkpoint.

    The run is every artifact named ``RUN/checkpoint-N``; its base is the first
    checkpoint's parent.
    """
    with store.catalog.reading() as con:
        rows = con.execute(
            "SELECT id, name, version FROM artifacts WHERE starts_with(name, ?)", [run + "/"]
        ).fetchall()
    steps = sorted(
        (
            (int(m.group(1)), i, f"{n}@{v}")
            for i, n, v in rows
            if (m := re.fullmatch(rf"{re.escape(run)}/checkpoint-(\d+)", n))
        ),
    )
    if not steps:
        raise ArtifactNotFound(
            f"no checkpoints named {run}/checkpoint-N", "see `graft ls` for the runs' names"
        )
    first = store.load_manifest(steps[0][1])
    if not first.parents:
        raise ArtifactNotFound(
            f"{first.ref} has no parent, so the run has no base to compare with",
            "register the first checkpoint with --parent BASE",
        )
    base_id = first.parents[0].id
    record_deltas(store, [(i, base_id) for _, i, _ in steps])
    ids = [i for _, i, _ in steps]
    with store.catalog.reading() as con:
        found = con.execute(
            """
            SELECT layer, child_id, avg(rel_change) FROM tensor_deltas
            WHERE parent_id = ? AND child_id IN (SELECT unnest(?::VARCHAR[]))
              AND status = 'changed'
            GROUP BY ALL
            """,
            [base_id, ids],
        ).fetchall()
    by_layer: dict[int | None, dict[str, float]] = {}
    for layer, child, value in found:
        by_layer.setdefault(layer, {})[child] = value
    layers = [
        LayerGrowth(layer, [by_layer[layer].get(i) for i in ids])
        for layer in sorted(by_layer, key=lambda x: (x is not None, x or 0))
    ]
    base_ref = store.load_manifest(base_id).ref
    losses = [_loss(store.load_manifest(i).meta.get("loss")) for i in ids]
    return Series(run, base_ref, [r for _, _, r in steps], [s for s, _, _ in steps], layers, losses)


def _loss(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None
