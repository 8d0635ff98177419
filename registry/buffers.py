"""Page-aligned memory, and buffers each thread reuses call after call.

A fresh buffer per chunk decoded or per span written costs more in page faults
than the work done in it. Aligned, because direct I/O (`registry.direct`) wants
memory aligned to the disk's blocks; an anonymous mmap is aligned to a page.
"""

from __future__ import annotations

import mmap
import threading

PAGE = mmap.PAGESIZE


def aligned_buffer(size: int) -> mmap.mmap:
    """At least `size` bytes (a whole number of pages) of page-aligned memory."""
    return mmap.mmap(-1, max(PAGE, -(-size // PAGE) * PAGE))


class ThreadBuffer:
    """A buffer per thread, grown as needed and reused call after call."""

    def __init__(self, min_bytes: int) -> None:
        self.min_bytes = min_bytes
        self._local = threading.local()

    def get(self, nbytes: int) -> memoryview:
        """`nbytes` of this thread's buffer (old contents), valid until its next
        `get`; the memory beyond them, up to a whole page, is the buffer's too."""
        buf = getattr(self._local, "buf", None)
        if buf is None or len(buf) < nbytes:
            buf = self._local.buf = aligned_buffer(max(nbytes, self.min_bytes))
        return memoryview(buf)[:nbytes]
