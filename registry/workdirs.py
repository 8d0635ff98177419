"""Temp folders under a store's tmp/, one per writing process, that tell whether their writer lives.

Each process that writes takes a folder `tmp/w-<pid>-<random>/` and holds an
exclusive flock on its `lock` file for as long as it lives; the kernel drops
the lock when the process dies, however it dies. So when a writer is killed,
the next process that writes can tell its leftovers (temp blobs, a half
encoded blob) from those of a writer still at work, and remove them. A folder
is locked before it gets its `w-` name, so none is ever seen unlocked alive.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

LOCK = "lock"
PREFIX = "w-"


class WorkDirs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._mine: Path | None = None
        self._pid = -1
        self._fd = -1

    def mine(self) -> Path:
        """This process's folder, made (after sweeping the dead writers' ones) on first use."""
        if self._mine is None or self._pid != os.getpid():
            self.sweep()
            staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".new-"))
            fd = os.open(staging / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            mine = self.root / f"{PREFIX}{os.getpid()}-{staging.name.removeprefix('.new-')}"
            os.rename(staging, mine)
            self._mine, self._pid, self._fd = mine, os.getpid(), fd
            atexit.register(_remove, mine, fd)
        return self._mine

    def sweep(self, *, everything: bool = False, dry_run: bool = False) -> int:
        """Remove the folders of writers that are gone (with `everything`, also loose
        files and half-made folders, which only `gc`, holding the store, may do);
        return how many entries went (or, with `dry_run`, would go)."""
        removed = 0
        for entry in self.root.iterdir():
            if not entry.name.startswith(PREFIX):
                if everything:
                    if not dry_run:
                        _delete(entry)
                    removed += 1
                continue
            try:
                fd = os.open(entry / LOCK, os.O_RDWR)
            except OSError:  # removed meanwhile by another sweeper
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its writer is alive
                os.close(fd)
                continue
            try:  # still holding its lock, so no other sweeper removes it at once
                if not dry_run:
                    _delete(entry)
                removed += 1
            finally:
                os.close(fd)
        return removed


def _delete(entry: Path) -> None:
    if entry.is_dir():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()


def _remove(folder: Path, fd: int) -> None:
    """At a clean exit: this process's folder goes (anything left in it is garbage)."""
    if os.getpid() == int(folder.name.removeprefix(PREFIX).split("-")[0]):
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.close(fd)
