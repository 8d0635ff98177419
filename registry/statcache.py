"""Remember what each added file hashed to, so an unchanged re-add reads nothing.

Like git's index: an entry is trusted only while the file's device, inode,
size, mtime and ctime are all unchanged (ctime cannot be set from user space,
so rewriting a file and restoring its mtime still invalidates it) and every
blob it names is still stored. Files modified within the last few seconds are
not cached, since a write in the same clock tick could leave the times equal.
The cache is only an accelerator: `gc` empties it, and a miss just hashes.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from graft.registry.fsutil import write_atomic
from graft.registry.keys import hash_bytes
from graft.registry.manifest import FileRecord, TensorRecord
from graft.registry.workdirs import WorkDirs

if TYPE_CHECKING:
    from graft.registry.blobs import BlobStore

RACY_SECONDS = 3


def file_identity(st: os.stat_result) -> list[int]:
    """What changes whenever a file's content may have: device, inode, size, mtime, ctime."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class StatCache:
    def __init__(self, root: Path, work: WorkDirs, blobs: BlobStore) -> None:
        self.root = root
        self.work = work
        self.blobs = blobs

    def _entry(self, path: Path) -> Path:
        return self.root / f"{hash_bytes(str(path.resolve()).encode())}.json"

    def get(self, path: Path, st: os.stat_result, rel: str) -> FileRecord | None:
        """The record `path` had when added, if it provably has not changed since."""
        try:
            entry = json.loads(self._entry(path).read_bytes())
            if entry["identity"] != file_identity(st):
                return None
            r = entry["record"]
            record = FileRecord(
                path=rel,
                size=r["size"],
                blob=r["blob"],
                tensors=tuple(
                    TensorRecord(**{**t, "shape": tuple(t["shape"])}) for t in r["tensors"]
                ),
                metadata=r["metadata"],
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return record if all(self.blobs.has(k) for k in record.blob_keys()) else None

    def put(self, path: Path, st: os.stat_result, record: FileRecord) -> None:
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_SECONDS * 10**9:
            return
        entry = {"identity": file_identity(st), "record": asdict(record)}
        with contextlib.suppress(OSError):  # a cache that cannot be written is no cache
            write_atomic(self._entry(path), json.dumps(entry).encode(), self.work.mine())

    def clear(self) -> None:
        for p in self.root.glob("*.json"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
