"""`tokenizer_source: union`: one vocabulary holding every input's tokens, and the
embedding and LM-head rows of each input laid out in it.

The output tokenizer is the base's (the first input's without a base) with the
tokens it lacks appended: first the other inputs' ordinary tokens, then their
added tokens (special ones stay special), each input in config order. Every
vocabulary-sized tensor (2-D, in the embedding or the head, one row per token)
is then read through `PermutedRows`: input i's row for each output token is its
own row when it has the token, else a fill row shared by all inputs, chosen as
mergekit does — the one input that has the token gives its row; no input: zeros;
else the base's row when the base has it; else the mean of the rows that exist.
The merge formula then runs on these tensors as on any other, a span at a time.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graft.lineage.names import place_of
from graft.merge.chunks import TensorIn, part_of
from graft.merge.errors import MergeInputError
from graft.merge.inputs import ModelSource, TensorInfo

# A tokenizer's files (copied from the tokenizer source when there is no union).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
    "chat_template.json",
)


@dataclass(frozen=True)
class UnionVocab:
    """The union vocabulary and, for each input (by source index), the row of
    each output token in that input's vocabulary tensors (-1: it lacks it)."""

    size: int
    files: dict[str, bytes]  # the output tokenizer, as `save_pretrained` writes it
    rows: dict[int, np.ndarray]
    vocab_rows: dict[int, int]  # each input's vocabulary tensors' row count
    base: int | None  # the config's base_model: its rows fill first

    def covers(self, source: int, name: str, info: TensorInfo) -> bool:
        """Whether tensor `name` of input `source` has one row per token."""
        return (
            source in self.rows
            and len(info.shape) == 2
            and info.shape[0] == self.vocab_rows[source]
            and place_of(name).block in ("embedding", "head")
        )

    def permute(
        self, sources: list[int], tensors: list[TensorIn], device: torch.device
    ) -> list[TensorIn]:
        """`tensors` (of inputs `sources`) with their rows laid out in the union
        vocabulary."""
        base = self.base
        holders = list(dict.fromkeys(sources))  # an input listed twice counts once
        tensor_of = dict(zip(sources, tensors, strict=True))
        present = np.stack([self.rows[s] for s in holders]) >= 0
        missing = np.flatnonzero(~present.all(axis=0))
        donors = present[:, missing]
        counts = donors.sum(axis=0)
        base_has = donors[holders.index(base)] if base in holders else np.zeros_like(counts, bool)
        width = tensors[0].shape[1]
        fill = torch.zeros(len(missing), width, dtype=torch.float64)
        for i, source in enumerate(holders):
            # A token only one input has is its row; one the base has, the base's.
            use = donors[i] & ((counts == 1) | ~base_has | (source == base))
            if use.any():
                got = gather_rows(tensor_of[source], self.rows[source][missing[use]], width)
                fill[torch.from_numpy(use)] += got.to(torch.float64).cpu()
        fill /= torch.from_numpy(np.where(base_has, 1, np.maximum(counts, 1))).unsqueeze(1)
        fills = dict(zip(missing.tolist(), fill.to(torch.float32), strict=True))
        return [
            PermutedRows(tensor, self.rows[source], fills, self.size, device)
            for source, tensor in zip(sources, tensors, strict=True)
        ]


class PermutedRows:
    """A vocabulary tensor re-laid in the union vocabulary, read a span at a time
    (a SpanTensor): consecutive rows are read from the input in one piece."""

    def __init__(
        self,
        tensor: TensorIn,
        rows: np.ndarray,
        fills: dict[int, torch.Tensor],
        size: int,
        device: torch.device,
    ) -> None:
        self.tensor, self.rows, self.fills = tensor, rows, fills
        self.width = tensor.shape[1]
        self.shape = torch.Size((size, self.width))
        self.dtype = tensor.dtype
        self.device = device

    def numel(self) -> int:
        return self.shape.numel()

    def dim(self) -> int:
        return 2

    def span(self, span: slice) -> torch.Tensor:
        first, last = span.start // self.width, -(-span.stop // self.width)
        out = torch.empty(last - first, self.width, dtype=self.dtype, device=self.device)
        rows = self.rows[first:last]
        have = np.flatnonzero(rows >= 0)
        if len(have):
            out[torch.from_numpy(have)] = gather_rows(self.tensor, rows[have], self.width).to(
                self.device
            )
        for i in np.flatnonzero(rows < 0).tolist():
            out[i] = self.fills[first + i]
        offset = first * self.width
        return out.reshape(-1)[span.start - offset : span.stop - offset]


def gather_rows(tensor: TensorIn, rows: np.ndarray, width: int) -> torch.Tensor:
    """Rows `rows` of a 2-D tensor, each run of consecutive rows read at once."""
    if isinstance(tensor, torch.Tensor):
        return tensor[torch.from_numpy(rows)]
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    parts = [
        part_of(tensor, slice(int(run[0]) * width, (int(run[-1]) + 1) * width))
        for run in np.split(rows, breaks)
    ]
    return torch.cat(parts).reshape(len(rows), width)


def union_vocab(
    sources: list[ModelSource], order: list[int], vocab_rows: dict[int, int], base: int | None
) -> UnionVocab:
    """The union of the tokenizers of `sources[i]` for i in `order` (the first
    is the base or reference, whose tokenizer the output extends)."""
    tokenizers = {i: _load_tokenizer(sources[i]) for i in order}
    out = tokenizers[order[0]]
    known = set(out.get_vocab())
    plain: list[str] = []
    added: list[Any] = []  # AddedToken: keeps special tokens special
    for i in order[1:]:
        tokenizer, limit = tokenizers[i], vocab_rows[i]
        own_added = {t.content for t in tokenizer.added_tokens_decoder.values()}
        for token, index in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
            if index < limit and token not in known and token not in own_added:
                plain.append(token)
                known.add(token)
    for i in order[1:]:
        for index, token in sorted(tokenizers[i].added_tokens_decoder.items()):
            if index < vocab_rows[i] and token.content not in known:
                added.append(token)
                known.add(token.content)
    out.add_tokens(plain)
    out.add_tokens(added)
    vocab = out.get_vocab()
    size = len(vocab)
    rows_of: dict[int, np.ndarray] = {}
    for i in order:
        rows_of[i] = np.full(size, -1, dtype=np.int64)
        for token, index in tokenizers[i].get_vocab().items():
            if index < vocab_rows[i]:
                rows_of[i][vocab[token]] = index
    return UnionVocab(size, _saved(out), rows_of, vocab_rows, base)


def _load_tokenizer(source: ModelSource) -> Any:  # a transformers tokenizer
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="graft-tokenizer-") as folder:
        found = False
        for rel in ("config.json", *TOKENIZER_FILES):  # config: which tokenizer class
            data = source.companion(rel)
            if data is not None:
                Path(folder, rel).write_bytes(data)
                found = found or rel != "config.json"
        if not found:
            raise MergeInputError(
                f"{source.label!r} has no tokenizer files",
                "tokenizer_source: union needs each input's tokenizer; use base instead",
            )
        try:
            return AutoTokenizer.from_pretrained(folder, use_fast=True)
        except Exception as e:  # transformers raises many kinds for a bad tokenizer
            raise MergeInputError(
                f"cannot load the tokenizer of {source.label!r}: {str(e).splitlines()[0]}",
                "fix its tokenizer files, or use tokenizer_source: base",
            ) from e


def _saved(tokenizer: Any) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory(prefix="graft-tokenizer-") as folder:
        tokenizer.save_pretrained(folder)
        return {
            rel: Path(folder, rel).read_bytes()
            for rel in sorted(os.listdir(folder))
            if Path(folder, rel).is_file()
        }
