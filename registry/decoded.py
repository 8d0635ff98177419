"""Decoded chunks shared by every reader of a store.

Reading fine-tunes of one base side by side (a merge, the deltas of a child
against its parent) decodes the same base chunks once per reader: each delta
chunk needs its reference's chunk, and the base is often read as an input too.
One small cache, shared, keyed by where the bytes come from (`BlobReader.identity`:
the blob files as opened, down its chain of references) and their raw range,
lets them decode each chunk once: a
chunk asked for while another thread decodes it (a read-ahead, say) waits for
that decode — unless that thread waits, in turn, for this one (only a damaged
blob that refers to itself leads there), which then decodes it on its own.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future

ChunkId = tuple[tuple[object, ...], int, int]  # (where from, raw start, raw length)
Raw = bytes | memoryview  # raw bytes read (decoded chunks are read-only views of arrays)


class DecodedChunks:
    """The chunks decoded last, up to `max_bytes` (least recently used leave first)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._done: OrderedDict[ChunkId, Raw] = OrderedDict()
        self._bytes = 0
        self._running: dict[ChunkId, tuple[Future[Raw], int]] = {}  # → (result, thread)
        self._waits_for: dict[int, int] = {}  # thread → the thread whose decode it awaits

    def get(self, chunk: ChunkId, decode: Callable[[], Raw]) -> Raw:
        """The chunk's bytes: kept, being decoded by another thread, or `decode()`d here."""
        me = threading.get_ident()
        mine: Future[Raw] | None = None
        theirs: Future[Raw] | None = None
        with self._lock:
            raw = self._done.get(chunk)
            if raw is not None:
                self._done.move_to_end(chunk)
                return raw
            if chunk not in self._running:
                mine = Future()
                self._running[chunk] = (mine, me)
            elif not self._would_wait_for_itself(me, self._running[chunk][1]):
                theirs, owner = self._running[chunk]
                self._waits_for[me] = owner
        if theirs is not None:
            try:
                return theirs.result()
            finally:
                with self._lock:
                    del self._waits_for[me]
        try:
            raw = decode()
        except BaseException as e:
            if mine is not None:
                with self._lock:
                    del self._running[chunk]
                mine.set_exception(e)
            raise
        with self._lock:
            if mine is not None:
                del self._running[chunk]
            if chunk not in self._done:  # (decoded twice when a wait would have looped)
                self._done[chunk] = raw
                self._bytes += len(raw)
            while self._bytes > self.max_bytes and len(self._done) > 1:
                _, old = self._done.popitem(last=False)
                self._bytes -= len(old)
        if mine is not None:
            mine.set_result(raw)
        return raw

    def _would_wait_for_itself(self, me: int, owner: int | None) -> bool:
        while owner is not None:
            if owner == me:
                return True
            owner = self._waits_for.get(owner)
        return False
