"""Guess an artifact's parent among the registered ones.

Exact evidence first: the registered artifact sharing the most (name, blob)
tensors, or, for an adapter, the models holding every tensor it modifies with
matching shapes. Failing that, the smallest distance between same-named,
same-shaped tensors, measured on a few KB sampled from each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from graft.lineage.names import adapter_key
from graft.registry import FileRecord, Store, TensorRecord
from graft.registry.safetensors_header import FLOAT_DTYPES

SAMPLE_BYTES = 4096
SAMPLED_TENSORS = 16


@dataclass(frozen=True)
class Suggestion:
    parent_id: str
    parent: str  # NAME@N
    confidence: float  # 0..1
    evidence: str  # what the guess rests on, in words


def guess_parent(
    store: Store, files: tuple[FileRecord, ...], *, exclude: str | None = None
) -> Suggestion | None:
    """The most likely parent of an artifact made of `files`, or None if nothing is close."""
    tensors = [t for f in files for t in f.tensors]
    if not tensors:
        return None
    adapter = [k for t in tensors if (k := adapter_key(t.name))]
    if adapter:
        return _adapter_base(store, {k.base_tensor for k in adapter}, exclude)
    return _shared_blobs(store, tensors, exclude) or _nearest(store, tensors, exclude)


class ParentGuesser:
    """A `choose_parent` for `registry.add` that keeps what it suggested, so a
    front end can say what the recorded parent rests on."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.asked = False
        self.suggestion: Suggestion | None = None

    def __call__(self, files: tuple[FileRecord, ...]) -> str | None:
        self.asked = True
        self.suggestion = guess_parent(self.store, files)
        return self.suggestion.parent_id if self.suggestion else None


def _shared_blobs(
    store: Store, tensors: list[TensorRecord], exclude: str | None
) -> Suggestion | None:
    with store.catalog.reading() as con:
        row = con.execute(
            """
            WITH mine AS (SELECT unnest(?::VARCHAR[]) AS name, unnest(?::VARCHAR[]) AS blob)
            SELECT a.id, a.name || '@' || a.version, count(*) AS shared
            FROM tensors t JOIN mine m ON t.name = m.name AND t.blob = m.blob
            JOIN artifacts a ON a.id = t.artifact_id
            WHERE a.id IS DISTINCT FROM ?
            GROUP BY 1, 2
            ORDER BY shared DESC, abs(any_value(a.n_tensors) - ?), any_value(a.created_at)
            LIMIT 1
            """,
            [[t.name for t in tensors], [t.blob for t in tensors], exclude, len(tensors)],
        ).fetchone()
    if not row:
        return None
    artifact_id, ref, shared = row
    return Suggestion(
        artifact_id,
        ref,
        shared / len(tensors),
        f"{shared} of {len(tensors)} tensors are byte-identical to {ref}'s",
    )


def _adapter_base(store: Store, bases: set[str], exclude: str | None) -> Suggestion | None:
    with store.catalog.reading() as con:
        rows = con.execute(
            """
            SELECT a.id, a.name || '@' || a.version
            FROM tensors t JOIN artifacts a ON a.id = t.artifact_id
            WHERE t.name IN (SELECT unnest(?::VARCHAR[])) AND a.kind <> 'adapter'
              AND a.id IS DISTINCT FROM ?
            GROUP BY 1, 2, a.created_at
            HAVING count(DISTINCT t.name) = ?
            ORDER BY (SELECT count(*) FROM edges e WHERE e.child_id = a.id), a.created_at
            """,
            [sorted(bases), exclude, len(bases)],
        ).fetchall()
    if not rows:
        return None
    (artifact_id, ref), fits = rows[0], len(rows)
    also = f"; {fits - 1} other model(s) fit too, it has the fewest parents" if fits > 1 else ""
    return Suggestion(
        artifact_id, ref, 1 / fits, f"{ref} has all {len(bases)} tensors the adapter modifies{also}"
    )


def _nearest(store: Store, tensors: list[TensorRecord], exclude: str | None) -> Suggestion | None:
    """Smallest mean relative distance over sampled same-named, same-shaped tensors."""
    floats = [t for t in tensors if t.dtype in FLOAT_DTYPES and t.nbytes]
    step = max(1, len(floats) // SAMPLED_TENSORS)
    sample = {t.name: t for t in floats[::step][:SAMPLED_TENSORS]}
    if not sample:
        return None
    with store.catalog.reading() as con:
        rows = con.execute(
            """
            SELECT a.id, a.name || '@' || a.version, t.name, t.dtype, t.shape, t.blob
            FROM tensors t JOIN artifacts a ON a.id = t.artifact_id
            WHERE t.name IN (SELECT unnest(?::VARCHAR[])) AND a.id IS DISTINCT FROM ?
            """,
            [list(sample), exclude],
        ).fetchall()
    distances: dict[tuple[str, str], list[float]] = {}
    for artifact_id, ref, name, dtype, shape, blob in rows:
        mine = sample[name]
        if dtype == mine.dtype and tuple(shape) == mine.shape:
            d = _distance(store, mine.blob, blob, dtype)
            distances.setdefault((artifact_id, ref), []).append(d)
    scored = sorted(
        (sum(ds) / len(ds), key) for key, ds in distances.items() if len(ds) * 2 >= len(sample)
    )
    if not scored or not math.isfinite(scored[0][0]) or scored[0][0] >= 1.0:
        return None
    best, (artifact_id, ref) = scored[0]
    runner_up = scored[1][0] if len(scored) > 1 else 1.0
    confidence = max(0.0, 1.0 - best / runner_up) if runner_up > 0 else 0.0
    return Suggestion(
        artifact_id,
        ref,
        confidence,
        f"sampled tensors are {best:.3g} apart (relative) from {ref}'s"
        + (f", next nearest {runner_up:.3g}" if len(scored) > 1 else ""),
    )


def _distance(store: Store, mine: str, theirs: str, dtype: str) -> float:
    """‖a − b‖ / ‖b‖ over the first few KB of two blobs."""
    import torch  # only inference without exact evidence needs it

    from graft.lineage.tensors import TORCH_DTYPES

    a, b = (_head(store, key) for key in (mine, theirs))
    n = min(len(a), len(b)) // torch.empty((), dtype=TORCH_DTYPES[dtype]).element_size()
    if not n:
        return math.inf
    ta, tb = (torch.frombuffer(x, dtype=TORCH_DTYPES[dtype])[:n].float() for x in (a, b))
    norm = float(tb.norm())
    return float((ta - tb).norm()) / norm if norm else math.inf


def _head(store: Store, key: str) -> bytearray:
    with store.blobs.open(key) as blob:
        return bytearray(blob.read(0, min(SAMPLE_BYTES, blob.size)))
