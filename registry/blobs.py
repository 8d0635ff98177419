"""Content-addressed blobs: each distinct byte string stored once under its xxh3-128.

Blobs live at ``blobs/<first 2 hex>/<remaining 30 hex>``, raw or encoded
(`registry.codecs`); `BlobReader` is the one way to read their bytes back.

A new blob is written to a temp file (in this process's folder under tmp/),
straight to disk where the filesystem allows (`registry.direct`); `sync()`
fsyncs the batch, renames each into place and fsyncs the folders, so a blob
that exists is complete and durable. Batching spares an fsync wait per blob; a
batch is published whenever it reaches `PUBLISH_BYTES`, so an add that is
killed keeps what it had finished and its re-run writes only the rest. Bytes
are streamed through a fixed buffer per thread; nothing is ever read whole."""

from __future__ import annotations

import bisect
import contextlib
import os
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import xxhash

from graft.registry.buffers import ThreadBuffer
from graft.registry.codecs import CHUNK_BYTES, ITEM_SIZES, BadEncoding, Footer, read_footer
from graft.registry.decoded import DecodedChunks, Raw
from graft.registry.direct import DirectWriter
from graft.registry.errors import CorruptBlob
from graft.registry.fsutil import fsync_dir
from graft.registry.keys import hash_bytes
from graft.registry.workdirs import WorkDirs

if TYPE_CHECKING:
    import numpy as np

CHUNK = 8 * 1024 * 1024
SMALL_BLOB = 32 * 1024 * 1024  # a range up to this size is read once into memory
PUBLISH_BYTES = 64 * 1024 * 1024  # pending blobs are published in batches of this size
MAX_READ_DEPTH = 16  # a longer reference chain is damage (repack builds at most MAX_CHAIN)
VERIFY_HINT = "run `graft verify` for details"
DECODED_BYTES = 48 * 1024 * 1024  # decoded chunks kept for other readers (12 of 4 MB)
AHEAD_BYTES = 32 * 1024 * 1024  # an export decodes up to this far ahead of its writes
AHEAD_PIECES = 64  # and this many pieces (each may hold a blob open)

OnBytes = Callable[[int], None]


DECODE_THREADS = os.cpu_count() or 1
DECODER_NAME = "graft-decode"


@cache
def _decoders() -> ThreadPoolExecutor:
    """Threads that decode the next chunks of a stream while its reader works
    (zstd and numpy release the GIL)."""
    return ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix=DECODER_NAME)


os.register_at_fork(after_in_child=_decoders.cache_clear)  # a fork has none of the threads
_STORED = ThreadBuffer(CHUNK_BYTES)  # see BlobReader._stored
_READ = ThreadBuffer(SMALL_BLOB)  # what `BlobStore.put_range` reads into


def _on_decoder_thread() -> bool:
    return threading.current_thread().name.startswith(DECODER_NAME)


def _no_progress(_: int) -> None:
    pass


def _fill(fd: int, offset: int, view: memoryview) -> None:
    """Read exactly len(view) bytes of `fd` from `offset` into `view` (without
    moving the file's position: threads share it)."""
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if not n:
            raise EOFError(f"{done} of {len(view)} bytes, then end of file")
        done += n


class BlobStore:
    """Writing is thread-safe: an add stores several tensors at once."""

    def __init__(self, root: Path, work: WorkDirs) -> None:
        self.root = root
        self.work = work
        self._lock = threading.Lock()  # guards what follows, and publishing
        self._pending: dict[str, Path] = {}  # key → complete temp file, not yet renamed
        self._pending_bytes = 0
        self.decoded = DecodedChunks(DECODED_BYTES)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key[2:]

    def has(self, key: str) -> bool:
        return key in self._pending or self.path(key).is_file()

    def put_range(
        self, f: BinaryIO, offset: int, length: int, on_bytes: OnBytes = _no_progress
    ) -> tuple[str, int]:
        """Store bytes [offset, offset+length) of `f`; return (key, bytes newly written).

        Each byte is read once: a range that fits the buffer is hashed in memory
        and written only when new; a larger one is written span by span while it
        is hashed, and dropped when the blob turns out to exist.
        """
        buf = _READ.get(SMALL_BLOB)
        if length <= len(buf):
            _fill(f.fileno(), offset, buf[:length])
            on_bytes(length)
            key = hash_bytes(buf[:length])
            if self.has(key):
                return key, 0

            def write_read(out: DirectWriter) -> str:
                out.write_from(buf, length)
                return key

            return self._install(write_read)

        def write(out: DirectWriter) -> str:
            h = xxhash.xxh3_128()
            for start in range(offset, offset + length, len(buf)):
                n = min(len(buf), offset + length - start)
                _fill(f.fileno(), start, buf[:n])
                h.update(buf[:n])
                out.write_from(buf, n)
                on_bytes(n)
            return h.hexdigest()

        return self._install(write)

    def _install(self, write: Callable[[DirectWriter], str]) -> tuple[str, int]:
        """Write a blob to a temp file (`write` returns its key), unless the key
        is stored already; `sync()` publishes it."""
        with self._lock:
            folder = self.work.mine()
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="blob-")
        try:
            try:
                key = write(out := DirectWriter(fd))
                out.flush()
                os.fchmod(fd, 0o444)  # blobs are immutable
            finally:
                os.close(fd)
            size = os.path.getsize(tmp)
            with self._lock:
                if self.has(key):
                    os.unlink(tmp)
                    return key, 0
                self._pending[key] = Path(tmp)
                self._pending_bytes += size
                if self._pending_bytes >= PUBLISH_BYTES:  # a killed writer keeps what it finished
                    self._publish()
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return key, size

    def sync(self) -> None:
        """Publish pending blobs: fsync each, rename it to its address, fsync the folders."""
        with self._lock:
            self._publish()

    def _publish(self) -> None:
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
        self._pending_bytes = 0

    def discard(self) -> None:
        """Drop pending blobs (an add that failed before `sync()`)."""
        for tmp in self._pending.values():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self._pending.clear()
        self._pending_bytes = 0

    def open(self, key: str, tensor: str | None = None, *, from_disk: bool = False) -> BlobReader:
        """Open a blob for reading; errors name `tensor` when given. `from_disk`:
        decode every chunk from the files, none from what other readers decoded."""
        what = f"blob {key} of tensor {tensor}" if tensor else f"blob {key}"
        return BlobReader(self, key, what, cache=DecodedChunks(2 * CHUNK) if from_disk else None)

    def read(self, key: str) -> bytes:
        """Read a small blob whole (headers, companion JSON), checking its hash."""
        with self.open(key) as blob:
            return b"".join(blob.stream())

    def copy_to(
        self, keys: Iterable[str], out: DirectWriter, on_bytes: OnBytes = _no_progress
    ) -> None:
        """Stream the blobs' raw bytes into `out`, one after another, failing at the
        end of any that does not hash to its key. Decoding runs ahead across blob
        boundaries (most tensors are one or two chunks, many far smaller), by
        bytes as well as by pieces, so that every core stays busy while `out`
        waits on the disk."""
        ahead: deque[tuple[BlobReader, int, Future[Raw] | None]] = deque()  # None: its end
        hashes: dict[BlobReader, xxhash.xxh3_128] = {}  # of the open readers
        ahead_bytes = 0

        def write_out(limit: int) -> None:
            """Write the oldest pieces until no more than `limit` bytes, and
            AHEAD_PIECES pieces, are decoding ahead."""
            nonlocal ahead_bytes
            while ahead and (
                ahead_bytes > limit or len(ahead) > AHEAD_PIECES or ahead[0][2] is None
            ):
                reader, n, future = ahead.popleft()
                if future is None:
                    reader.check(hashes[reader])
                    del hashes[reader]
                    reader.close()
                    continue
                piece = future.result()
                ahead_bytes -= n
                hashes[reader].update(piece)
                out.write(piece)
                on_bytes(len(piece))

        try:
            for key in keys:
                reader = self.open(key)
                hashes[reader] = xxhash.xxh3_128()
                for n, future in reader.piece_futures():
                    ahead.append((reader, n, future))
                    ahead_bytes += n
                    write_out(AHEAD_BYTES)
                ahead.append((reader, 0, None))
            write_out(-1)  # everything
        finally:
            for _, _, pending in ahead:
                if pending is not None:
                    pending.cancel()
            for reader in hashes:
                reader.close()

    def adopt(self, key: str, file: Path, size: int) -> Path:
        """Publish `file` (a downloaded blob, fsynced, raw or encoded against blobs
        stored here) as blob `key`, once its bytes, decoded, are `size` long and
        hash to `key`: CorruptBlob otherwise. Returns the folder to fsync (with
        `fsync_dir`) before a manifest refers to it; callers hold `Store.pin_blobs`."""
        with BlobReader(self, key, f"blob {key}", path=file) as blob:
            if blob.size != size:
                raise CorruptBlob(f"blob {key} holds {blob.size} bytes, not {size}")
            for _ in blob.stream():
                pass
        os.chmod(file, 0o444)
        target = self.path(key)
        target.parent.mkdir(exist_ok=True)
        os.replace(file, target)
        return target.parent

    def reference_of(self, key: str, file: Path) -> str | None:
        """The blob that `file`, holding blob `key`, is a delta against (None if raw)."""
        with BlobReader(self, key, f"blob {key}", path=file) as blob:
            return blob.footer.ref if blob.footer else None

    def reference(self, key: str) -> str | None:
        """The blob an encoded blob is a delta against (None for raw, solo or missing);
        CorruptBlob when its footer is damaged, so that nobody guesses."""
        if not self.path(key).is_file():
            return None
        with self.open(key) as blob:
            return blob.footer.ref if blob.footer else None

    def keys(self) -> Iterator[str]:
        for prefix in sorted(self.root.iterdir()):
            if prefix.is_dir() and len(prefix.name) == 2:
                for rest in prefix.iterdir():
                    yield prefix.name + rest.name

    def size(self, key: str) -> int:
        """Bytes the blob takes on disk (encoded, when it is)."""
        return self.path(key).stat().st_size

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()


class MissingReference(CorruptBlob):
    """An encoded blob whose reference is missing or unreadable."""


class BlobReader:
    """One blob opened for reading: any span of its raw bytes, decoded and checked.

    The file stays open, so a `repack` that replaces the blob meanwhile does
    not change what this reader sees. Raw spans are read as they are (a whole
    read checks the key); encoded chunks are checked on every decode.
    """

    def __init__(
        self,
        blobs: BlobStore,
        key: str,
        what: str,
        depth: int = 0,
        path: Path | None = None,
        cache: DecodedChunks | None = None,
    ) -> None:
        self.key = key
        self.what = what  # how errors name it
        self._blobs = blobs
        self._depth = depth
        self._ref: BlobReader | None = None
        self._fd = -1
        try:
            self._fd = os.open(path or blobs.path(key), os.O_RDONLY)
        except FileNotFoundError as e:
            raise CorruptBlob(f"{what} is missing", VERIFY_HINT) from e
        try:
            stat = os.fstat(self._fd)
            self.stored_size = stat.st_size
            self._file = (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)
            self._identity: tuple[object, ...] | None = None
            self.footer: Footer | None = self._footer()
        except BaseException:
            self.close()
            raise
        self.size = self.footer.raw_length if self.footer else self.stored_size
        if self.footer:
            self._chunks = list(self.footer.chunk_starts())
            self._raw_starts = [raw for _, raw, _ in self._chunks]
        # Span reads that do not line up with chunks, and references read by
        # several decoding threads, find their last chunks decoded: in the
        # store's shared cache, or in one of this reader's own (and its
        # references') for a blob not yet published (a download being
        # checked: nothing unchecked is shared) or a check that must read disk.
        self._lock = threading.Lock()
        if cache is None:
            cache = blobs.decoded if path is None else DecodedChunks(2 * CHUNK)
        self._decoded = cache
        self._in_flight: set[Future[Raw]] = set()

    def _footer(self) -> Footer | None:
        try:
            return read_footer(self.stored_size, self._pread, self.key)
        except BadEncoding as e:
            if self._stored_bytes_hash_to_key():  # raw bytes that only look encoded
                return None
            raise CorruptBlob(f"{self.what} is damaged: {e}", VERIFY_HINT) from e

    def _stored_bytes_hash_to_key(self) -> bool:
        h = xxhash.xxh3_128()
        for offset in range(0, self.stored_size, CHUNK):
            h.update(self._pread(offset, min(CHUNK, self.stored_size - offset)))
        return h.hexdigest() == self.key

    def __enter__(self) -> BlobReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        in_flight = list(getattr(self, "_in_flight", ()))
        for future in in_flight:  # nobody will read them: stop those not started,
            future.cancel()
        wait(in_flight)  # and let no running one read a closed (or reused) fd
        if self._ref:
            self._ref.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()

    def _pread(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        while len(data) < length:
            more = os.pread(self._fd, length - len(data), offset + len(data))
            if not more:
                raise CorruptBlob(f"{self.what} is truncated", VERIFY_HINT)
            data += more
        return data

    def _stored(self, offset: int, length: int) -> memoryview:
        """Stored bytes read into this thread's buffer, valid until its next call
        (a chunk's compressed planes: a fresh buffer per chunk costs page faults)."""
        view = _STORED.get(length)
        try:
            _fill(self._fd, offset, view)
        except EOFError:
            raise CorruptBlob(f"{self.what} is truncated", VERIFY_HINT) from None
        return view

    def read(self, offset: int, length: int) -> Raw:
        """Raw bytes [offset, offset + length) of the blob."""
        self._check_range(offset, length)
        if not self.footer or not length:
            return self._pread(offset, length)
        parts = list(self._decoded_parts(offset, length))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _decoded_parts(self, offset: int, length: int) -> Iterator[memoryview]:
        """The decoded bytes of [offset, offset + length), chunk by chunk, without
        copies; the chunks after the first decode on the pool's threads meanwhile."""
        indices = self._chunks_of(offset, length)
        ahead: deque[Future[Raw]] = deque()
        on_pool = _on_decoder_thread()  # (waiting for the pool from inside it could starve it)
        try:
            for n, index in enumerate(indices):
                if on_pool or n == 0:
                    raw = self._decode(index)
                else:
                    while len(ahead) < 2 * DECODE_THREADS and n + len(ahead) < len(indices):
                        ahead.append(self._submit(self._decode, indices[n + len(ahead)]))
                    raw = ahead.popleft().result()
                start = self._raw_starts[index]
                yield memoryview(raw)[max(0, offset - start) : offset + length - start]
        finally:
            for future in ahead:
                future.cancel()

    def prefetch(self, offset: int, length: int) -> None:
        """Start decoding the chunks of that range on the pool's threads, for a read
        to come (a span reader asks for the next span while it works on this one);
        what fails here is left for that read to report."""
        if self.footer and 0 <= offset < self.size:
            for index in self._chunks_of(offset, min(length, self.size - offset)):
                self._submit(self._decode, index)

    def _chunks_of(self, offset: int, length: int) -> list[int]:
        first = bisect.bisect_right(self._raw_starts, offset) - 1
        last = bisect.bisect_left(self._raw_starts, offset + length) - 1
        return list(range(first, max(first, last) + 1))

    def _submit(self, task: Callable[..., Raw], *args: int) -> Future[Raw]:
        future = _decoders().submit(task, *args)
        self._in_flight.add(future)  # so that `close` waits for it
        future.add_done_callback(self._in_flight.discard)
        return future

    def readinto(self, offset: int, buf: bytearray | memoryview) -> None:
        """Fill `buf` with the raw bytes from `offset`, with no copy in between."""
        self._check_range(offset, len(buf))
        if not buf:
            return
        if not self.footer:
            if os.preadv(self._fd, [buf], offset) != len(buf):
                raise CorruptBlob(f"{self.what} is truncated", VERIFY_HINT)
            return
        pos = 0
        for part in self._decoded_parts(offset, len(buf)):
            buf[pos : pos + len(part)] = part
            pos += len(part)

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise CorruptBlob(
                f"{self.what} holds {self.size} bytes, not the {offset + length} asked for",
                VERIFY_HINT,
            )

    def stream(self, span: int | None = None) -> Iterator[Raw]:
        """The whole blob in order, failing at the end if it does not hash to its key:
        pieces of `span` bytes (the last may be shorter), or of whatever size
        comes cheapest (decoded chunks; 8 MB reads of a raw blob)."""
        h = xxhash.xxh3_128()
        pieces = self._pieces() if span is None else self._spans(span)
        for piece in pieces:
            h.update(piece)
            yield piece
        self.check(h)

    def check(self, h: xxhash.xxh3_128) -> None:
        """CorruptBlob unless `h`, fed the whole blob, gives its key."""
        if h.hexdigest() != self.key:
            raise CorruptBlob(f"{self.what} is corrupt", VERIFY_HINT)

    def _spans(self, span: int) -> Iterator[Raw]:
        if not self.footer:
            yield from (self._pread(o, min(span, self.size - o)) for o in range(0, self.size, span))
            return
        pending = b""
        for decoded in self._pieces():
            pending += decoded
            cut = len(pending) - len(pending) % span
            yield from (pending[o : o + span] for o in range(0, cut, span))
            pending = pending[cut:]
        if pending:
            yield pending

    def _pieces(self) -> Iterator[Raw]:
        if not self.footer:
            yield from self._spans(CHUNK)
            return
        ahead: deque[Future[Raw]] = deque()
        try:
            for _, future in self.piece_futures():
                ahead.append(future)
                if len(ahead) > DECODE_THREADS:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()
        finally:
            for future in ahead:
                future.cancel()

    def piece_futures(self) -> Iterator[tuple[int, Future[Raw]]]:
        """The blob's pieces in order (decoded chunks, or 8 MB reads of a raw blob),
        each (its length, its bytes) handed to the decoding threads when the
        iterator reaches it."""
        if self.footer:
            for index, (chunk, _, _) in enumerate(self._chunks):
                yield chunk.raw_length, self._submit(self._decode, index)
        else:
            for offset in range(0, self.size, CHUNK):
                n = min(CHUNK, self.size - offset)
                yield n, self._submit(self._pread, offset, n)

    def _decode(self, index: int) -> Raw:
        chunk, raw_start, _ = self._chunks[index]
        return self._decoded.get(
            (self.identity(), raw_start, chunk.raw_length), lambda: self._decode_chunk(index)
        )

    def _decode_chunk(self, index: int) -> Raw:
        from graft.registry.transforms import decode_chunk  # numpy: only for encoded blobs

        footer = self.footer
        assert footer is not None
        chunk, raw_start, stored_start = self._chunks[index]
        ref = self._reference(raw_start, chunk.raw_length) if footer.ref else None
        try:  # (the reference first: decoding it may use this thread's buffer too)
            return decode_chunk(footer, chunk, self._stored(stored_start, sum(chunk.planes)), ref)
        except BadEncoding as e:
            raise CorruptBlob(f"{self.what} is damaged: {e}", VERIFY_HINT) from e

    def _reference(self, raw_start: int, raw_length: int) -> np.ndarray:
        from graft.registry.transforms import convert_reference

        footer = self.footer
        assert footer is not None and footer.ref_dtype
        mine = footer.item_size
        theirs = ITEM_SIZES[footer.ref_dtype]
        try:
            data = self._ref_reader().read(raw_start // mine * theirs, raw_length // mine * theirs)
        except MissingReference:
            raise
        except CorruptBlob as e:
            raise CorruptBlob(f"{self.what}: its reference {e.message}", e.hint) from e
        return convert_reference(data, footer.ref_dtype, footer.dtype)

    def _ref_reader(self) -> BlobReader:
        """The reader of the blob this one is a delta against, opened once."""
        footer = self.footer
        assert footer is not None and footer.ref
        with self._lock:
            if self._ref is None:
                if self._depth >= MAX_READ_DEPTH:
                    raise CorruptBlob(
                        f"{self.what}: its chain of references is over {MAX_READ_DEPTH} deep",
                        VERIFY_HINT,
                    )
                try:
                    self._ref = BlobReader(
                        self._blobs,
                        footer.ref,
                        f"blob {footer.ref}",
                        self._depth + 1,
                        cache=self._decoded,
                    )
                except CorruptBlob as e:
                    raise MissingReference(f"{self.what}: its reference {e.message}", e.hint) from e
            return self._ref

    def identity(self) -> tuple[object, ...]:
        """What the decoded bytes come from: this blob's file as opened (a blob
        rewritten or damaged since is another file) and its reference's, so that
        decoded chunks are shared only while nothing under them changed."""
        if self._identity is None:
            ref = self._ref_reader().identity() if self.footer and self.footer.ref else ()
            self._identity = (self.key, *self._file, *ref)
        return self._identity
