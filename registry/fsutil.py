"""Durable, atomic file writes and cross-process locks.

A file appears under its final name only once its bytes are on disk (temp file,
fsync, `os.replace`, fsync of the folder), so a crash at any moment leaves
either the old state or the new one, never a partial file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from graft.registry.errors import StoreBusy


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(target: Path, tmp_dir: Path | None = None) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces `target` atomically when the block succeeds.

    `tmp_dir` must be on the same filesystem as `target` (default: its folder).
    On any exception the temp file is removed and `target` is untouched.
    """
    fd, tmp = tempfile.mkstemp(dir=tmp_dir or target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide a shared store
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def write_atomic(target: Path, data: bytes, tmp_dir: Path | None = None) -> None:
    with atomic_writer(target, tmp_dir) as f:
        f.write(data)


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool, timeout: float, what: str) -> Iterator[None]:
    """Hold an flock on `path` (shared or exclusive); the kernel drops it if we die."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, mode)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreBusy(
                        f"{what} is locked by another graft process for over {timeout:g} s",
                        "wait for it to finish, or raise GRAFT_LOCK_TIMEOUT",
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        yield
    finally:
        os.close(fd)  # closing releases the lock
