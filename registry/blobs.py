"""Content-addressed blobs: each distinct byte string stored once under its xxh3-128.

Blobs live at ``blobs/<first 2 hex>/<remaining 30 hex>``. A blob is written to
a temp file, fsynced and renamed into place, so a blob that exists is complete.
Bytes are streamed through a fixed buffer; nothing is ever read whole.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import xxhash

from registry.errors import CorruptBlob, SourceChanged
from registry.fsutil import fsync_dir

CHUNK = 8 * 1024 * 1024

OnBytes = Callable[[int], None]


def _no_progress(_: int) -> None:
    pass


def _chunks(f: BinaryIO, offset: int, length: int, buf: bytearray) -> Iterator[memoryview]:
    """Yield views of `length` bytes of `f` from `offset`, reusing `buf`."""
    f.seek(offset)
    view = memoryview(buf)
    left = length
    while left:
        n = f.readinto(view[: min(left, len(buf))])  # type: ignore[attr-defined]
        if not n:
            raise EOFError(f"{length - left} of {length} bytes, then end of file")
        left -= n
        yield view[:n]


def hash_bytes(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


class BlobStore:
    def __init__(self, root: Path, tmp_dir: Path) -> None:
        self.root = root
        self.tmp_dir = tmp_dir
        self._buf = bytearray(CHUNK)
        self._unsynced_dirs: set[Path] = set()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key[2:]

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def hash_range(
        self, f: BinaryIO, offset: int, length: int, on_bytes: OnBytes = _no_progress
    ) -> str:
        h = xxhash.xxh3_128()
        for chunk in _chunks(f, offset, length, self._buf):
            h.update(chunk)
            on_bytes(len(chunk))
        return h.hexdigest()

    def put_range(
        self, f: BinaryIO, offset: int, length: int, on_bytes: OnBytes = _no_progress
    ) -> tuple[str, int]:
        """Store bytes [offset, offset+length) of `f`; return (key, bytes newly written).

        Hashes first, so content already stored costs one read and no write.
        """
        key = self.hash_range(f, offset, length, on_bytes)
        if self.has(key):
            return key, 0

        def write(out: BinaryIO) -> None:
            h = xxhash.xxh3_128()
            for chunk in _chunks(f, offset, length, self._buf):
                h.update(chunk)
                out.write(chunk)
            if h.hexdigest() != key:
                raise SourceChanged(
                    f"{getattr(f, 'name', 'input')}: bytes changed while being added",
                    "wait until whatever writes it has finished, then add again",
                )

        self._install(key, write)
        return key, length

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        key = hash_bytes(data)
        if self.has(key):
            return key, 0
        self._install(key, lambda out: out.write(data))
        return key, len(data)

    def _install(self, key: str, write: Callable[[BinaryIO], object]) -> None:
        """Write a blob to a temp file, fsync it and rename it to its address."""
        target = self.path(key)
        target.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, prefix="blob-")
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
                out.flush()
                os.fchmod(out.fileno(), 0o444)  # blobs are immutable
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._unsynced_dirs.add(target.parent)

    def sync(self) -> None:
        """Make the renames of every blob written so far durable."""
        for d in self._unsynced_dirs:
            fsync_dir(d)
        self._unsynced_dirs.clear()

    def read(self, key: str) -> bytes:
        """Read a small blob whole (headers, companion JSON), checking its hash."""
        data = self.path(key).read_bytes()
        if hash_bytes(data) != key:
            raise CorruptBlob(f"blob {key} is corrupt", "run `graft verify` for details")
        return data

    def copy_to(self, key: str, out: BinaryIO, on_bytes: OnBytes = _no_progress) -> None:
        """Stream a blob into `out`, failing if its bytes no longer hash to `key`."""
        h = xxhash.xxh3_128()
        with open(self.path(key), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            for chunk in _chunks(f, 0, size, self._buf):
                h.update(chunk)
                out.write(chunk)
                on_bytes(len(chunk))
        if h.hexdigest() != key:
            raise CorruptBlob(f"blob {key} is corrupt", "run `graft verify` for details")

    def actual_key(self, key: str) -> str | None:
        """Re-hash a stored blob; None when it is missing."""
        try:
            with open(self.path(key), "rb") as f:
                return self.hash_range(f, 0, os.fstat(f.fileno()).st_size)
        except FileNotFoundError:
            return None

    def keys(self) -> Iterator[str]:
        for prefix in sorted(self.root.iterdir()):
            if prefix.is_dir() and len(prefix.name) == 2:
                for rest in prefix.iterdir():
                    yield prefix.name + rest.name

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()
