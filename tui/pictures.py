"""Pictures of lineage as PNG or SVG: the layers × modules heatmap of what an
artifact (or a method, or a diff) changed, a run's trajectory over its
checkpoints, and the lineage graph.

Drawn from the same typed results as the CLI tables and the TUI. matplotlib
and networkx are imported only when a picture is drawn, so that commands which
draw nothing start no slower.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from graft.registry import GraftError
from graft.registry.fsutil import write_atomic
from graft.tui.grids import HeatGrid, Key, layer_label, parents_of
from graft.tui.lineage_views import edge_params

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colorbar import Colorbar
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from matplotlib.typing import ColorType

    from graft.lineage import DiffRow, LogEntry, MethodTouches, Series, Touch
    from graft.registry import Manifest

FORMATS = ("png", "svg")
DPI = 100
COLORMAP = "viridis"
UNTOUCHED = "#e6e6e6"  # outside the colour map: untouched is not "changed a little"
RESHAPED = "#ffffff"  # drawn hatched: changed shape, so no relative change
MAX_LINES = 16  # more layers than this: the trajectory as a step × layer heatmap


class PictureError(GraftError):
    """A picture that cannot be written where asked."""


@dataclass(frozen=True)
class Picture:
    """A picture written to `path`. `cells` maps each heatmap cell to its centre,
    as fractions of the picture's width and height from the top left."""

    path: Path
    cells: dict[Key, tuple[float, float]] = field(default_factory=dict)


def picture_format(path: Path) -> str:
    """The format of `path`, "png" or "svg", from its suffix (PictureError otherwise)."""
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise PictureError(f"cannot draw {path.name!r}", "name a .png or .svg file")
    return fmt


def cell_id(key: Key) -> str:
    """The SVG id of a heatmap cell, e.g. "cell-3-q_proj" ("cell-none-..." outside layers)."""
    layer, _, module = key
    return "cell-" + _slug(f"{'none' if layer is None else layer}-{module}")


def touched_heatmap(
    artifact: Manifest, touches: Sequence[Touch], layers: Sequence[int], path: Path
) -> Picture:
    """What `graft touched REF` lists, as a layers × modules heatmap."""
    parents = ", ".join(parents_of(touches)) or "its parents"
    made = f", made by {artifact.method}" if artifact.method else ""
    title = f"{artifact.ref} against {parents}{made}\nlargest relative change in each module"
    return heatmap(HeatGrid.of(touches, layers), title, path, what=artifact.ref)


def method_heatmap(m: MethodTouches, path: Path) -> Picture:
    """What every artifact made by a method changed: how many (n×), mean change."""
    title = (
        f"method {m.method}: {len(m.artifacts)} artifacts\n"
        "mean relative change in each module; n× = how many of them changed it"
    )
    footnote = "artifacts: " + ", ".join(m.artifacts)
    return heatmap(HeatGrid.of_method(m), title, path, footnote=footnote, what=f"method {m.method}")


def diff_heatmap(a: str, b: str, rows: Sequence[DiffRow], path: Path) -> Picture:
    """How B differs from A, per layer and module."""
    title = f"{b} against {a}\nlargest relative change in each module"
    layers = [r.layer for r in rows if r.layer is not None]
    return heatmap(HeatGrid.of(rows, layers), title, path, what=f"{b} against {a}")


def heatmap(grid: HeatGrid, title: str, path: Path, *, what: str, footnote: str = "") -> Picture:
    """Layers × modules, each changed cell coloured by its relative change on a log
    scale; untouched cells grey, reshaped ones hatched; a method grid's counts
    written in its cells."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    picture_format(path)
    if not grid.values:
        raise PictureError(f"{what} changed nothing recorded: no picture to draw")
    rows, cols = len(grid.layers), len(grid.columns)
    fig = Figure(
        figsize=(max(5.5, 2.2 + 0.85 * cols), max(3.2, 1.8 + 0.26 * rows)),
        dpi=DPI,
        layout="constrained",
    )
    ax = fig.add_subplot()
    cmap = colormaps[COLORMAP]
    norm = _log_norm([v for v in grid.values.values() if v])
    reshaped = False
    label = rows <= 48 and cols <= 16  # room to write each cell's value in it
    for r, layer in enumerate(grid.layers):
        for c, (block, module) in enumerate(grid.columns):
            key = (layer, block, module)
            face: ColorType = UNTOUCHED
            hatch = None
            if key in grid.values:
                value = grid.values[key]
                if value is None:
                    face, hatch, reshaped = RESHAPED, "xxx", True
                else:
                    face = cmap(float(norm(value)) if value > 0 else 0.0)
            ax.add_patch(
                Rectangle(
                    (c, r), 1, 1, facecolor=face, hatch=hatch, edgecolor="white", linewidth=0.6
                )
            ).set_gid(cell_id(key))
            if label and key in grid.values:
                text = _cell_text(grid, key)
                ax.text(c + 0.5, r + 0.5, text, ha="center", va="center", fontsize=7,
                        color=_ink(face))  # fmt: skip
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)  # layer 0 at the top, as in the tables
    ax.set_xticks(
        [c + 0.5 for c in range(cols)],
        [m for _, m in grid.columns],
        rotation=40,
        ha="right",
        fontsize=8,
    )
    ax.set_yticks(
        [r + 0.5 for r in range(rows)],
        [layer_label(x) for x in grid.layers],
        fontsize=7 if rows > 24 else 8,
    )
    ax.set_ylabel("layer")
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title, fontsize=10, loc="left")
    bar = fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label="relative change ‖ΔW‖/‖W‖")
    _plain_ticks(bar)
    legend = [Patch(facecolor=UNTOUCHED, label="untouched")]
    if reshaped:
        legend.append(Patch(facecolor=RESHAPED, hatch="xxx", edgecolor="black", label="reshaped"))
    fig.legend(handles=legend, loc="outside lower left", ncols=2, fontsize=8, frameon=False)
    if footnote:
        fig.text(0.99, 0.005, footnote, ha="right", va="bottom", fontsize=7, wrap=True)
    _save(fig, path)
    to_figure = fig.transFigure.inverted()
    cells = {}
    for r, layer in enumerate(grid.layers):
        for c, (block, module) in enumerate(grid.columns):
            x, y = to_figure.transform(ax.transData.transform((c + 0.5, r + 0.5)))
            cells[(layer, block, module)] = (float(x), float(1 - y))
    return Picture(path, cells)


def series_plot(s: Series, path: Path) -> Picture:
    """Each layer's mean relative change against the run's base, step by step, with
    the logged loss on a second axis when known; beyond MAX_LINES layers, a step ×
    layer heatmap with the loss above it."""
    from matplotlib.figure import Figure

    picture_format(path)
    fig = Figure(figsize=(8.5, 4.8), dpi=DPI, layout="constrained")
    title = f"run {s.run}: change of each layer against {s.base}"
    losses = [(i, x) for i, x in enumerate(s.losses) if x is not None]
    if len(s.layers) <= MAX_LINES:
        ax = fig.add_subplot()
        _trajectory_lines(ax, s)
        if losses:
            _loss_line(ax.twinx(), [(s.steps[i], x) for i, x in losses])
    elif losses:
        loss_ax, ax = fig.subplots(2, 1, sharex=True, height_ratios=(1, 4))
        _trajectory_heatmap(fig, ax, s)
        _loss_line(loss_ax, losses)
        loss_ax.set_title(title, fontsize=10, loc="left")
    else:
        ax = fig.add_subplot()
        _trajectory_heatmap(fig, ax, s)
    ax.set_xlabel("step")
    fig.axes[0].set_title(title, fontsize=10, loc="left")
    _save(fig, path)
    return Picture(path)


def _trajectory_lines(ax: Axes, s: Series) -> None:
    from matplotlib import colormaps

    colours = colormaps[COLORMAP].resampled(max(len(s.layers), 2))
    for i, growth in enumerate(s.layers):
        changes = zip(s.steps, growth.rel_change, strict=True)
        points = [(x, y) for x, y in changes if y is not None]
        ax.plot(
            *zip(*points, strict=True),
            marker="o",
            markersize=3,
            color=colours(i),
            label=_layer_name(growth.layer),
            gid=f"layer-{layer_label(growth.layer)}",
        )
    ax.set_ylabel("mean relative change ‖ΔW‖ / ‖W‖")
    ax.legend(fontsize=7, ncols=2 if len(s.layers) > 8 else 1, loc="upper left")


def _loss_line(ax: Axes, points: Sequence[tuple[float, float]]) -> None:
    ax.plot(
        *zip(*points, strict=True),
        color="black",
        linestyle="--",
        marker="s",
        markersize=3,
        label="training loss",
        gid="loss",
    )
    ax.set_ylabel("training loss")
    ax.legend(fontsize=7, loc="upper right")


def _trajectory_heatmap(fig: Figure, ax: Axes, s: Series) -> None:
    import numpy as np
    from matplotlib import colormaps

    data = np.array(
        [[np.nan if v is None else v for v in g.rel_change] for g in s.layers], dtype=float
    )
    image = ax.imshow(
        np.ma.masked_invalid(data),
        aspect="auto",
        cmap=colormaps[COLORMAP].with_extremes(bad=UNTOUCHED),
        norm=_log_norm([float(v) for v in data.flat if v > 0]),
        interpolation="nearest",
    )
    ax.set_xticks(range(len(s.steps)), [str(x) for x in s.steps], fontsize=7)
    ticks = range(0, len(s.layers), max(1, len(s.layers) // 24))
    ax.set_yticks(list(ticks), [layer_label(s.layers[i].layer) for i in ticks], fontsize=7)
    ax.set_ylabel("layer")
    _plain_ticks(fig.colorbar(image, ax=ax, label="mean relative change"))


def lineage_graph(me: str, entries: Sequence[LogEntry], path: Path, *, children: bool) -> Picture:
    """The artifact with its ancestors above it (or its descendants below), each edge
    labelled with its relation, method and merge parameters."""
    import networkx as nx
    from matplotlib.figure import Figure

    picture_format(path)
    graph = nx.DiGraph()
    graph.add_node(me, row=0, label=me)
    for e in entries:
        row = -e.depth if children else e.depth
        if e.ref not in graph or abs(row) > abs(graph.nodes[e.ref]["row"]):
            graph.add_node(e.ref, row=row, label=f"{e.ref}\n{e.kind}")
        parent, child = (e.via, e.ref) if children else (e.ref, e.via)
        how = " ".join(x for x in (e.relation, e.method) if x)
        graph.add_edge(
            parent, child, label=how + (f"\n{edge_params(e.params)}" if e.params else "")
        )
    pos = nx.multipartite_layout(graph, subset_key="row", align="horizontal")
    per_row = Counter(row for _, row in graph.nodes(data="row"))
    fig = Figure(
        figsize=(max(6.0, 2.8 * max(per_row.values())), max(3.0, 1.7 * len(per_row))),
        dpi=DPI,
        layout="constrained",
    )
    ax = fig.add_subplot()
    ax.set_axis_off()
    nx.draw_networkx_edges(
        graph, pos, ax=ax, arrowstyle="-|>", arrowsize=14, node_size=2600, edge_color="#555555"
    )
    nx.draw_networkx_edge_labels(
        graph,
        pos,
        ax=ax,
        font_size=7,
        rotate=False,
        edge_labels=nx.get_edge_attributes(graph, "label"),
    )
    for node, (x, y) in pos.items():
        mine = node == me
        ax.text(
            x,
            y,
            graph.nodes[node]["label"],
            ha="center",
            va="center",
            fontsize=8,
            fontweight="bold" if mine else "normal",
            gid=f"node-{_slug(node)}",
            bbox={
                "boxstyle": "round,pad=0.4",
                "facecolor": "#fde725" if mine else "#e8f1fa",
                "edgecolor": "#333333",
            },
        )
    ax.margins(0.18, 0.25)
    what = "descendants" if children else "lineage"
    ax.set_title(f"{what} of {me}", fontsize=10, loc="left")
    _save(fig, path)
    return Picture(path)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _layer_name(layer: int | None) -> str:
    return "outside layers" if layer is None else f"layer {layer}"


def _log_norm(values: Sequence[float]) -> LogNorm:
    """A log scale over `values` (one decade around a single value)."""
    from matplotlib.colors import LogNorm

    positive = [v for v in values if v > 0]
    if not positive:
        return LogNorm(1e-3, 1.0)
    low, high = min(positive), max(positive)
    if low == high:
        low, high = low / 10**0.5, high * 10**0.5
    return LogNorm(low, high)


def _cell_text(grid: HeatGrid, key: Key) -> str:
    value = grid.values[key]
    text = "new" if value is None else format(value, ".2g")
    return f"{grid.counts[key]}×{text}" if key in grid.counts else text


def _plain_ticks(bar: Colorbar) -> None:
    """Colour bar ticks as 0.01, 0.1, 1 (not 10⁻²); within one decade, labelled
    minor ticks (3, 4, 5), as there is no major one to label."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: format(v, ".2g"))
    low, high = bar.norm.vmin, bar.norm.vmax
    bar.ax.yaxis.set_major_formatter(plain)
    within_a_decade = low is not None and high is not None and high < 10 * low
    bar.ax.yaxis.set_minor_formatter(plain if within_a_decade else NullFormatter())


def _ink(face: ColorType) -> str:
    """Black or white text, whichever reads on `face`."""
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(face)
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def _save(fig: Figure, path: Path) -> None:
    """Write the picture atomically; SVG text stays text (searchable, smaller)."""
    import matplotlib

    fmt = picture_format(path)
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "graft"}):
        fig.savefig(buffer, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
    write_output(path, buffer.getvalue())


def write_output(path: Path, data: bytes) -> None:
    """Write a picture or page atomically; PictureError (one line) when it cannot."""
    try:
        write_atomic(path, data)
    except OSError as e:
        raise PictureError(
            f"cannot write {path}: {e.strerror or e}", "name a file in a folder you can write"
        ) from None
