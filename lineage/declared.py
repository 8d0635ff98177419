"""Lineage that an artifact's own files declare.

PEFT writes `base_model_name_or_path` and `peft_type` into adapter_config.json;
training tools write a model card whose YAML front matter names `base_model`,
`base_model_relation` and tags such as `trl`, `dpo` or `sft`. A base named
there is linked when it matches a registered artifact (by name, or by the last
part of a Hub id or path).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# Card tags that say how a model was trained, most specific first.
METHOD_TAGS = ("dpo", "orpo", "kto", "grpo", "ppo", "reward-model", "sft", "abliterated", "merge")


@dataclass(frozen=True)
class Declared:
    base: str | None = None  # what the files name as the base model
    method: str | None = None
    tags: tuple[str, ...] = ()
    meta: dict[str, str] = field(default_factory=dict)  # trainer_state.json: step, loss


def declared_lineage(path: Path) -> Declared:
    """Read adapter_config.json and the README front matter; never raises."""
    folder = path if path.is_dir() else path.parent
    adapter = _json(folder / "adapter_config.json")
    card = _front_matter(folder / "README.md")
    base = adapter.get("base_model_name_or_path") or card.get("base_model")
    if isinstance(base, list):
        base = base[0] if base else None
    tags = card.get("tags") or []
    tags = tuple(str(t).lower() for t in tags) if isinstance(tags, list) else ()
    method = next((t for t in METHOD_TAGS if t in tags), None)
    if adapter.get("peft_type"):
        method = str(adapter["peft_type"]).lower()
    return Declared(str(base) if base else None, method, tags, _training(folder))


def _training(folder: Path) -> dict[str, str]:
    """The step a Trainer checkpoint was saved at, and its last logged loss."""
    state = _json(folder / "trainer_state.json")
    meta = {}
    if isinstance(state.get("global_step"), int):
        meta["global_step"] = str(state["global_step"])
    history = state.get("log_history")
    losses = (
        [h["loss"] for h in history if isinstance(h, dict) and "loss" in h]
        if isinstance(history, list)
        else []
    )
    if losses:
        meta["loss"] = str(losses[-1])
    return meta


def base_candidates(base: str) -> list[str]:
    """Names a declared base may be registered under: as given, then its last part."""
    last = base.rstrip("/").rsplit("/", 1)[-1]
    return [base] if last == base else [base, last]


def _json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _front_matter(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return {}
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    try:
        doc = yaml.safe_load(text[3:end]) if end > 0 else None
    except yaml.YAMLError:
        return {}
    return doc if isinstance(doc, dict) else {}
