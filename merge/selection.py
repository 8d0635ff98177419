"""Exact selection of the k-th of many values (TIES and SCE thresholds, Arcee
Fusion's quantiles): two radix passes over the values' fp32 bit patterns when
they stream in spans (64 K counters of memory, whatever the tensor's size), and
a sample-bracketed partition when they fit in memory."""

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


def kth_largest(spans: Callable[[], Iterator[torch.Tensor]], k: int, n: int) -> Rank:
    """Exact selection by two radix histograms (high, then low 16 bits) over
    the spans' values: two streaming passes, 64 K counters of memory."""
    high = None
    for values in spans():
        counts = torch.bincount(bits_of(values) >> 16, minlength=1 << 16)
        high = counts if high is None else high + counts
    assert high is not None
    from_top = suffix_sums(high)  # values in bins ≥ b
    bin_ = int(torch.nonzero(from_top >= k).max())
    above_bin = int(from_top[bin_ + 1]) if bin_ + 1 < from_top.numel() else 0
    low = None
    for values in spans():
        bits = bits_of(values)
        counts = torch.bincount(bits[(bits >> 16) == bin_] & 0xFFFF, minlength=1 << 16)
        low = counts if low is None else low + counts
    assert low is not None
    from_top = suffix_sums(low)
    lo = int(torch.nonzero(from_top >= k - above_bin).max())
    above = above_bin + (int(from_top[lo + 1]) if lo + 1 < from_top.numel() else 0)
    return Rank((bin_ << 16) | lo, above, int(low[lo]))


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
