"""Register an artifact and work out what it changed: the one call training code needs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from graft.lineage.declared import base_candidates, declared_lineage
from graft.lineage.hub import is_hub_ref, resolve_hub
from graft.lineage.record import ensure_deltas
from graft.lineage.runs import checkpoint_name, checkpoints_in, has_weights, previous_checkpoint
from graft.registry import AddResult, ArtifactNotFound, GraftError, Manifest, Store, add, amend
from graft.registry.repack import after_add, repack_mode

DECLARED_BASE = "declared_base"  # meta of an artifact whose declared base was not registered


def register(
    path: str | Path,
    *,
    parent: str | None = None,
    method: str | None = None,
    meta: dict[str, str] | None = None,
    name: str | None = None,
    store: Store | str | Path | None = None,
    infer_parent: bool = False,
    repack: bool = True,
    compress: bool = True,
    push_to: str | None = None,
    **options: Any,
) -> AddResult:
    """Add `path` (a file, a folder, or `hf:ORG/NAME[@REVISION]`) to the store
    (default: $GRAFT_STORE or the per-user store). Options are those of
    `registry.add`.

    Without `parent`, a base model that the files declare (adapter_config.json,
    the model card's `base_model`) becomes the parent when it is registered;
    without `method`, the declared one (the PEFT type, a card tag) is used.
    With `infer_parent`, a parent still unknown is guessed (`lineage.infer`).
    It returns once the artifact is durably stored; its deltas against the
    parent are recorded and the store compacted after, in the background
    (`lineage.background`), or before it returns when $GRAFT_REPACK is
    `inline`. `repack=False` leaves both for later (a delta is computed when
    first asked for), `compress=False` keeps this artifact's blobs raw.
    With `push_to` (a remote's name) it is pushed there too, with its deltas
    and ancestors (`lineage.share.push`).
    """
    store = store if isinstance(store, Store) else Store.open(Path(store) if store else None)
    mode = repack_mode(store) if repack else "off"
    if is_hub_ref(str(path)):
        path, repo = resolve_hub(str(path))
        name = name or repo
    path = Path(path)
    declared = declared_lineage(path)
    meta = {**declared.meta, **(meta or {})}
    checkpoint = checkpoint_name(path, name)
    if parent is None and checkpoint:  # a run's checkpoint follows the one saved before it
        parent = previous_checkpoint(store, checkpoint)
    if parent is None or method is None:
        method = method or declared.method
        if parent is None and declared.base:
            parent = _registered(store, base_candidates(declared.base), path / declared.base)
            if parent is None:  # linked to it when it is added (`link_declared_children`)
                meta.setdefault(DECLARED_BASE, declared.base)
    if parent is None and infer_parent:
        from graft.lineage.infer import ParentGuesser  # (a re-add starts faster without)

        options["choose_parent"] = ParentGuesser(store)
    result = add(store, path, parent=parent, method=method, meta=meta, name=name, **options)
    if not result.existed:
        result = replace(result, linked=tuple(link_declared_children(store, result.manifest)))
    if mode == "inline":
        ensure_deltas(store, [result.manifest.id])
    after_add(
        store,
        result.manifest,
        mode="off" if result.existed else mode,
        compress=compress,
        detached="graft.lineage.background",
    )
    if push_to is not None:
        from graft.lineage.share import push

        push(store, [result.manifest.id], push_to)
    return result


def register_run(
    folder: str | Path,
    *,
    parent: str | None = None,
    name: str | None = None,
    store: Store | str | Path | None = None,
    **options: Any,
) -> list[AddResult]:
    """Register a trainer's output folder: each checkpoint-N inside, in step order,
    as RUN/checkpoint-N (RUN: `name`, else the folder's name) linked to the one
    before it — the first to `parent`, else to the run's latest registered
    checkpoint or the base its files declare — then the final model saved at the
    folder's root, if any, as RUN after the last checkpoint. Checkpoints already
    registered are found unchanged (cheaply, by the stat cache) and kept.
    Options are those of `register`."""
    store = store if isinstance(store, Store) else Store.open(Path(store) if store else None)
    folder = Path(folder)
    run = name or folder.resolve().name
    results: list[AddResult] = []
    previous = parent
    for checkpoint in checkpoints_in(folder):
        result = register(
            checkpoint, parent=previous, name=f"{run}/{checkpoint.name}", store=store, **options
        )
        results.append(result)
        previous = result.manifest.id
    if has_weights(folder):
        results.append(register(folder, parent=previous, name=run, store=store, **options))
    return results


def link_declared_children(store: Store, base: Manifest) -> list[str]:
    """Give `base` as parent to the artifacts without one whose files declare it as
    their base (recorded as meta `declared_base` when they were added before it);
    their amended NAME@N. One that cannot take it (only on a remote; it would make
    a cycle) is left as it is."""
    with store.catalog.reading() as con:
        rows = con.execute(
            "SELECT name, version, source_path, declared FROM ("
            "  SELECT *, json_extract_string(user_metadata, ?) AS declared FROM artifacts"
            ") a WHERE declared IS NOT NULL AND id <> ? "
            "AND NOT EXISTS (SELECT 1 FROM edges e WHERE e.child_id = a.id) ORDER BY created_at",
            [f"$.{DECLARED_BASE}", base.id],
        ).fetchall()
    linked = []
    for name, version, source, declared in rows:
        by_path = (
            source is not None
            and base.source is not None
            and (Path(source) / declared).resolve() == Path(base.source).resolve()
        )
        if base.name in base_candidates(declared) or by_path:
            try:
                child = amend(store, f"{name}@{version}", parent=base.id)
            except GraftError:
                continue
            linked.append(child.ref)
    return linked


def _registered(store: Store, names: list[str], as_path: Path) -> str | None:
    """The id of the first of `names` that is registered, else of the latest
    artifact added from `as_path` (a base named by a path relative to the files)."""
    with store.catalog.reading() as con:
        for candidate in names:
            try:
                return store.resolve(con, candidate)
            except ArtifactNotFound:
                continue
        row = con.execute(
            "SELECT id FROM artifacts WHERE source_path = ? ORDER BY created_at DESC LIMIT 1",
            [str(as_path.resolve())],
        ).fetchone()
    return str(row[0]) if row else None
