"""`graft sql` and `graft export-catalog`: the catalog as a read-only database."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from graft.lineage.record import catch_up
from graft.registry import GraftError, Store
from graft.registry.fsutil import fsync_dir

TABLES = ("artifacts", "tensors", "files", "edges", "tensor_deltas", "delta_pairs")
DERIVED = ("tensor_deltas", "delta_pairs", "layer_touch")  # filled in after an add


class SqlError(GraftError, ValueError):
    """A query that DuckDB rejected (bad SQL, or an attempt to write)."""


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


def run_sql(store: Store, query: str) -> QueryResult:
    """Run `query` on a read-only, sandboxed connection to the catalog; a query
    that reads the deltas first records those that the adds left for later."""
    if any(name in query.lower() for name in DERIVED):
        catch_up(store)
    with store.catalog.reading(sandboxed=True) as con:
        try:
            cursor = con.execute(query)
            columns = [d[0] for d in cursor.description or []]
            rows = cursor.fetchall() if columns else []
        except duckdb.Error as e:
            first_line = str(e).strip().splitlines()[0]
            raise SqlError(
                f"SQL failed: {first_line}",
                'the catalog is read-only here; see the tables with `graft sql "SHOW TABLES"`',
            ) from e
    return QueryResult(columns, rows)


def export_catalog(store: Store, out_dir: Path) -> list[Path]:
    """Write every catalog table as `OUT_DIR/<table>.parquet` (atomically, via pyarrow)."""
    import pyarrow.parquet as pq

    catch_up(store)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with store.catalog.reading() as con:
        for table in TABLES:
            target = out_dir / f"{table}.parquet"
            fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{table}-")
            os.close(fd)
            try:
                pq.write_table(con.sql(f"SELECT * FROM {table}").to_arrow_table(), tmp)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            written.append(target)
    fsync_dir(out_dir)
    return written
