"""Layers × modules grids: the one shape behind the CLI's tables, the TUI's
heatmaps and the pictures, built from the typed lineage results."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from graft.lineage import DiffRow, MethodTouches, Touch

BLOCK_ORDER = ("embedding", "attention", "mlp", "norm", "head", "other")
UNTOUCHED = "·"

Key = tuple[int | None, str, str]  # (layer, block, module)


def module_columns(keys: Iterable[Key]) -> list[tuple[str, str]]:
    """The (block, module) columns of a grid over `keys`: embedding first, then
    attention, mlp, norm, head."""
    return sorted(
        {(b, mod) for _, b, mod in keys},
        key=lambda c: (BLOCK_ORDER.index(c[0]) if c[0] in BLOCK_ORDER else len(BLOCK_ORDER), c[1]),
    )


def layer_order(layers: Iterable[int | None]) -> list[int | None]:
    """Layers in grid order: what sits in no layer (embeddings, head) first."""
    return sorted(set(layers), key=lambda x: (x is not None, x or 0))


def layer_label(layer: int | None) -> str:
    return "—" if layer is None else str(layer)


@dataclass(frozen=True)
class HeatGrid:
    """Which (layer, block, module) cells changed, by how much. A value of None
    means changed without a relative change (added, removed or reshaped); a
    method grid also counts the artifacts that changed each cell."""

    layers: list[int | None] = field(default_factory=list)
    columns: list[tuple[str, str]] = field(default_factory=list)  # (block, module)
    values: dict[Key, float | None] = field(default_factory=dict)
    counts: dict[Key, int] = field(default_factory=dict)

    @classmethod
    def of(cls, rows: Iterable[DiffRow], layers: Iterable[int | None] = ()) -> HeatGrid:
        """Each cell the largest relative change of its changed tensors; `layers`
        adds rows for layers left untouched, so that what was not changed shows."""
        values: dict[Key, float | None] = {}
        for t in rows:
            if t.status == "identical":
                continue
            key = (t.layer, t.block, t.module)
            old = values.get(key)
            values[key] = t.rel_change if old is None else max(old, t.rel_change or 0.0)
        all_layers = layer_order([*(layer for layer, _, _ in values), *layers])
        return cls(all_layers, module_columns(values), values)

    @classmethod
    def of_method(cls, m: MethodTouches) -> HeatGrid:
        """Each cell the mean relative change of the method's artifacts that changed it."""
        values = {(c.layer, c.block, c.module): c.mean_rel_change for c in m.cells}
        counts = {(c.layer, c.block, c.module): c.artifacts for c in m.cells}
        layers = layer_order(layer for layer, _, _ in values)
        return cls(layers, module_columns(values), values, counts)

    def changed(self, layer: int | None, block: str, module: str) -> bool:
        return (layer, block, module) in self.values

    def changed_layers(self) -> list[int | None]:
        return [x for x in self.layers if any(self.changed(x, b, m) for b, m in self.columns)]

    def cells(self) -> list[list[str]]:
        """One row per layer: the layer, then each module's change (with a method
        grid's "n×" count) or "·" when untouched."""
        rows = []
        for layer in self.layers:
            row = [layer_label(layer)]
            for block, module in self.columns:
                key = (layer, block, module)
                if key not in self.values:
                    row.append(UNTOUCHED)
                    continue
                value = self.values[key]
                text = "new shape" if value is None else format(value, ".2g")
                row.append(f"{self.counts[key]}×{text}" if key in self.counts else text)
            rows.append(row)
        return rows


def parents_of(touches: Sequence[Touch]) -> list[str]:
    """The parents (NAME@N) the changes were measured against, in order seen."""
    return list(dict.fromkeys(t.parent for t in touches))


# How a terminal grid shortens its column headers, and what the legend says about it.
_SHORTER = (
    (re.compile(r"_proj$"), "", "_proj dropped"),
    (re.compile("layernorm"), "norm", "norm = layernorm"),
    (re.compile("attention"), "attn", "attn = attention"),
    (re.compile("embed_tokens"), "embed", "embed = embed_tokens"),
)


def short_module(module: str) -> str:
    """A module name short enough for a terminal grid: "q" for q_proj, "post_attn_norm"
    for post_attention_layernorm (`short_legend` says so under the grid)."""
    for pattern, short, _ in _SHORTER:
        module = pattern.sub(short, module)
    return module


def short_legend(modules: Iterable[str]) -> str:
    """What `short_module` did to `modules` ("" when nothing)."""
    names = list(modules)
    return "; ".join(words for pattern, _, words in _SHORTER if any(map(pattern.search, names)))
