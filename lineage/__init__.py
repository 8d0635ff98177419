"""Lineage: where artifacts came from and which layers each one changed.

Computing deltas needs torch (`lineage.deltas`); importing this package does not.
"""

from typing import TYPE_CHECKING

from graft.exports import lazy_exports

if TYPE_CHECKING:
    from graft.lineage.diff import DiffRow, LayerGrowth, NothingInCommon, Series, diff, series
    from graft.lineage.infer import ParentGuesser, Suggestion, guess_parent
    from graft.lineage.log import LogEntry, base_parents, log
    from graft.lineage.names import AdapterKey, Place, adapter_key, place_of
    from graft.lineage.record import ensure_deltas, recompute
    from graft.lineage.register import DECLARED_BASE, link_declared_children, register, register_run
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

__all__ = lazy_exports(
    __name__,
    {
        "graft.lineage.diff": (
            "DiffRow",
            "LayerGrowth",
            "NothingInCommon",
            "Series",
            "diff",
            "series",
        ),
        "graft.lineage.infer": ("ParentGuesser", "Suggestion", "guess_parent"),
        "graft.lineage.log": ("LogEntry", "base_parents", "log"),
        "graft.lineage.names": ("AdapterKey", "Place", "adapter_key", "place_of"),
        "graft.lineage.record": ("ensure_deltas", "recompute"),
        "graft.lineage.register": (
            "DECLARED_BASE",
            "link_declared_children",
            "register",
            "register_run",
        ),
        "graft.lineage.runs": ("checkpoints_in", "run_of"),
        "graft.lineage.share": ("push",),
        "graft.lineage.sql": ("QueryResult", "SqlError", "export_catalog", "run_sql"),
        "graft.lineage.touched": (
            "MethodTouches",
            "Touch",
            "TouchCell",
            "layers_of",
            "touched",
            "touched_by_method",
        ),
    },
)
