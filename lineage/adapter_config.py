"""A LoRA adapter's per-module rank, alpha and scale, as PEFT reads adapter_config.json.

PEFT gives every module the global `r` / `lora_alpha` unless a key of
`rank_pattern` / `alpha_pattern` matches it. A key matches a module path when
the path ends with it, at a component boundary, the key being a regular
expression: "q_proj" matches "model.layers.0.self_attn.q_proj", and
"layers\\.0\\..*proj" matches every projection of layer 0. The first matching
key in the file's order wins. The scale is alpha / r, or alpha / √r with
`use_rslora`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["DEFAULT_ALPHA", "DEFAULT_R", "lora_alpha", "lora_rank", "lora_scale", "pattern_key"]

# LoraConfig's defaults, used when adapter_config.json leaves a field out.
DEFAULT_R = 8
DEFAULT_ALPHA = 8


def pattern_key(patterns: Iterable[str], module: str) -> str | None:
    """The first pattern that matches `module` (a module path such as
    "model.layers.0.self_attn.q_proj"), or None."""
    for pattern in patterns:
        if re.match(rf"(.*\.)?({pattern})$", module):
            return pattern
    return None


def _pattern_value(config: Mapping[str, Any], field: str, module: str) -> Any | None:
    patterns = config.get(field) or {}
    key = pattern_key(patterns, module)
    return None if key is None else patterns[key]


def lora_rank(config: Mapping[str, Any], module: str, default: int = DEFAULT_R) -> int:
    """The rank PEFT gives `module`: its `rank_pattern` entry, else `r`, else `default`."""
    value = _pattern_value(config, "rank_pattern", module)
    if value is None:
        value = config.get("r", default)
    return int(value)


def lora_alpha(config: Mapping[str, Any], module: str, default: float = DEFAULT_ALPHA) -> float:
    """The alpha PEFT gives `module`: its `alpha_pattern` entry, else `lora_alpha`."""
    value = _pattern_value(config, "alpha_pattern", module)
    if value is None:
        value = config.get("lora_alpha", default)
    return float(value)


def lora_scale(config: Mapping[str, Any], module: str, rank: int) -> float:
    """The factor PEFT multiplies `module`'s B·A by, for an adapter of rank `rank`."""
    alpha = lora_alpha(config, module)
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
