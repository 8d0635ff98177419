"""Remotes: named object stores a team shares, and where things live on them.

The store keeps its remotes in ``remotes.json`` (name, URL, endpoint; never a
credential). A remote mirrors a store under its prefix::

    blobs/ab/cdef...              blobs as stored here (raw or encoded), key = xxh3-128
    manifests/<id>.json           the artifacts' manifests, immutable and checksummed
    deltas/<id>.parquet           `tensor_deltas` rows of that artifact against its parents
    names/<name>/<version>.json   {"id": ...}: the claim of a version, created only if absent

A push writes in that order — blobs, deltas, manifest, claim — so whatever a
claim or manifest points at is there before it.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from graft.registry.errors import GraftError
from graft.registry.fsutil import file_lock, write_atomic
from graft.registry.objects import FolderObjects, Objects, S3Objects
from graft.registry.remote_index import fetched_dir, index_remotes
from graft.registry.store import Store

CONFIG = "remotes.json"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class UnknownRemote(GraftError, LookupError):
    pass


class BadRemote(GraftError, ValueError):
    pass


@dataclass(frozen=True)
class Remote:
    name: str
    url: str  # s3://BUCKET[/PREFIX] or file:///PATH
    endpoint_url: str | None = None  # an S3-compatible server other than AWS


def list_remotes(store: Store) -> list[Remote]:
    path = store.root / CONFIG
    try:
        doc = json.loads(path.read_text())
        return [Remote(**r) for r in doc["remotes"]]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError) as e:
        raise BadRemote(
            f"{path} is damaged ({e})", "fix or delete it, then `graft remote add`"
        ) from None


def add_remote(
    store: Store, name: str, url: str, endpoint_url: str | None = None, *, force: bool = False
) -> Remote:
    remote = Remote(name, url, endpoint_url)
    _check(remote)
    with _config_lock(store):
        remotes = list_remotes(store)
        replaced = [r for r in remotes if r.name == name]
        if replaced and not force:
            raise BadRemote(f"remote {name!r} exists", "pass --force to replace it")
        _save(store, [*(r for r in remotes if r.name != name), remote])
        if replaced and replaced[0] != remote:
            _forget_fetched(store, name)
    return remote


def remove_remote(store: Store, name: str) -> None:
    """Forget the remote and what was fetched from it (nothing on it is touched)."""
    with _config_lock(store):
        remotes = list_remotes(store)
        get_remote(store, name)
        _save(store, [r for r in remotes if r.name != name])
        _forget_fetched(store, name)


def _forget_fetched(store: Store, name: str) -> None:
    with store.catalog.writing() as con:
        shutil.rmtree(fetched_dir(store, name), ignore_errors=True)
        index_remotes(con, store)


def get_remote(store: Store, name: str | None) -> Remote:
    """The remote called `name`; without one, the only remote there is."""
    remotes = list_remotes(store)
    if name is None:
        if len(remotes) == 1:
            return remotes[0]
        if remotes:
            raise UnknownRemote(
                f"{len(remotes)} remotes are set up", "name one (see `graft remote list`)"
            )
        raise UnknownRemote(
            "no remote is set up", "add one with `graft remote add NAME s3://BUCKET/PREFIX`"
        )
    for r in remotes:
        if r.name == name:
            return r
    raise UnknownRemote(f"no remote named {name!r}", "see `graft remote list`")


def open_objects(remote: Remote) -> Objects:
    parts = urlsplit(remote.url)
    if parts.scheme == "file":
        return FolderObjects(remote.name, Path(parts.path))
    return S3Objects(remote.name, parts.netloc, parts.path, remote.endpoint_url)


def blob_key(key: str) -> str:
    return f"blobs/{key[:2]}/{key[2:]}"


def manifest_key(artifact_id: str) -> str:
    return f"manifests/{artifact_id}.json"


def deltas_key(artifact_id: str) -> str:
    return f"deltas/{artifact_id}.parquet"


def claim_key(name: str, version: int) -> str:
    return f"names/{name}/{version}.json"


def check_name(name: str) -> str:
    """An artifact name that is safe as part of an object key (and a path)."""
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts) or any(c in name for c in "\\\0\n"):
        raise BadRemote(
            f"artifact name {name!r} cannot be a name on a remote",
            "give it a name of plain parts, e.g. `run/checkpoint-500`",
        )
    return name


def _check(remote: Remote) -> None:
    if not NAME.fullmatch(remote.name):
        raise BadRemote(
            f"remote name {remote.name!r} is not allowed",
            "use letters, digits, '_', '.', '-' (up to 64)",
        )
    parts = urlsplit(remote.url)
    if parts.scheme == "s3":
        if not BUCKET.fullmatch(parts.netloc):
            raise BadRemote(
                f"{remote.url!r}: {parts.netloc!r} is not a bucket name", "s3://BUCKET/PREFIX"
            )
    elif parts.scheme == "file":
        if parts.netloc or not parts.path.startswith("/"):
            raise BadRemote(f"{remote.url!r} is not a file URL", "file:///ABSOLUTE/PATH")
    else:
        raise BadRemote(
            f"{remote.url!r}: remotes are s3:// or file:// URLs",
            "e.g. s3://BUCKET/PREFIX or file:///mnt/shared/graft",
        )
    if remote.endpoint_url is not None:
        endpoint = urlsplit(remote.endpoint_url)
        if endpoint.scheme not in ("http", "https") or not endpoint.hostname:
            raise BadRemote(
                f"endpoint {remote.endpoint_url!r} is not an http(s) URL",
                "e.g. https://ACCOUNT.r2.cloudflarestorage.com",
            )
        if endpoint.username or endpoint.password:  # a credential would land in the store
            raise BadRemote(
                "the endpoint URL holds credentials",
                "give the bare URL; credentials come from AWS_* variables or ~/.aws",
            )


def _save(store: Store, remotes: list[Remote]) -> None:
    doc = {"remotes": [asdict(r) for r in sorted(remotes, key=lambda r: r.name)]}
    write_atomic(store.root / CONFIG, json.dumps(doc, indent=1).encode(), store.work.mine())


def _config_lock(store: Store) -> contextlib.AbstractContextManager[None]:
    return file_lock(
        store.locks_dir / "remotes.lock", shared=False, timeout=store.lock_timeout, what="remotes"
    )
