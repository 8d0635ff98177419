"""The DuckDB catalog: a rebuildable index of the manifests.

DuckDB lets one process write, and then nobody else even read, so every
connection is short-lived and taken under an flock: shared for readers
(read-only connections may coexist), exclusive for writers. A reader that keeps
its results, not its connection, never blocks an add.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from graft.registry.errors import GraftError, StoreError
from graft.registry.fsutil import file_lock
from graft.registry.manifest import Manifest
from graft.registry.migrations import ADAPTER_TYPE, LATEST, MIGRATIONS

if TYPE_CHECKING:
    from graft.registry.blobs import BlobStore

Connection = duckdb.DuckDBPyConnection

# Companion files whose JSON is copied into catalog columns.
JSON_COLUMNS = {"config.json": "config", "adapter_config.json": "adapter_config"}
DELTA_REFERENCES = (
    ("tensor_deltas", "child_id"),
    ("tensor_deltas", "parent_id"),
    ("delta_pairs", "child_id"),
    ("delta_pairs", "parent_id"),
)


class Catalog:
    def __init__(
        self,
        path: Path,
        lock_path: Path,
        timeout: float,
        on_migrated: Callable[[Connection], None],
    ) -> None:
        self.path = path
        self.lock_path = lock_path
        self.timeout = timeout
        self.on_migrated = on_migrated  # brings the rows up to date after a migration
        # Whether this process has seen the latest schema. Until then the first
        # connection checks (one connection, not two: `graft ls` starts faster),
        # and a writer migrates.
        self.checked = False

    @contextlib.contextmanager
    def reading(self, *, sandboxed: bool = False) -> Iterator[Connection]:
        """A read-only connection; `sandboxed` also denies it any file or network
        access beyond the catalog (for users' own SQL)."""
        if not self.checked and not self.path.exists():
            self._upgrade()
        with self._lock(shared=True):
            con = self._connect(read_only=True, sandboxed=sandboxed)
            try:
                self.checked = self.checked or _applied(con) >= LATEST
                if self.checked:
                    yield con
                    return
            finally:
                con.close()
        self._upgrade()  # outside the shared lock, which a writer could not take
        with self.reading(sandboxed=sandboxed) as con:
            yield con

    @contextlib.contextmanager
    def writing(self) -> Iterator[Connection]:
        """An exclusive connection inside one transaction, committed on success."""
        with self._lock(shared=False):
            con = self._connect(read_only=False)
            try:
                con.begin()
                if not self.checked:
                    if _migrate(con):
                        self.on_migrated(con)
                    self.checked = True
                yield con
                con.commit()
            finally:
                con.close()

    def _upgrade(self) -> None:
        """Migrate (a writer's first connection does), then let readers in again."""
        with self.writing():
            pass

    @contextlib.contextmanager
    def _lock(self, *, shared: bool) -> Iterator[None]:
        """Readers share the catalog lock, a writer excludes everyone.

        A writer first takes the intent lock and holds it while it waits, and a
        reader passes through the intent lock (shared) on its way in, so new
        readers queue behind a waiting writer instead of starving it.
        """
        intent = self.lock_path.with_suffix(".intent")
        lock = functools.partial(file_lock, timeout=self.timeout, what="the catalog")
        if shared:
            with contextlib.ExitStack() as held:
                with lock(intent, shared=True):
                    held.enter_context(lock(self.lock_path, shared=True))
                yield
        else:
            with lock(intent, shared=False), lock(self.lock_path, shared=False):
                yield

    def _connect(self, *, read_only: bool, sandboxed: bool = False) -> Connection:
        config: dict[str, str | bool | int | float | list[str]] = (
            {"enable_external_access": False} if sandboxed else {}
        )
        try:
            return duckdb.connect(str(self.path), read_only=read_only, config=config)
        except duckdb.Error as e:
            raise StoreError(
                f"{self.path}: cannot open the catalog ({e})",
                "run `graft reindex` to rebuild it from the manifests",
            ) from e

    def rebuild(self, fill: Callable[[Connection], None]) -> None:
        """Empty every table and refill it, in one transaction; a catalog that
        no longer opens is moved aside (``catalog.duckdb.broken-<time>``) first."""
        with self._lock(shared=False):
            try:
                con = self._connect(read_only=False)
            except StoreError:
                stamp = time.strftime("%Y%m%dT%H%M%S")
                for p in (self.path, self.path.with_name(self.path.name + ".wal")):
                    if p.exists():
                        p.rename(p.with_name(f"{p.name}.broken-{stamp}"))
                con = self._connect(read_only=False)
            try:
                con.begin()
                _migrate(con)
                for table in ("tensors", "files", "edges", "artifacts"):
                    con.execute(f"DELETE FROM {table}")
                fill(con)
                for table in ("tensor_deltas", "delta_pairs"):  # derived: keep what still applies
                    con.execute(
                        f"DELETE FROM {table} WHERE child_id NOT IN (SELECT id FROM artifacts) "
                        "OR parent_id NOT IN (SELECT id FROM artifacts)"
                    )
                con.commit()
                self.checked = True
            finally:
                con.close()


def _migrate(con: Connection) -> int:
    """Apply the migrations the catalog lacks; return how many."""
    applied = 0
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, "
        "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    for version, (name, sql) in enumerate(MIGRATIONS, start=1):
        if version > _applied(con):
            con.execute(sql)
            con.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [version, name]
            )
            applied += 1
    return applied


def _applied(con: Connection) -> int:
    try:
        row = con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    except duckdb.CatalogException:
        return 0
    return int(row[0]) if row else 0


def insert_manifests(
    con: Connection,
    manifests: list[Manifest],
    blobs: BlobStore,
    amended: Mapping[str, str] | None = None,
) -> None:
    """Index manifests (as amended: `amended` maps their ids to the newest
    amendment applied): one bulk insert per table."""
    artifacts, tensors, files, edges = [], [], [], []
    for m in manifests:
        json_cols = _json_columns(m, blobs)
        weights = [f for f in m.files if f.is_safetensors]
        artifacts.append(
            {
                "id": m.id,
                "name": m.name,
                "version": m.version,
                "kind": m.kind,
                "created_at": m.created_at,
                "source_path": m.source,
                "size_bytes": m.size,
                "n_tensors": len(m.tensors),
                "method": m.method,
                "config": json_cols.get("config"),
                "adapter_config": json_cols.get("adapter_config"),
                "safetensors_metadata": json.dumps(weights[0].metadata) if weights else None,
                "user_metadata": json.dumps(m.meta),
                "amended": (amended or {}).get(m.id),
            }
        )
        for f in m.files:
            files.append(
                {
                    "artifact_id": m.id,
                    "path": f.path,
                    "role": "weights" if f.is_safetensors else "companion",
                    "size_bytes": f.size,
                    "blob": f.blob,
                    "metadata": json.dumps(f.metadata) if f.is_safetensors else None,
                }
            )
            data_start = f.size - sum(t.nbytes for t in f.tensors)
            for position, t in enumerate(f.tensors):
                tensors.append(
                    {
                        "artifact_id": m.id,
                        "name": t.name,
                        "dtype": t.dtype,
                        "shape": list(t.shape),
                        "nbytes": t.nbytes,
                        "blob": t.blob,
                        "file": f.path,
                        "position": position,
                        "file_offset": data_start + t.offset,
                    }
                )
        for p in m.parents:
            edges.append(
                {
                    "child_id": m.id,
                    "parent_id": p.id,
                    "relation": p.relation,
                    "method": m.method,
                    "params": json.dumps(p.params),
                }
            )
    bulk_insert(con, "artifacts", artifacts)
    bulk_insert(con, "files", files)
    bulk_insert(con, "tensors", tensors)
    bulk_insert(con, "edges", edges)
    if any(m.kind == "adapter" for m in manifests):
        con.execute(
            f"UPDATE artifacts SET adapter_type = {ADAPTER_TYPE} "
            "WHERE adapter_config IS NOT NULL AND adapter_type IS NULL"
        )


def delete_artifacts(con: Connection, ids: list[str], *, keep_deltas: bool = False) -> None:
    """Drop the artifacts' rows, and their deltas unless `keep_deltas` (a fetched
    artifact that was pulled: indexed again as local, its statistics still hold)."""
    if not ids:
        return
    con.execute("CREATE TEMP TABLE gone AS SELECT unnest(?::VARCHAR[]) AS id", [ids])
    deltas = () if keep_deltas else DELTA_REFERENCES
    for table, column in (
        ("tensors", "artifact_id"),
        ("files", "artifact_id"),
        ("edges", "child_id"),
        *deltas,
        ("artifacts", "id"),
    ):
        con.execute(f"DELETE FROM {table} WHERE {column} IN (SELECT id FROM gone)")
    con.execute("DROP TABLE gone")


def bulk_insert(con: Connection, table: str, rows: list[dict]) -> None:
    """Insert rows (dicts with the same keys) in one statement, a list parameter
    per column (no pyarrow: importing it, and numpy with it, costs an add ~0.1 s)."""
    if not rows:
        return
    columns = list(rows[0])
    con.execute(
        f"INSERT INTO {table} ({', '.join(columns)}) "
        f"SELECT {', '.join('unnest(?)' for _ in columns)}",
        [[row[c] for row in rows] for c in columns],
    )


def _json_columns(m: Manifest, blobs: BlobStore) -> dict[str, str]:
    """config.json and friends as JSON text; skipped when their blob is unreadable."""
    out = {}
    for f in m.files:
        column = JSON_COLUMNS.get(f.path)
        if column:
            try:
                out[column] = json.dumps(json.loads(blobs.read(f.blob)))
            except (OSError, ValueError, GraftError):
                continue
    return out
