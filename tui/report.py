"""`graft report REF`: one self-contained HTML page about an artifact.

Everything is inline — styles, and the pictures as SVG — and nothing refers to
the network, so the page opens offline and travels as an e-mail attachment.
"""

from __future__ import annotations

import html
import json
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml
from rich.filesize import decimal as human_size

from graft import lineage, registry
from graft.lineage import Touch
from graft.registry import ArtifactNotFound, Manifest, Store
from graft.tui import pictures
from graft.tui.lineage_views import edge_params

TOP_TENSORS = 20

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h1 small { color: #777; font-weight: normal; }
h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: 0.2em 0.8em 0.2em 0; text-align: left; }
th { font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font-family: ui-monospace, monospace; font-size: 0.92em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; }
.dim { color: #777; }
"""


def write_report(store: Store, ref: str, out: Path) -> Path:
    """Write the page about `ref` to `out` (atomically); returns `out`."""
    detail = registry.show(store, ref)
    m = detail.manifest
    me, ancestors = lineage.log(store, m.ref)
    touches = lineage.touched(store, m.ref) if m.parents else []
    with tempfile.TemporaryDirectory(prefix="graft-report-") as tmp:
        draw = _svg_drawer(Path(tmp))
        graph = draw(lambda p: pictures.lineage_graph(me, ancestors, p, children=False))
        sections = [_overview(detail), _section("Lineage", graph)]
        if touches:
            layers = lineage.layers_of(store, m.ref)
            heatmap = draw(lambda p: pictures.touched_heatmap(m, touches, layers, p))
            sections.append(_section("What it changed", heatmap + _top_tensors(touches)))
        if m.kind == "merge" or _recipe(m):
            sections.append(_merge(m, ancestors))
        run = lineage.run_of(m.name)
        if run:
            sections.append(_trajectory(store, run, draw))
    page = _page(f"{m.ref} — graft report", "\n".join(sections))
    pictures.write_output(out, page.encode())
    return out


def _svg_drawer(folder: Path) -> Callable[[Callable[[Path], object]], str]:
    """Draw into an SVG file, return it ready to inline in HTML."""
    count = 0

    def draw(picture: Callable[[Path], object]) -> str:
        nonlocal count
        count += 1
        path = folder / f"{count}.svg"
        picture(path)
        return f"<figure>{inline_svg(path.read_text(encoding='utf-8'))}</figure>"

    return draw


def inline_svg(svg: str) -> str:
    """An SVG file as an element of an HTML page: no XML prolog, doctype, RDF
    metadata or namespace declarations (HTML parsing supplies them), so the page
    names no URL at all."""
    svg = re.sub(r"<\?xml[^>]*\?>|<!DOCTYPE[^>]*>", "", svg)
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    return re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg).strip()


def _overview(detail: registry.ArtifactDetail) -> str:
    m = detail.manifest
    rows = [
        ("kind", m.kind),
        ("method", m.method or "—"),
        ("size", f"{human_size(m.size)} in {len(m.files)} files, {len(m.tensors)} tensors"),
        ("stored", f"{human_size(detail.usage.stored_bytes)} ({detail.usage.ratio:.2f} of raw)"),
        ("created", m.created_at),
        ("source", m.source or "—"),
        ("id", m.id),
    ]
    rows += [(f"meta {k}", v) for k, v in m.meta.items()]
    rows += [
        (f"shared with {s.parent}", f"{s.tensors} tensors") for s in detail.shared if s.tensors
    ]
    if detail.children:
        rows.append(("children", ", ".join(detail.children)))
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    title = f"<h1>{_e(m.name)}<small>@{m.version}</small></h1>"
    return f"{title}<table>{body}</table>"


def _top_tensors(touches: Sequence[Touch]) -> str:
    ranked = sorted(touches, key=lambda t: -(t.rel_change or 0.0))[:TOP_TENSORS]
    head = "".join(
        f"<th>{c}</th>"
        for c in ("tensor", "layer", "module", "rel. change", "stable rank", "rank", "against")
    )
    rows = []
    for t in ranked:
        change = f"{t.rel_change:.3g}" if t.rel_change is not None else f"{t.status}"
        stable = "" if t.stable_rank is None else f"{t.stable_rank:.2f}"
        cells = [
            f"<td><code>{_e(t.tensor)}</code></td>",
            f"<td class=num>{'' if t.layer is None else t.layer}</td>",
            f"<td>{_e(t.module)}</td>",
            f"<td class=num>{change}</td>",
            f"<td class=num>{stable}</td>",
            f"<td class=num>{'' if t.rank is None else t.rank}</td>",
            f"<td>{_e(t.parent)}</td>",
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    caption = f"<p>The {len(ranked)} most changed of {len(touches)} changed tensors:</p>"
    return f"{caption}<table><tr>{head}</tr>{''.join(rows)}</table>"


def _recipe(m: Manifest) -> dict | None:
    """The merge configuration the files record (`graft.config`), if any."""
    for f in m.files:
        text = f.metadata.get("graft.config")
        if text:
            try:
                doc = json.loads(text)
            except ValueError:
                return None
            return doc if isinstance(doc, dict) else None
    return None


def _merge(m: Manifest, ancestors: Sequence[lineage.LogEntry]) -> str:
    inputs = [e for e in ancestors if e.depth == 1]
    rows = "".join(
        f"<tr><td>{_e(e.ref)}</td><td>{_e(e.kind)}</td><td>{_e(edge_params(e.params))}</td></tr>"
        for e in inputs
    )
    recipe = _recipe(m)
    yaml_text = yaml.safe_dump(recipe, sort_keys=False) if recipe else "(not recorded)"
    return _section(
        "Merge",
        f"<table><tr><th>input</th><th>kind</th><th>how</th></tr>{rows}</table>"
        f"<p>Recipe:</p><pre>{_e(yaml_text)}</pre>",
    )


def _trajectory(store: Store, run: str, draw: Callable[[Callable[[Path], object]], str]) -> str:
    try:
        growth = lineage.series(store, run)
    except ArtifactNotFound as e:
        return _section(f"Run {run}", f"<p class=dim>{_e(e.message)}</p>")
    return _section(f"Run {run}", draw(lambda p: pictures.series_plot(growth, p)))


def _section(title: str, body: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{body}</section>"


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width'><title>{_e(title)}</title>"
        f"<style>{STYLE}</style></head><body>{body}"
        f"<footer class=dim><p>Made by graft report.</p></footer></body></html>\n"
    )


def _e(text: object) -> str:
    return html.escape(str(text))
