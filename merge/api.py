"""The merge engine's entry points: config → plan → run → register.

`merge_models` runs a mergekit-style config; `fold_adapter` folds one LoRA
adapter into its base. Both write a folder transformers loads and, unless told
not to, register it with `merge` edges to every input, carrying each input's
role and parameters. `extract_adapter` is fold-in's inverse: a fine-tune's
change as a LoRA adapter of its base, registered under the base with an
`extract` edge to the fine-tune.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from graft.lineage.record import ensure_deltas
from graft.lineage.register import register
from graft.merge.config import MergeConfig, parse_config
from graft.merge.errors import MergeConfigError
from graft.merge.executor import DEFAULT_SHARD_SIZE, run
from graft.merge.extract import Extracted, extract_lora
from graft.merge.inputs import ModelSource, open_model
from graft.merge.output import parents, provenance
from graft.merge.plan import MergePlan, build_plan
from graft.merge.results import MergeProgress, MergeResult
from graft.registry import AddResult, ArtifactNotFound, Manifest, Parent, Store, add
from graft.registry.repack import RepackMode, after_add, repack_mode


@dataclass(frozen=True)
class MergeOutcome:
    result: MergeResult
    manifest: Manifest | None  # the registered output, unless registration was off
    existed: bool = False  # an artifact with the same content was registered already


def merge_models(
    config: MergeConfig,
    out_dir: Path,
    *,
    store: Store | None,
    register: bool = True,
    name: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    shard_size: int = DEFAULT_SHARD_SIZE,
    rank: int | None = None,
    on_progress: Callable[[MergeProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> MergeOutcome:
    """Plan and run `config` into `out_dir`; with `register`, add the output to
    `store` (which also resolves registered model references). `rank` is that of
    a merged adapter, when the inputs are adapters."""
    plan = build_plan(config, store)
    return _run_and_register(
        plan,
        out_dir,
        store if register else None,
        name,
        seed,
        device,
        shard_size,
        on_progress,
        should_cancel,
        rank,
    )


def fold_adapter(
    adapter: str,
    out_dir: Path,
    *,
    store: Store | None,
    register: bool = True,
    base: str | None = None,
    dtype: str | None = None,
    name: str | None = None,
    device: str = "cpu",
    shard_size: int = DEFAULT_SHARD_SIZE,
    on_progress: Callable[[MergeProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> MergeOutcome:
    """Fold `adapter` into `base` — PEFT's merge_and_unload, key by key. The
    base defaults to the adapter's nearest recorded ancestor that is not an
    adapter, else the base its adapter_config.json names."""
    base = base or _recorded_base(adapter, store)
    document: dict[str, object] = {
        "merge_method": "passthrough",
        "models": [{"model": f"{base}+{adapter}"}],
    }
    if dtype:
        document["out_dtype"] = dtype
    plan = replace(
        build_plan(parse_config(document, source="fold"), store), method_name="lora_fold"
    )
    return _run_and_register(
        plan,
        out_dir,
        store if register else None,
        name,
        0,
        device,
        shard_size,
        on_progress,
        should_cancel,
    )


@dataclass(frozen=True)
class ExtractOutcome:
    extracted: Extracted
    manifest: Manifest | None  # the registered adapter, unless registration was off
    existed: bool = False


def extract_adapter(
    tuned: str,
    base: str,
    out_dir: Path,
    *,
    rank: int,
    store: Store | None,
    register: bool = True,
    modules: tuple[str, ...] = (),
    embeddings: bool = False,
    name: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> ExtractOutcome:
    """Write `tuned − base` as a rank-`rank` LoRA adapter of `base` into `out_dir`
    (`extract.extract_lora`). `store` also resolves registered references; with
    `register`, the adapter is added to it under the base with an `extract` edge to
    the fine-tune (folder inputs are registered first)."""
    mode = repack_mode(store) if store and register else "off"  # a bad setting stops it early
    base_source, tuned_source = open_model(base, store), open_model(tuned, store)
    named = (
        store.load_manifest(base_source.artifact_id).name
        if store and base_source.artifact_id
        else base
    )
    extracted = extract_lora(
        base_source,
        tuned_source,
        Path(out_dir),
        rank=rank,
        modules=modules,
        embeddings=embeddings,
        base_name=named,
        on_progress=on_progress,
        should_cancel=should_cancel,
    )
    if store is None or not register:
        return ExtractOutcome(extracted, None)
    links = [
        Parent(_registered(base_source, store), "adapter", {"role": "base"}),
        Parent(_registered(tuned_source, store), "extract", {"rank": rank}),
    ]
    added = _add_output(
        store,
        extracted.out_dir,
        mode,
        name=name or extracted.out_dir.name,
        method="extract",
        links=links,
    )
    return ExtractOutcome(extracted, added.manifest, added.existed)


def _add_output(store: Store, folder: Path, mode: RepackMode, **options: Any) -> AddResult:
    """Register a written output (`registry.add` options), record its deltas against
    its parents, and compact it as the store's repack `mode` says."""
    added = add(store, folder, **options)
    ensure_deltas(store, [added.manifest.id])
    after_add(store, added.manifest, mode="off" if added.existed else mode, compress=True)
    return added


def _registered(source: ModelSource, store: Store) -> str:
    """The id of `source`, registering it first when it was read from a folder."""
    if source.artifact_id:
        return source.artifact_id
    assert source.path is not None
    return register(source.path, store=store).manifest.id


def _recorded_base(adapter: str, store: Store | None) -> str:
    source = open_model(adapter, store)
    if store is not None and source.artifact_id:
        manifest = store.load_manifest(source.artifact_id)
        while manifest.parents:  # up past earlier checkpoints of the adapter's run
            manifest = store.load_manifest(manifest.parents[0].id)
            if manifest.kind != "adapter":
                return manifest.id
    declared = json.loads(source.companion("adapter_config.json") or b"{}")
    named = declared.get("base_model_name_or_path") if isinstance(declared, dict) else None
    if isinstance(named, str) and named:
        if store is not None:
            try:
                return store.resolve_ref(named).id
            except ArtifactNotFound:
                pass
        if source.path is not None and (source.path / named).exists():
            return str(source.path / named)
    raise MergeConfigError(
        f"{adapter}: no base recorded for this adapter", "name one with --base REF"
    )


def _run_and_register(
    plan: MergePlan,
    out_dir: Path,
    store: Store | None,
    name: str | None,
    seed: int,
    device: str,
    shard_size: int,
    on_progress: Callable[[MergeProgress], None] | None,
    should_cancel: Callable[[], bool] | None,
    rank: int | None = None,
) -> MergeOutcome:
    mode = repack_mode(store) if store is not None else "off"  # a bad setting stops it early
    if store is not None:
        plan = _register_inputs(plan, store)
    result = run(
        plan,
        out_dir,
        seed=seed,
        device=device,
        shard_size=shard_size,
        rank=rank,
        on_progress=on_progress,
        should_cancel=should_cancel,
    )
    if store is None:
        return MergeOutcome(result, None)
    added = _add_output(
        store,
        result.out_dir,
        mode,
        name=name or result.out_dir.name,
        kind="adapter" if plan.merges_adapters else "merge",
        method=plan.method_name,
        links=_links(plan),
        meta={"seed": str(seed)} if plan.config.method.name.startswith(("dare", "della")) else {},
    )
    return MergeOutcome(result, added.manifest, existed=added.existed)


def _register_inputs(plan: MergePlan, store: Store) -> MergePlan:
    """Register the inputs read from plain files before the run, so that the
    files written name their ids."""
    registered = {
        p.source.label: register(p.source.path, store=store).manifest.id
        for p in provenance(plan)
        if not p.source.artifact_id and p.source.path is not None
    }
    return replace(plan, registered=registered)


def _links(plan: MergePlan) -> list[Parent]:
    """An edge to every model the merge read, as `graft.parents` lists them."""
    links: dict[str, Parent] = {}
    for p in parents(plan):
        links.setdefault(
            p["id"], Parent(p["id"], p["relation"], {"role": p["role"], **p["params"]})
        )
    return list(links.values())
