"""What a merge reports: progress as it runs, the result when it is done."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MergeProgress:
    tensors_done: int
    tensors_total: int
    bytes_done: int  # output bytes written
    bytes_total: int
    tensor: str  # the one just written


@dataclass(frozen=True)
class MergeResult:
    out_dir: Path
    files: tuple[str, ...]
    tensors: int
    bytes_written: int
    touched: tuple[str, ...]  # output tensors that differ from the base (or first input)
    seconds: float
    rank: int | None = None  # of a merged adapter
    truncation_error: float | None = None  # largest relative error of its SVD rank cut


@dataclass(frozen=True)
class Written:
    """What an executor put in the work folder."""

    files: list[str]
    tensors: int
    nbytes: int
    touched: list[str]
    companions: dict[str, bytes]  # files to write besides the README
    note: str = ""  # a line for the model card
    rank: int | None = None
    truncation_error: float | None = None
