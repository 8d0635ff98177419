"""Terminal views of lineage: touched-tensor tables and layers × modules grids."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from graft import lineage
from graft.tui.grids import UNTOUCHED, HeatGrid, Key, layer_label

if TYPE_CHECKING:
    from graft.lineage import DiffRow, LogEntry, MethodTouches, Series, Touch


def _num(value: float | None, fmt: str = ".3g") -> str:
    return "" if value is None else format(value, fmt)


def _heat(value: float | None) -> str:
    """Colour for a relative change: the bigger, the hotter."""
    if value is None:
        return "magenta"
    if value < 1e-3:
        return "blue"
    if value < 1e-2:
        return "green"
    if value < 1e-1:
        return "yellow"
    return "bold red"


def delta_table(rows: Sequence[Touch | DiffRow]) -> Table:
    """One row per tensor: where it is, how much it changed (and against what)."""
    vs = bool(rows) and isinstance(rows[0], lineage.Touch)
    numeric = ("LAYER", "REL CHANGE", "CHANGED", "STABLE RANK", "RANK", "MAX |Δ|")
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("LAYER", "BLOCK", "MODULE", "TENSOR", *numeric[1:], *(["VS"] if vs else [])):
        table.add_column(column, justify="right" if column in numeric else "left")
    for t in rows:
        if t.status == "changed":
            change = Text(_num(t.rel_change), style=_heat(t.rel_change))
        elif t.status == "identical":
            change = Text("identical", style="dim")
        else:
            shapes = f"{_shape(t.old_shape)} → {_shape(t.new_shape)}"
            change = Text(f"{t.status} {shapes}", style="magenta")
        table.add_row(
            "" if t.layer is None else str(t.layer),
            t.block,
            t.module,
            t.tensor,
            change,
            "" if t.frac_changed is None else f"{t.frac_changed:.0%}",
            _num(t.stable_rank, ".2f"),
            "" if t.rank is None else str(t.rank),
            _num(t.max_abs),
            *([t.parent] if isinstance(t, lineage.Touch) else []),
        )
    return table


def series_table(s: Series) -> Table:
    """Layers × checkpoints: mean relative change against the run's base."""
    table = Table(
        title=f"run {s.run}: mean rel. change of each layer against {s.base}",
        title_justify="left",
        box=None,
        header_style="bold",
        pad_edge=False,
    )
    table.add_column("LAYER", justify="right")
    for ref in s.checkpoints:
        table.add_column(ref.split("/")[-1].split("@")[0], justify="right")
    for growth in s.layers:
        table.add_row(
            "—" if growth.layer is None else str(growth.layer),
            *(
                Text(_num(v, ".3g"), style=_heat(v)) if v is not None else Text("·", style="dim")
                for v in growth.rel_change
            ),
        )
    return table


def _shape(shape: list[int] | None) -> str:
    return "none" if shape is None else "×".join(map(str, shape))


def touched_grid(touches: Iterable[Touch], title: str, layers: Iterable[int | None] = ()) -> Table:
    """Layers × modules, each cell the largest relative change there; `layers`
    adds rows for layers left untouched, so that what was not changed shows."""
    grid = HeatGrid.of(touches, layers)
    return _grid(title, grid, lambda key: _num(grid.values[key], ".2g"))


def method_grid(m: MethodTouches) -> Table:
    """Layers × modules: how many of the method's artifacts changed each, mean change."""
    grid = HeatGrid.of_method(m)
    title = f"method {m.method}, {len(m.artifacts)} artifacts: changed by n × mean rel. change"
    return _grid(title, grid, lambda key: f"{grid.counts[key]}×{_num(grid.values[key], '.2g')}")


def _grid(title: str, grid: HeatGrid, text: Callable[[Key], str]) -> Table:
    table = Table(title=title, title_justify="left", box=None, header_style="bold", pad_edge=False)
    table.add_column("LAYER", justify="right")
    for _, module in grid.columns:
        table.add_column(module, justify="center")
    for layer in grid.layers:
        row = [Text(layer_label(layer))]
        for block, module in grid.columns:
            key = (layer, block, module)
            changed = key in grid.values
            row.append(
                Text(text(key), style=_heat(grid.values[key]))
                if changed
                else Text(UNTOUCHED, style="dim")
            )
        table.add_row(*row)
    return table


def edge_params(params: Mapping[str, object]) -> str:
    """How a parent was used, e.g. "role=input, weight=0.6, density=0.5"."""
    return ", ".join(f"{k}={v}" for k, v in params.items())


def log_tree(me: str, entries: list[LogEntry], *, children: bool) -> Tree:
    """Each entry hangs under the neighbour it was reached through."""
    tree = Tree(Text(me, style="bold"))
    nodes = {me: tree}
    for e in entries:
        how = e.relation + (f" by {e.method}" if e.method else "")
        if e.params:
            how += f" ({edge_params(e.params)})"
        arrow = "→" if children else "←"
        label = Text.assemble((e.ref, "bold"), f" ({e.kind}, {e.id[:12]}) {arrow} {how}")
        nodes[e.ref] = nodes.get(e.via, tree).add(label)
    if not entries:
        tree.add(Text("no recorded " + ("children" if children else "parents"), style="dim"))
    return tree
