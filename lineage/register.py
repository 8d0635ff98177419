"""Register an artifact and work out what it changed: the one call training code needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lineage.record import ensure_deltas
from registry import AddResult, Store, add


def register(
    path: str | Path,
    *,
    parent: str | None = None,
    method: str | None = None,
    meta: dict[str, str] | None = None,
    name: str | None = None,
    store: Store | str | Path | None = None,
    **options: Any,
) -> AddResult:
    """Add `path` to the store (default: $GRAFT_STORE or the per-user store) and
    record its deltas against its parent. Options are those of `registry.add`."""
    store = store if isinstance(store, Store) else Store.open(Path(store) if store else None)
    result = add(store, Path(path), parent=parent, method=method, meta=meta, name=name, **options)
    ensure_deltas(store, [result.manifest.id])
    return result
