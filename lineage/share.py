"""Pushing with lineage: an artifact's deltas are recorded before it leaves, so
a team that fetches it can ask what it touched without its weights."""

from __future__ import annotations

from graft.lineage.record import ensure_deltas
from graft.registry import Store
from graft.registry.push import OnProgress, PushResult
from graft.registry.push import push as push_blobs


def push(
    store: Store,
    refs: list[str],
    remote: str | None = None,
    *,
    ancestors: bool = True,
    on_progress: OnProgress | None = None,
) -> PushResult:
    """Send `refs` (and their ancestors) to `remote` (default: the only one)."""
    return push_blobs(
        store,
        refs,
        remote,
        ancestors=ancestors,
        on_progress=on_progress,
        prepare=lambda ids: ensure_deltas(store, ids),
    )
