"""Content keys: the xxh3-128 of bytes in hex, which names each blob and checks
each manifest."""

from __future__ import annotations

import xxhash


def hash_bytes(data: bytes | memoryview) -> str:
    return xxhash.xxh3_128_hexdigest(data)
