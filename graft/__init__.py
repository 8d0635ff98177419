"""graft: an artifact registry and merge engine for safetensors lineage.

The subpackages are `graft.registry` (store, blobs, manifests, catalog),
`graft.lineage` (edges, deltas, queries), `graft.merge` (merge engine, LoRA
fold-in) and `graft.tui` (the command line and the terminal UI). This module
is the public Python API::

    import graft

    store = graft.Store.open()
    graft.register("out/checkpoint-500", store=store, parent="llama-base", method="dpo")
    graft.touched(store, "out/checkpoint-500")

Every name is imported on first use, so `import graft` (which the `graft`
command does first) loads neither torch nor DuckDB.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# torch's OpenMP threads spin between parallel regions unless told to sleep.
# Beside graft's own reading, decoding and writing threads that spinning took
# half the CPU time of a merge on two cores (perf: 50% of the samples in
# libgomp). It must be set before torch loads; a setting of the user's wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The name on PyPI, where `graft` belongs to another project; the import name
# and the command stay `graft`.
DISTRIBUTION = "graft-lineage"

SUBPACKAGES = ("registry", "lineage", "merge", "tui")

# Public name -> the module that defines it.
_API = {
    **dict.fromkeys(
        (
            "Store",
            "GraftError",
            "ArtifactNotFound",
            "add",
            "list_artifacts",
            "show",
            "export",
            "verify",
            "gc",
            "remove",
            "reindex",
            "fetch",
            "pull",
        ),
        "graft.registry",
    ),
    **dict.fromkeys(
        ("register", "push", "touched", "touched_by_method", "diff", "series", "log", "run_sql"),
        "graft.lineage",
    ),
    "GraftCallback": "graft.lineage.callback",
    **dict.fromkeys(("merge_models", "fold_adapter", "load_config"), "graft.merge"),
}

__all__ = [
    "DISTRIBUTION",
    "ArtifactNotFound",
    "GraftCallback",
    "GraftError",
    "Store",
    "__version__",
    "add",
    "diff",
    "export",
    "fetch",
    "fold_adapter",
    "gc",
    "list_artifacts",
    "load_config",
    "log",
    "merge_models",
    "pull",
    "push",
    "register",
    "reindex",
    "remove",
    "run_sql",
    "series",
    "show",
    "touched",
    "touched_by_method",
    "verify",
]

if TYPE_CHECKING:
    from graft.lineage import diff, log, register, run_sql, series, touched, touched_by_method
    from graft.lineage.callback import GraftCallback
    from graft.merge import fold_adapter, load_config, merge_models
    from graft.registry import (
        ArtifactNotFound,
        GraftError,
        Store,
        add,
        export,
        gc,
        list_artifacts,
        reindex,
        remove,
        show,
        verify,
    )

    __version__: str


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(DISTRIBUTION)
        except PackageNotFoundError:  # a source tree that was never installed
            return "unknown"
    if name in SUBPACKAGES:
        return importlib.import_module(f"graft.{name}")
    if name not in _API:
        raise AttributeError(f"module 'graft' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *SUBPACKAGES, *__all__})
