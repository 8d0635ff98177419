"""`graft demo`: register the bundled samples and show what graft knows about them."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from rich.text import Text

from graft import lineage, registry
from graft.registry import Store
from graft.tui import artifact_views, lineage_views, render

# Package data of `graft` (in a checkout, graft/sample_artifacts links to the
# repository's folder).
SAMPLES = Path(__file__).parent.parent / "sample_artifacts"

# (folder, parent folder, method) in registration order.
PLAN = (
    ("tiny-llama", None, None),
    ("lora-copy", "tiny-llama", "lora"),
    ("lora-reverse", "tiny-llama", "lora"),
    ("lora-count", "tiny-llama", "lora"),
    ("tiny-llama-sft", "tiny-llama", "sft"),
)


def run_demo(store: Store, samples: Path | None = None) -> None:
    samples = samples or SAMPLES
    render.err.print(f"store: {store.root}")
    for folder, parent, method in PLAN:
        result = lineage.register(
            samples / folder, store=store, name=folder, parent=parent, method=method
        )
        m = result.manifest
        state = (
            "already registered" if result.existed else f"{render.human_size(result.bytes_new)} new"
        )
        _command(f"add {folder}", f"  → {m.ref} ({m.kind}, {state})", gap=False)
    _command("ls")
    render.out.print(artifact_views.artifact_table(registry.list_artifacts(store)))
    _command("show tiny-llama-sft")
    for part in artifact_views.detail_view(registry.show(store, "tiny-llama-sft"), tensors=False):
        render.out.print(part)
    _command("touched tiny-llama-sft", "  (grid only)")
    touches = lineage.touched(store, "tiny-llama-sft")
    title = "largest relative change per module (· untouched)"
    layers = lineage.layers_of(store, "tiny-llama-sft")
    render.out.print(lineage_views.touched_grid(touches, title, layers))
    _command("touched --method lora")
    render.out.print(lineage_views.method_grid(lineage.touched_by_method(store, "lora")))
    _merge(store)


def populate(store: Store, samples: Path | None = None) -> None:
    """Register the samples and the demo merge, printing nothing (for `graft tui --demo`)."""
    samples = samples or SAMPLES
    for folder, parent, method in PLAN:
        lineage.register(samples / folder, store=store, name=folder, parent=parent, method=method)
    _merge_soup(store)


# A TIES merge of the fine-tune with a LoRA folded into the base.
MERGE_CONFIG = {
    "merge_method": "ties",
    "base_model": "tiny-llama",
    "models": [
        {"model": "tiny-llama-sft", "parameters": {"weight": 0.6, "density": 0.5}},
        {"model": "tiny-llama+lora-copy", "parameters": {"weight": 0.4, "density": 0.5}},
    ],
    "dtype": "bfloat16",
}


def _merge_soup(store: Store) -> Any:
    """Run the demo merge (registered as demo-soup) and return merge_models' outcome."""
    from graft.merge import merge_models, parse_config

    with tempfile.TemporaryDirectory() as scratch:
        return merge_models(parse_config(MERGE_CONFIG), Path(scratch) / "demo-soup", store=store)


def _merge(store: Store) -> None:
    _command("merge demo-soup.yaml --out demo-soup")
    render.out.print(yaml.safe_dump(MERGE_CONFIG, sort_keys=False).strip())
    out = _merge_soup(store)
    assert out.manifest is not None
    r = out.result
    render.out.print(
        f"→ {out.manifest.ref}: {r.tensors} tensors, {len(r.touched)} changed against the base",
    )
    _command(f"log {out.manifest.ref}")
    me, entries = lineage.log(store, out.manifest.ref)
    render.out.print(lineage_views.log_tree(me, entries, children=False))
    _command(f"touched {out.manifest.ref}", "  (grid only)")
    touches = lineage.touched(store, out.manifest.ref)
    layers = lineage.layers_of(store, out.manifest.ref)
    title = "largest relative change per module vs the base (· untouched)"
    render.out.print(lineage_views.touched_grid(touches, title, layers))


def _command(command: str, after: str = "", *, gap: bool = True) -> None:
    """The command a step shows, in bold, as the user would type it."""
    render.out.print(Text.assemble("\n" if gap else "", (f"$ graft {command}", "bold"), after))
