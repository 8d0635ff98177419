"""Stored float tensors as float32 numpy arrays, a span at a time.

numpy has no bfloat16 or float8, so those are decoded from their bit patterns;
`round_to` gives the values a float32 array would have once saved in a
coarser dtype (round to nearest, ties to even), as torch's `.to()` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import numpy as np

from graft.registry.blobs import BlobReader
from graft.registry.safetensors_header import DTYPE_BITS

SPAN = 1 << 20  # elements per span: 4 MB of float32


def to_f32(data: bytes | bytearray | memoryview, dtype: str) -> np.ndarray:
    """Values of a float dtype's raw little-endian bytes, as float32."""
    if dtype == "F32":
        return np.frombuffer(data, np.float32)
    if dtype == "BF16":
        bits = np.frombuffer(data, np.uint16).astype(np.uint32)
        bits <<= np.uint32(16)
        return bits.view(np.float32)
    if dtype in ("F16", "F64"):
        return np.frombuffer(data, np.float16 if dtype == "F16" else np.float64).astype(np.float32)
    return _f8_table(dtype)[np.frombuffer(data, np.uint8)]


def float_spans(blob: BlobReader, dtype: str, count: int) -> Iterator[np.ndarray]:
    """The blob's values as float32, `count` at a time (the last span may be
    shorter); fails at the end, as `BlobReader.stream` does, if the bytes are wrong."""
    for piece in blob.stream(count * DTYPE_BITS[dtype] // 8):
        yield to_f32(piece, dtype)


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """`x` (float32) rounded to the nearest value of `dtype`, as float32."""
    if dtype == "F32" or dtype == "F64":
        return x
    if dtype == "F16":
        with np.errstate(over="ignore"):
            return x.astype(np.float16).astype(np.float32)
    if dtype == "BF16":
        bits = x.view(np.uint32)
        odd = (bits >> np.uint32(16)) & np.uint32(1)
        rounded = (bits + (np.uint32(0x7FFF) + odd)) & np.uint32(0xFFFF0000)
        return np.where(np.isnan(x), x, rounded.view(np.float32))
    return _round_to_table(x, _f8_table(dtype))


def _round_to_table(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Nearest value of a small float format given as its 256 decoded codes;
    ties go to the even code, values beyond its largest finite one saturate."""
    finite = np.isfinite(table) & (table >= 0) & ~np.signbit(table)
    codes = np.flatnonzero(finite)
    order = np.argsort(table[codes], kind="stable")
    codes, values = codes[order], table[codes[order]]
    mag = np.abs(x)
    hi = np.clip(np.searchsorted(values, mag), 1, len(values) - 1)
    lo = hi - 1
    below, above = mag - values[lo], values[hi] - mag
    pick = np.where((above < below) | ((above == below) & (codes[hi] % 2 == 0)), hi, lo)
    out = np.where(mag >= values[-1], values[-1], values[pick]).astype(np.float32)
    return np.where(np.isnan(x), x, np.copysign(out, x))


@cache
def _f8_table(dtype: str) -> np.ndarray:
    """The float32 value of each of the 256 codes of an 8-bit float format."""
    codes = np.arange(256, dtype=np.uint16)
    if dtype == "F8_E5M2":  # the top byte of a float16
        return (codes << np.uint16(8)).view(np.float16).astype(np.float32)
    if dtype != "F8_E4M3":
        raise ValueError(f"not a float dtype: {dtype}")
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exp, man = (codes >> 3) & 0xF, (codes & 0x7).astype(np.float64)
    value = np.where(exp == 0, man / 8 * 2.0**-6, (1 + man / 8) * 2.0 ** (exp.astype(int) - 7))
    value = np.where((exp == 0xF) & (man == 7), np.nan, value)  # e4m3fn: no infinities
    return (sign * value).astype(np.float32)
