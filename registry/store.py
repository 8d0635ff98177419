"""The store: blobs and manifests (the truth) plus the DuckDB catalog (an index).

Layout of a store folder::

    graft-store.json      marker: {"graft_store": 1}
    blobs/ab/cdef...      content-addressed bytes, key = xxh3-128 hex
    manifests/<id>.json   one immutable manifest per artifact
    amendments/<id>/      what `graft amend` changed of it since (lineage, labels)
    catalog.duckdb        the index, rebuilt by `graft reindex`
    cache/                what each added file hashed to (skips re-hashing it)
    locks/                flock files (catalog, gc)
    tmp/w-<pid>-…/        each writing process's temp files, renamed into blobs/ when
                          complete; a writer that died leaves its folder unlocked,
                          and the next writer removes it

Every catalog write first re-syncs the catalog with the manifest folder, so a
crash between writing a manifest and indexing it heals at the next write.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from graft.registry.amendments import Amendment, amendment_files, parse_amendment
from graft.registry.amendments import apply as apply_amendments
from graft.registry.catalog import Catalog, Connection, delete_artifacts, insert_manifests
from graft.registry.errors import AmbiguousRef, ArtifactNotFound, StoreError
from graft.registry.fsutil import file_lock, write_atomic
from graft.registry.manifest import Manifest, parse_manifest
from graft.registry.workdirs import WorkDirs

if TYPE_CHECKING:
    from graft.registry.blobs import BlobStore
    from graft.registry.statcache import StatCache

MARKER = "graft-store.json"
MARKER_CONTENT = {"graft_store": 1}
DEFAULT_LOCK_TIMEOUT = 600.0


def default_store_path() -> Path:
    """$GRAFT_STORE, else the per-user data folder (~/.local/share/graft on Linux)."""
    env = os.environ.get("GRAFT_STORE")
    if env:
        return Path(env)
    import platformdirs  # not at the top: most users set GRAFT_STORE or pass --store

    return Path(platformdirs.user_data_dir("graft"))


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifests_dir = root / "manifests"
        self.amendments_dir = root / "amendments"
        self.tmp_dir = root / "tmp"
        self.locks_dir = root / "locks"
        self.blobs_dir = root / "blobs"
        self.cache_dir = root / "cache"
        self.work = WorkDirs(self.tmp_dir)  # this process's temp folder, and the dead ones'
        self._blobs: BlobStore | None = None
        self._stat_cache: StatCache | None = None
        self._lazy = threading.Lock()
        timeout = float(os.environ.get("GRAFT_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT))
        self.lock_timeout = timeout
        self.catalog = Catalog(
            root / "catalog.duckdb", self.locks_dir / "catalog.lock", timeout, self.sync_catalog
        )

    @classmethod
    def open(cls, root: Path | None = None) -> Store:
        """Open the store at `root` (default: `default_store_path()`), creating it if new.

        The catalog is opened (and migrated when graft is newer) on first use.
        """
        root = Path(root) if root is not None else default_store_path()
        root = root.expanduser().absolute()
        _check_or_create(root)
        store = cls(root)
        for d in (
            store.blobs_dir,
            store.manifests_dir,
            store.amendments_dir,
            store.tmp_dir,
            store.locks_dir,
            store.cache_dir,
        ):
            d.mkdir(exist_ok=True)
        return store

    # The blob store and the stat cache are made on first use: commands that
    # only read the catalog (ls, log, sql, touched) then start without their
    # imports (codecs, buffers, thread pools: ~25 ms of a 250 ms `graft ls`).

    @property
    def blobs(self) -> BlobStore:
        with self._lazy:  # one instance: it keeps the store's pending blobs
            if self._blobs is None:
                from graft.registry.blobs import BlobStore

                self._blobs = BlobStore(self.blobs_dir, self.work)
            return self._blobs

    @property
    def stat_cache(self) -> StatCache:
        blobs = self.blobs
        with self._lazy:
            if self._stat_cache is None:
                from graft.registry.statcache import StatCache

                self._stat_cache = StatCache(self.cache_dir, self.work, blobs)
            return self._stat_cache

    # -- manifests ---------------------------------------------------------

    def manifest_path(self, artifact_id: str) -> Path:
        return self.manifests_dir / f"{artifact_id}.json"

    def manifest_ids(self) -> set[str]:
        return {p.stem for p in self.manifests_dir.glob("*.json")}

    def is_local(self, artifact_id: str) -> bool:
        """Whether the artifact is stored here (not only known from a remote)."""
        return self.manifest_path(artifact_id).is_file()

    def load_manifests(self) -> list[Manifest]:
        """Every manifest stored here that loads, oldest first."""
        manifests = []
        for artifact_id in self.manifest_ids():
            with contextlib.suppress(StoreError):  # damaged ones are `verify`'s to report
                manifests.append(self.load_manifest(artifact_id))
        return sorted(manifests, key=lambda m: (m.created_at, m.id))

    def load_manifest(self, artifact_id: str) -> Manifest:
        """The artifact's manifest as amended: stored here, or else as fetched from a remote."""
        path = self.manifest_path(artifact_id)
        if not path.is_file():
            path = next(self.root.glob(f"remotes/*/manifests/{artifact_id}.json"), path)
        try:
            manifest = parse_manifest(path.read_bytes())
        except FileNotFoundError as e:
            raise StoreError(
                f"manifest of artifact {artifact_id[:12]} is missing",
                "run `graft reindex` to drop it from the catalog",
            ) from e
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(
                f"{path}: manifest is damaged ({e})", "run `graft verify` to see what is affected"
            ) from e
        if manifest.id != artifact_id:
            raise StoreError(
                f"{path}: manifest holds artifact {manifest.id[:12]}", "run `graft verify`"
            )
        return apply_amendments(manifest, self.amendments(artifact_id))

    def amendments(self, artifact_id: str) -> list[Amendment]:
        """What `graft amend` changed of the artifact, oldest first."""
        found = []
        for path in amendment_files(self.amendments_dir / artifact_id):
            try:
                found.append(parse_amendment(path.read_bytes()))
            except (OSError, ValueError, TypeError) as e:
                raise StoreError(
                    f"{path}: amendment is damaged ({e})", "remove it, then `graft reindex`"
                ) from e
        return found

    def write_amendment(self, artifact_id: str, amendment: Amendment) -> None:
        folder = self.amendments_dir / artifact_id
        folder.mkdir(exist_ok=True)
        path = folder / f"{time.time_ns()}-{os.getpid()}.json"
        write_atomic(path, amendment.to_json(), self.work.mine())

    def newest_amendments(self) -> dict[str, str]:
        """Artifact id → the file name of its newest amendment, for every amended one."""
        newest: dict[str, str] = {}
        if not self.amendments_dir.is_dir():  # a store opened read-only, made before amend
            return newest
        for folder in self.amendments_dir.iterdir():
            files = amendment_files(folder)
            if files:
                newest[folder.name] = files[-1].name
        return newest

    def write_manifest(self, manifest: Manifest) -> int:
        """Write a new artifact's manifest; amendments left by one removed
        half-way (the same content, registered before) no longer apply."""
        shutil.rmtree(self.amendments_dir / manifest.id, ignore_errors=True)
        data = manifest.to_json()
        write_atomic(self.manifest_path(manifest.id), data, self.work.mine())
        return len(data)

    def remove_manifest(self, artifact_id: str) -> None:
        """Forget the artifact: its manifest, then its amendments (should this
        be cut short, amendments of no manifest are inert)."""
        with contextlib.suppress(FileNotFoundError):
            self.manifest_path(artifact_id).unlink()
        shutil.rmtree(self.amendments_dir / artifact_id, ignore_errors=True)

    # -- catalog -----------------------------------------------------------

    def sync_catalog(self, con: Connection) -> None:
        """Index manifests the catalog lacks, again those amended since they
        were indexed; drop rows whose manifest is gone."""
        on_disk = self.manifest_ids()
        amended = self.newest_amendments()
        rows = con.execute("SELECT id, remote IS NOT NULL, amended FROM artifacts").fetchall()
        indexed = {i for i, fetched, _ in rows if not fetched}
        delete_artifacts(con, sorted(indexed - on_disk))
        pulled = {i for i, fetched, _ in rows if fetched} & on_disk
        changed = {i for i, fetched, newest in rows if not fetched and amended.get(i) != newest}
        stale = sorted(pulled | (changed & on_disk))
        delete_artifacts(con, stale, keep_deltas=True)  # indexed again below
        missing = []
        for artifact_id in sorted((on_disk - indexed) | set(stale)):
            with contextlib.suppress(StoreError):  # damaged ones are `verify`'s to report
                missing.append(self.load_manifest(artifact_id))
        insert_manifests(con, missing, self.blobs, amended)

    def resolve(self, con: Connection, ref: str) -> str:
        """The id a REF names: NAME (latest version), NAME@N, REMOTE:NAME[@N] (a
        version claimed on a fetched remote), or a unique id prefix. A NAME that
        nothing here has is looked for on the fetched remotes."""
        name, _, number = ref.rpartition("@")
        version = int(number) if name and number.isdigit() else None
        name = name if version is not None else ref
        row = con.execute(
            "SELECT id FROM artifacts WHERE name = ? AND (? IS NULL OR version = ?) "
            "ORDER BY version DESC LIMIT 1",
            [name, version, version],
        ).fetchone()
        if row:
            return str(row[0])
        claimed = _claimed(con, name, version)
        if claimed:
            return claimed
        if version is not None:
            raise ArtifactNotFound(
                f"no artifact {ref!r}", f"see `graft show {name}` for its versions"
            )
        matches = con.execute(
            "SELECT id, name, version FROM artifacts WHERE starts_with(id, lower(?)) ORDER BY id",
            [ref],
        ).fetchall()
        if len(matches) == 1:
            return str(matches[0][0])
        if matches:
            which = ", ".join(f"{i[:12]} ({n}@{v})" for i, n, v in matches[:5])
            raise AmbiguousRef(f"{ref!r} matches several artifacts: {which}", "give more of the id")
        raise ArtifactNotFound(
            f"no artifact matches {ref!r}", "see `graft ls` for what the store holds"
        )

    def resolve_ref(self, ref: str) -> Manifest:
        with self.catalog.reading() as con:
            artifact_id = self.resolve(con, ref)
        return self.load_manifest(artifact_id)

    # -- locks -------------------------------------------------------------

    @contextlib.contextmanager
    def pin_blobs(self) -> Iterator[None]:
        """Held while writing blobs a manifest will point to: `gc` waits for it."""
        with file_lock(
            self.locks_dir / "gc.lock", shared=True, timeout=self.lock_timeout, what="the store"
        ):
            yield

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Held by `gc`: no add is between writing blobs and indexing them."""
        with file_lock(
            self.locks_dir / "gc.lock", shared=False, timeout=self.lock_timeout, what="the store"
        ):
            yield


def _claimed(con: Connection, name: str, version: int | None) -> str | None:
    """The id claimed as REMOTE:NAME[@N], or as NAME[@N] on the one remote that has it."""
    remote, _, bare = name.rpartition(":")
    rows = con.execute(
        """
        SELECT remote, id FROM remote_names
        WHERE ((remote = ? AND name = ?) OR name = ?) AND (? IS NULL OR version = ?)
          AND id IN (SELECT id FROM artifacts)  -- not a claim whose manifest was refused
        QUALIFY row_number() OVER (PARTITION BY remote ORDER BY version DESC) = 1
        ORDER BY remote
        """,
        [remote, bare, name, version, version],
    ).fetchall()
    if len({i for _, i in rows}) > 1:
        which = ", ".join(f"{r}:{name}" for r, _ in rows)
        raise AmbiguousRef(f"{name!r} is on several remotes: {which}", "name one as REMOTE:NAME")
    return str(rows[0][1]) if rows else None


def _check_or_create(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise StoreError(f"{root} is a file, not a graft store", "pass a folder to --store")
    marker = root / MARKER
    if marker.is_file():
        try:
            ok = json.loads(marker.read_text()) == MARKER_CONTENT
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise StoreError(f"{marker} is not a graft store marker", "check the --store path")
        return
    # Ignore another process's half-written marker: it is creating this store too;
    # and look for the marker again, which that process may have just renamed in.
    if (
        root.exists()
        and any(not p.name.startswith(".tmp-") for p in root.iterdir())
        and not marker.is_file()
    ):
        raise StoreError(
            f"{root} is not a graft store (no {MARKER}) and is not empty",
            "pass an empty or new folder to --store / GRAFT_STORE",
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
        write_atomic(marker, json.dumps(MARKER_CONTENT).encode())
    except OSError as e:
        raise StoreError(
            f"{root}: cannot create a store ({e.strerror})", "check the path and permissions"
        ) from e
