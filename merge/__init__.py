"""Merge engine: mergekit-style configs, merge methods, LoRA fold-in, streamed output.

`load_config` → `build_plan` → `run` is the pipeline; `merge_models` and
`fold_adapter` run it and register the result with its lineage.
"""

from typing import TYPE_CHECKING

from graft.exports import lazy_exports

if TYPE_CHECKING:
    from graft.merge.api import MergeOutcome, fold_adapter, merge_models
    from graft.merge.chunks import TensorJob
    from graft.merge.config import MergeConfig, load_config, parse_config
    from graft.merge.errors import AdapterError, MergeCancelled, MergeConfigError, MergeInputError
    from graft.merge.executor import run
    from graft.merge.methods import METHODS, Method, Param, get_method
    from graft.merge.plan import MergePlan, build_plan
    from graft.merge.results import MergeProgress, MergeResult

__all__ = lazy_exports(
    __name__,
    {
        "graft.merge.api": ("MergeOutcome", "fold_adapter", "merge_models"),
        "graft.merge.config": ("MergeConfig", "load_config", "parse_config"),
        "graft.merge.errors": (
            "AdapterError",
            "MergeCancelled",
            "MergeConfigError",
            "MergeInputError",
        ),
        "graft.merge.executor": ("run",),
        "graft.merge.chunks": ("TensorJob",),
        "graft.merge.methods": ("METHODS", "Method", "Param", "get_method"),
        "graft.merge.plan": ("MergePlan", "build_plan"),
        "graft.merge.results": ("MergeProgress", "MergeResult"),
    },
)
