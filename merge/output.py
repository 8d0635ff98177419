"""What a merge writes besides tensors: config, tokenizer, model card, lineage metadata."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import graft
from graft.merge.inputs import FoldedModel, ModelSource
from graft.merge.plan import MergePlan
from graft.merge.vocab import TOKENIZER_FILES
from graft.registry.manifest import Relation

# Files copied from the model that provides the architecture (the tokenizer's:
# `vocab.TOKENIZER_FILES`).
MODEL_FILES = ("config.json", "generation_config.json")
TORCH_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


@dataclass(frozen=True)
class Provenance:
    """A model the output was made from: the catalog's edge to it, and the
    files' `graft.parents` entry."""

    source: ModelSource
    relation: Relation
    role: str  # base | input | fold base (the base an input `BASE+ADAPTER` folds into)
    params: dict[str, Any]  # as written in the config: weight, density, ...


def provenance(plan: MergePlan) -> list[Provenance]:
    """Every model the merge read, an input `BASE+ADAPTER` as its two parts."""
    base_relation: Relation = "adapter" if plan.merges_adapters else "merge"
    out = []
    if plan.adapter_base is not None and plan.base is None:
        out.append(Provenance(plan.adapter_base, "adapter", "base", {}))
    for use in plan.uses:
        source = plan.sources[use.source]
        relation = base_relation if use.role == "base" else "merge"
        if isinstance(source, FoldedModel):
            out.append(Provenance(source.adapter, relation, use.role, use.params))
            out.append(Provenance(source.base, "merge", "fold base", {}))
        else:
            out.append(Provenance(source, relation, use.role, use.params))
    return out


def parents(plan: MergePlan) -> list[dict[str, Any]]:
    """`graft.parents`: each model read once, with its store id (a model read
    from files has the id it was registered under before the run, if any)."""
    seen: dict[str, dict[str, Any]] = {}
    for p in provenance(plan):
        label = p.source.label
        seen.setdefault(
            label,
            {
                "ref": label,
                "id": p.source.artifact_id or plan.registered.get(label),
                "relation": p.relation,
                "role": p.role,
                "params": p.params,
            },
        )
    return list(seen.values())


def lineage_metadata(plan: MergePlan) -> dict[str, str]:
    """The safetensors `__metadata__` of every output shard (string values; JSON
    where structured), so the files carry their history wherever they go."""
    return {
        "format": "pt",
        "graft.version": graft.__version__,
        "graft.method": plan.method_name,
        "graft.parents": json.dumps(parents(plan)),
        "graft.config": json.dumps(plan.config.document),
    }


def companion_files(plan: MergePlan) -> dict[str, bytes]:
    """config.json (dtype and layer count updated), generation config and tokenizer."""
    out: dict[str, bytes] = {}
    model = plan.sources[plan.files_from]
    for rel in MODEL_FILES:
        data = model.companion(rel)
        if data is not None:
            out[rel] = data
    if "config.json" in out:
        out["config.json"] = _updated_config(plan, out["config.json"])
    if plan.vocab is not None:
        return out | plan.vocab.files
    tokenizer = plan.sources[plan.tokenizer_from]
    for rel in TOKENIZER_FILES:
        data = tokenizer.companion(rel)
        if data is not None:
            out[rel] = data
    return out


def _updated_config(plan: MergePlan, raw: bytes) -> bytes:
    try:
        config = json.loads(raw)
    except ValueError:
        return raw
    float_dtypes = {t.dtype for t in plan.tasks if not t.copy}
    if len(float_dtypes) == 1 and (name := TORCH_NAMES.get(float_dtypes.pop())):
        # transformers 5 reads "dtype"; older releases "torch_dtype".
        key = "dtype" if "dtype" in config or "torch_dtype" not in config else "torch_dtype"
        config[key] = name
    if plan.num_layers is not None:
        config["num_hidden_layers"] = plan.num_layers
    if plan.vocab is not None:
        config["vocab_size"] = plan.vocab.size
    return (json.dumps(config, indent=2) + "\n").encode()


def model_card(plan: MergePlan, touched: list[str], note: str = "") -> bytes:
    """README.md: front matter the Hub understands, the config, the inputs."""
    base = next((p["ref"] for p in parents(plan) if p["role"] == "base"), None)
    library = "transformers"
    if plan.merges_adapters:
        library, base = "peft", plan.adapter_base.label if plan.adapter_base else None
    front: dict[str, Any] = {"library_name": library, "tags": ["merge", "graft"]}
    if base is not None:
        front["base_model"] = base
        front["base_model_relation"] = "adapter" if plan.merges_adapters else "merge"
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# Merge: {plan.method_name}",
        "",
        f"Made with graft {graft.__version__} — method `{plan.config.method.name}` "
        f"({plan.config.method.reference}).",
        "",
        "## Inputs",
        "",
        "| model | role | store id | parameters |",
        "|---|---|---|---|",
    ]
    for p in parents(plan):
        params = ", ".join(f"{k}={v}" for k, v in p["params"].items()) or "—"
        lines.append(f"| `{p['ref']}` | {p['role']} | {(p['id'] or '—')[:16]} | {params} |")
    changed = f"{len(touched)} of {len(plan.tasks)} tensors differ from "
    changed += "the base." if plan.base is not None else "the first input."
    if plan.merges_adapters:
        changed = f"{note} {len(touched)} of {len(plan.tasks)} modules changed."
    lines += [
        "",
        "## Configuration",
        "",
        "```yaml",
        yaml.safe_dump(plan.config.document, sort_keys=False).strip(),
        "```",
        "",
        "## Lineage",
        "",
        changed + " Each safetensors file's `__metadata__` records the inputs "
        "(`graft.parents`), the config (`graft.config`) and the changed tensors "
        "(`graft.touched`).",
        "",
    ]
    return "\n".join(lines).encode()


def write_companions(folder: Path, files: dict[str, bytes]) -> None:
    """Write into the merge's private temp folder (renamed into place at the end)."""
    for rel, data in files.items():
        with open(folder / rel, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
