"""Lineage that an artifact's own files declare.

PEFT writes `base_model_name_or_path` and `peft_type` into adapter_config.json;
training tools write a model card (README.md) whose YAML front matter names
`base_model`, `base_model_relation` and tags. A base named there is linked
when it matches a registered artifact (by name, or by the last part of a Hub
id or path).

The method recorded is how the weights were trained, first found of:

1. Axolotl's config, which its cards quote in a "See axolotl config" block:
   its `rl` (dpo, ipo, kto, orpo, simpo, grpo), else sft.
2. A trainer's tag: TRL's trainers tag their cards with their name (sft, dpo,
   orpo, kto, grpo, ...; Unsloth trains with TRL and keeps the tag);
   `abliterated` and `merge` too.
3. `base_model_relation: merge` or `quantized`.
4. An adapter's PEFT type (lora, ia3, ...), when nothing says how it was trained.
5. `finetune`, when a trainer wrote the card (`generated_from_trainer`, `trl`,
   `unsloth`, `axolotl`) without naming the method.

The adapter type (PEFT type, DoRA, rsLoRA) is a fact of adapter_config.json,
kept apart by the catalog (`artifacts.adapter_type`), so a TRL SFT LoRA has
method sft and adapter type lora.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Card tags that name the training method, most specific first; a few are
# spelled differently from the method they record.
METHOD_TAGS = (
    "online-dpo", "dpo", "ipo", "orpo", "simpo", "kto", "cpo", "bco", "async-grpo", "grpo",
    "gmpo", "rloo", "ppo", "xpo", "nash-md", "reward-trainer", "reward-model", "prm", "gkd",
    "distillation", "sdft", "sft", "abliterated", "merge",
)  # fmt: skip
TAG_METHOD = {"async-grpo": "grpo", "reward-trainer": "reward-model"}
TRAINER_TAGS = ("generated_from_trainer", "trl", "unsloth", "axolotl")
AXOLOTL_CONFIG = re.compile(r"See axolotl config</summary>.*?```yaml\n(.*?)\n```", re.DOTALL)


@dataclass(frozen=True)
class Declared:
    base: str | None = None  # what the files name as the base model
    method: str | None = None
    tags: tuple[str, ...] = ()
    meta: dict[str, str] = field(default_factory=dict)  # trainer_state.json: step, loss


def declared_lineage(path: Path) -> Declared:
    """Read adapter_config.json and the model card; never raises."""
    folder = path if path.is_dir() else path.parent
    adapter = _json(folder / "adapter_config.json")
    card_text = _text(folder / "README.md")
    card = _front_matter(card_text)
    axolotl = _axolotl_config(card_text)
    base = adapter.get("base_model_name_or_path") or card.get("base_model")
    base = base or axolotl.get("base_model")
    if isinstance(base, list):
        base = base[0] if base else None
    tags = card.get("tags") or []
    tags = tuple(str(t).lower() for t in tags) if isinstance(tags, list) else ()
    method = _method(tags, card.get("base_model_relation"), adapter, axolotl)
    return Declared(str(base) if base else None, method, tags, _training(folder))


def _method(tags: tuple[str, ...], relation: Any, adapter: dict, axolotl: dict) -> str | None:
    if axolotl:
        rl = axolotl.get("rl")
        return str(rl).lower() if isinstance(rl, str) and rl else "sft"
    tag = next((t for t in METHOD_TAGS if t in tags), None)
    if tag:
        return TAG_METHOD.get(tag, tag)
    if relation in ("merge", "quantized"):
        return str(relation)
    if adapter.get("peft_type"):
        return str(adapter["peft_type"]).lower()
    if any(t in tags for t in TRAINER_TAGS):
        return "finetune"
    return None


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


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return ""


def _front_matter(text: str) -> dict:
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    return _yaml_mapping(text[3:end]) if end > 0 else {}


def _axolotl_config(card: str) -> dict:
    """The training config an Axolotl card quotes, or {}."""
    found = AXOLOTL_CONFIG.search(card)
    return _yaml_mapping(found.group(1)) if found else {}


def _yaml_mapping(text: str) -> dict:
    """`text` parsed as a YAML mapping, else {} (yaml loads only for a card that has some)."""
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return doc if isinstance(doc, dict) else {}
