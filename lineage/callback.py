"""Register every checkpoint a transformers `Trainer` saves, as a lineage chain.

One line in a training script::

    trainer.add_callback(GraftCallback(parent="tiny-llama", method="sft"))

The first checkpoint's parent is `parent`; each later one's parent is the
checkpoint registered before it; with `push_to="team"` each one is also pushed
to that remote. Failures are logged as warnings and never stop training. Kept
out of `lineage/__init__` so that importing `lineage` does not import
transformers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from graft.lineage.register import register
from graft.registry import GraftError, Store

logger = logging.getLogger(__name__)


class GraftCallback(TrainerCallback):
    """Register `output_dir/checkpoint-N` in the store after each save (main process only)."""

    def __init__(
        self,
        parent: str | None = None,
        method: str | None = None,
        *,
        meta: dict[str, str] | None = None,
        store: Store | str | Path | None = None,
        push_to: str | None = None,
    ) -> None:
        self.parent = parent
        self.push_to = push_to  # a remote: each checkpoint is pushed once registered
        self.method = method
        self.meta = dict(meta or {})
        self.store = store  # None: $GRAFT_STORE or the per-user store
        self.registered: list[str] = []  # artifact ids, in save order

    def on_save(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero:
            return
        run_dir = args.output_dir or "trainer_output"  # None only before TrainingArguments' init
        folder = Path(run_dir) / f"checkpoint-{state.global_step}"
        meta = {**self.meta, "global_step": str(state.global_step)}
        loss = next((e["loss"] for e in reversed(state.log_history) if "loss" in e), None)
        if loss is not None:
            meta["loss"] = str(loss)
        parent = self.registered[-1] if self.registered else self.parent
        try:
            result = register(
                folder,
                parent=parent,
                method=self.method,
                meta=meta,
                store=self.store,
                push_to=self.push_to,
            )
        except GraftError as e:
            logger.warning("graft: could not register or push %s: %s", folder, e)
            return
        self.registered.append(result.manifest.id)
