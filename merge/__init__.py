"""Merge engine: mergekit-style configs, merge methods, LoRA fold-in, streamed output.

`load_config` → `build_plan` → `run` is the pipeline; `merge_models` and
`fold_adapter` run it and register the result with its lineage.
"""

from graft.merge.api import MergeOutcome, fold_adapter, merge_models
from graft.merge.config import MergeConfig, load_config, parse_config
from graft.merge.errors import AdapterError, MergeCancelled, MergeConfigError, MergeInputError
from graft.merge.executor import MergeProgress, MergeResult, run
from graft.merge.methods import METHODS, Method, Param, TensorJob, get_method
from graft.merge.plan import MergePlan, build_plan

__all__ = [
    "METHODS",
    "AdapterError",
    "MergeCancelled",
    "MergeConfig",
    "MergeConfigError",
    "MergeInputError",
    "MergeOutcome",
    "MergePlan",
    "MergeProgress",
    "MergeResult",
    "Method",
    "Param",
    "TensorJob",
    "build_plan",
    "fold_adapter",
    "get_method",
    "load_config",
    "merge_models",
    "parse_config",
    "run",
]
