"""Content-addressed blobs: each distinct byte string stored once under its xxh3-128.

Blobs live at ``blobs/<first 2 hex>/<remaining 30 hex>``. A new blob is written
to a temp file whose writeback starts at once; `sync()` later fsyncs the batch,
renames each into place and fsyncs the folders, so a blob that exists is
complete and durable. Batching lets the disk flush one blob while the next is
written, instead of stalling on an fsync per blob. Bytes are streamed through a
fixed buffer; nothing is ever read whole.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import xxhash

from graft.registry.errors import CorruptBlob, SourceChanged
from graft.registry.fsutil import fsync_dir

CHUNK = 8 * 1024 * 1024

OnBytes = Callable[[int], None]


def _writeback_starter() -> Callable[[int], None]:
    """Linux's sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE): start writing a
    file's dirty pages without waiting. Elsewhere a no-op (fsync does it all)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return lambda fd: None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return lambda fd: call(fd, 0, 0, 2)


_start_writeback = _writeback_starter()


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
        self._pending: dict[str, Path] = {}  # key → complete temp file, not yet renamed

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key[2:]

    def has(self, key: str) -> bool:
        return key in self._pending or self.path(key).is_file()

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

    def _install(self, key: str, write: Callable[[BinaryIO], object]) -> None:
        """Write a blob to a temp file and start its writeback; `sync()` publishes it."""
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, prefix="blob-")
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
                out.flush()
                os.fchmod(out.fileno(), 0o444)  # blobs are immutable
                _start_writeback(out.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._pending[key] = Path(tmp)

    def sync(self) -> None:
        """Publish pending blobs: fsync each, rename it to its address, fsync the folders."""
        folders = set()
        for key, tmp in self._pending.items():
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            target = self.path(key)
            target.parent.mkdir(exist_ok=True)
            os.replace(tmp, target)
            folders.add(target.parent)
        for folder in folders:
            fsync_dir(folder)
        self._pending.clear()

    def discard(self) -> None:
        """Drop pending blobs (an add that failed before `sync()`)."""
        for tmp in self._pending.values():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self._pending.clear()

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
