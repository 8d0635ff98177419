"""Lineage: where artifacts came from and which layers each one changed.

Computing deltas needs torch (`lineage.deltas`); importing this package does not.
"""

from graft.lineage.diff import (
    DiffRow,
    LayerGrowth,
    NothingInCommon,
    Series,
    diff,
    series,
)
from graft.lineage.infer import ParentGuesser, Suggestion, guess_parent
from graft.lineage.log import LogEntry, base_parents, log
from graft.lineage.names import AdapterKey, Place, adapter_key, place_of
from graft.lineage.record import ensure_deltas, recompute
from graft.lineage.register import register, register_run
from graft.lineage.runs import checkpoints_in, run_of
from graft.lineage.share import push
from graft.lineage.sql import QueryResult, SqlError, export_catalog, run_sql
from graft.lineage.touched import (
    MethodTouches,
    Touch,
    TouchCell,
    layers_of,
    touched,
    touched_by_method,
)

__all__ = [
    "AdapterKey",
    "DiffRow",
    "LayerGrowth",
    "LogEntry",
    "MethodTouches",
    "NothingInCommon",
    "ParentGuesser",
    "Place",
    "QueryResult",
    "Series",
    "SqlError",
    "Suggestion",
    "Touch",
    "TouchCell",
    "adapter_key",
    "base_parents",
    "checkpoints_in",
    "diff",
    "ensure_deltas",
    "export_catalog",
    "guess_parent",
    "layers_of",
    "log",
    "place_of",
    "push",
    "recompute",
    "register",
    "register_run",
    "run_of",
    "run_sql",
    "series",
    "touched",
    "touched_by_method",
]
