"""Exact selection of the k-th of many values (TIES and SCE thresholds, Arcee
Fusion's quantiles): radix passes over the values' fp32 bit patterns when they
stream in spans (one pass, or two when the first guessed wrong; a few hundred K
counters of memory, whatever the tensor's size), and a sample-bracketed
partition when they fit in memory."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch


def bits_of(magnitudes: torch.Tensor) -> torch.Tensor:
    """Non-negative fp32 values as int32 bit patterns, which sort the same way."""
    return magnitudes.contiguous().view(torch.int32)


@dataclass(frozen=True)
class Rank:
    """The k-th largest of n non-negative values: its bit pattern, how many
    values are above it and how many equal it."""

    bits: int
    above: int
    equal: int


# High-16-bit bins, around where the first span puts the k-th, whose low 16 bits
# the first radix pass counts too (64 K counters each).
WINDOW = 4


def kth_largest(spans: Callable[[], Iterator[torch.Tensor]], k: int, n: int) -> Rank:
    """Exact selection by radix histograms over the spans' values: the high 16
    bits of every value, then the low 16 bits of those in the k-th's high bin.
    The first pass also counts the low bits of bin 0 (values of 0: most of a
    tensor a fine-tune left alone, an embedding's unseen tokens) and of WINDOW
    bins around where the first span puts the k-th; only when the k-th's bin is
    none of them does a second pass count its low bits. A pass of a streamed
    tensor costs reading (and, from the store, decoding) every input again."""
    high = zero_low = window_low = None
    first = 0  # the window's first bin
    for values in spans():
        bits = bits_of(values).reshape(-1)
        if high is None:
            first = _guess_bin(bits, k, n) - WINDOW // 2
        high = _plus(high, torch.bincount(bits >> 16, minlength=1 << 16))
        # every value of bin 0 is its own low bits; the others count at 1 << 16
        zeros = torch.bincount(bits.clamp(max=1 << 16), minlength=(1 << 16) + 1)
        zero_low = _plus(zero_low, zeros)
        # the window's low bits at 1.., those below it at 0, above it at the end
        inside = (bits - (first << 16)).clamp_(-1, WINDOW << 16).add_(1)
        window_low = _plus(window_low, torch.bincount(inside, minlength=(WINDOW << 16) + 2))
    assert high is not None and zero_low is not None and window_low is not None
    from_top = suffix_sums(high)  # values in bins ≥ b
    bin_ = int(torch.nonzero(from_top >= k).max())
    above_bin = int(from_top[bin_ + 1]) if bin_ + 1 < from_top.numel() else 0
    if bin_ == 0:
        low = zero_low[: 1 << 16]
    elif 0 <= bin_ - first < WINDOW:
        start = 1 + ((bin_ - first) << 16)
        low = window_low[start : start + (1 << 16)]
    else:
        low = _low_counts(spans, bin_)
    from_top = suffix_sums(low)
    lo = int(torch.nonzero(from_top >= k - above_bin).max())
    above = above_bin + (int(from_top[lo + 1]) if lo + 1 < from_top.numel() else 0)
    return Rank((bin_ << 16) | lo, above, int(low[lo]))


def _guess_bin(bits: torch.Tensor, k: int, n: int) -> int:
    """The high bin of the first span's value ranked as the k-th of n would be."""
    m = bits.numel()
    if m == 0:
        return 0
    j = min(m, max(1, round(k * m / n)))  # j-th largest of m
    return int(torch.kthvalue(bits, m - j + 1).values) >> 16


def _low_counts(spans: Callable[[], Iterator[torch.Tensor]], bin_: int) -> torch.Tensor:
    """The low 16 bits of the spans' values in high bin `bin_`, counted."""
    low = None
    for values in spans():
        bits = bits_of(values)
        low = _plus(low, torch.bincount(bits[(bits >> 16) == bin_] & 0xFFFF, minlength=1 << 16))
    assert low is not None
    return low


def _plus(total: torch.Tensor | None, counts: torch.Tensor) -> torch.Tensor:
    return counts if total is None else total.add_(counts)


SAMPLE = 1 << 16  # values sampled to bracket the k-th


def kth_smallest(values: np.ndarray, at: int) -> int:
    """The value at index `at` of `values` sorted ascending, exactly, in a few
    counting passes instead of a partition of everything (6-7x faster on a
    fine-tune's |δ|): a strided sample brackets it, counts place it at either end
    of the bracket (a fine-tune's |δ| has few distinct values, so often there),
    else it is selected among the values strictly inside. A bracket that misses
    (a sample unlike the whole) falls back to the full partition."""
    n = len(values)
    sample = values[:: max(1, n // SAMPLE)]
    place = at * len(sample) // n
    slack = 4 * math.isqrt(len(sample)) + 8  # ~8 standard deviations of the sample's rank
    ends = [max(0, place - slack), min(len(sample) - 1, place + slack)]
    lo, hi = np.partition(sample, ends)[ends]
    below_lo = np.count_nonzero(values < lo)
    through_lo = np.count_nonzero(values <= lo)
    if below_lo <= at < through_lo:
        return int(lo)
    if lo != hi:  # else the bracket is that one value, and missed
        below_hi = np.count_nonzero(values < hi)
        through_hi = np.count_nonzero(values <= hi)
        if below_hi <= at < through_hi:
            return int(hi)
        if through_lo <= at < below_hi:
            # sorted, not partitioned: the few distinct values of a bf16
            # fine-tune's |δ| make numpy's introselect 10x slower than its sort
            inside = np.sort(values[(values > lo) & (values < hi)])
            return int(inside[at - through_lo])
    return int(np.partition(values, at)[at])


def suffix_sums(counts: torch.Tensor) -> torch.Tensor:
    return counts.sum() - torch.cumsum(counts, 0) + counts


class RankMask:
    """Keeps exactly the k largest (or smallest) of n values shown span by span in
    order, given the k-th's `Rank`; values equal to it go lowest index first."""

    def __init__(self, rank: Rank, k: int, n: int, *, largest: bool) -> None:
        self.bits, self.largest = rank.bits, largest
        better = rank.above if largest else n - rank.above - rank.equal
        self.ties = k - better
        self.reset()

    def reset(self) -> None:
        self.quota = self.ties

    def __call__(self, magnitudes: torch.Tensor) -> torch.Tensor:
        bits = bits_of(magnitudes)
        mask = bits > self.bits if self.largest else bits < self.bits
        if self.quota > 0:
            tied = bits == self.bits
            count = int(torch.count_nonzero(tied))  # bool .sum() is 5× slower
            if count <= self.quota:  # all of them: no need to find where they are
                mask |= tied
            else:
                mask[torch.nonzero(tied).squeeze(1)[: self.quota]] = True
            self.quota -= min(count, self.quota)
        return mask
