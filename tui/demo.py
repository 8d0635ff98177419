"""`graft demo`: register the bundled samples and show what graft knows about them."""

from __future__ import annotations

from pathlib import Path

import lineage
import registry
from registry import Store
from tui import lineage_views, render

SAMPLES = Path(__file__).resolve().parent.parent / "sample_artifacts"

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
    render.err.print(f"store: {store.root}", markup=False)
    for folder, parent, method in PLAN:
        result = lineage.register(
            samples / folder, store=store, name=folder, parent=parent, method=method
        )
        m = result.manifest
        state = (
            "already registered" if result.existed else f"{render.human_size(result.bytes_new)} new"
        )
        render.out.print(f"[bold]$ graft add {folder}[/]  → {m.ref} ({m.kind}, {state})")
    render.out.print("\n[bold]$ graft ls[/]")
    render.out.print(render.artifact_table(registry.list_artifacts(store)))
    render.out.print("\n[bold]$ graft show tiny-llama-sft[/]")
    for part in render.detail_view(registry.show(store, "tiny-llama-sft"), tensors=False):
        render.out.print(part)
    render.out.print("\n[bold]$ graft touched tiny-llama-sft[/]  (grid only)")
    touches = lineage.touched(store, "tiny-llama-sft")
    title = "largest relative change per module (· untouched)"
    layers = lineage.layers_of(store, "tiny-llama-sft")
    render.out.print(lineage_views.touched_grid(touches, title, layers))
    render.out.print("\n[bold]$ graft touched --method lora[/]")
    render.out.print(lineage_views.method_grid(lineage.touched_by_method(store, "lora")))
