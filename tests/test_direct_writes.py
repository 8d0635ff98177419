"""Big files are written with O_DIRECT where the filesystem allows, through the
page cache where it does not, and come back byte for byte either way."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path

import pytest

from graft.registry import blobs, direct
from graft.registry.buffers import aligned_buffer
from graft.registry.direct import BLOCK, BUFFER_BYTES, DirectWriter
from tests.conftest import graft_json, make_model, sha256_tree


def _supports_direct(folder: Path) -> bool:
    try:
        os.close(os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644))
    except OSError:
        return False
    return True


def _pattern(n: int, seed: int) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(n))


def _write(path: Path, pieces: list[bytes]) -> DirectWriter:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        out = DirectWriter(fd)
        for piece in pieces:
            assert out.write(piece) == len(piece)
        assert out.tell() == sum(map(len, pieces))
        out.flush()
        os.fsync(fd)
    finally:
        os.close(fd)
    return out


@pytest.mark.parametrize(
    "sizes",
    [
        [],
        [1],
        [BLOCK - 1],
        [BLOCK],
        [BLOCK + 1],
        [BUFFER_BYTES],
        [BUFFER_BYTES + 3],
        [3, BUFFER_BYTES, 5000, 1],
    ],
)
def test_written_bytes_come_back_exactly(tmp_path, sizes):
    pieces = [_pattern(n, seed) for seed, n in enumerate(sizes)]
    out = _write(tmp_path / "f", pieces)
    assert (tmp_path / "f").read_bytes() == b"".join(pieces)
    assert out.direct == _supports_direct(tmp_path)


def test_bytes_in_the_callers_aligned_memory_are_written_from_it(tmp_path):
    data = _pattern(2 * BUFFER_BYTES + 17, 1)
    buffer = memoryview(aligned_buffer(BUFFER_BYTES))
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        out = DirectWriter(fd)
        for start in range(0, len(data), BUFFER_BYTES):
            piece = data[start : start + BUFFER_BYTES]
            buffer[: len(piece)] = piece
            out.write_from(buffer, len(piece))
        out.flush()
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == data


def test_a_filesystem_that_refuses_direct_io_gets_the_same_bytes(tmp_path, monkeypatch):
    """Some filesystems accept O_DIRECT at open and refuse the writes: the writer
    goes on through the page cache."""
    real_write = os.write
    refused = []

    def write(fd, data):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(len(data))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(direct.os, "write", write)
    pieces = [_pattern(BUFFER_BYTES + 5, 2), _pattern(100, 3)]
    out = _write(tmp_path / "f", pieces)
    assert (tmp_path / "f").read_bytes() == b"".join(pieces)
    assert not out.direct
    assert refused == ([BUFFER_BYTES] if _supports_direct(tmp_path) else [])


def test_tensors_larger_than_the_read_buffer_round_trip(graft, tmp_path, monkeypatch):
    """Blobs over the add's buffer are written span by span, the last span short;
    one already stored is written and dropped, and the re-add writes nothing."""
    monkeypatch.setattr(blobs, "SMALL_BLOB", 16 * BLOCK)
    model = make_model(tmp_path / "m", dim=144)  # 81 KB projections: a span and a short one
    first = graft_json(graft, "add", model, "--name", "a")
    export = tmp_path / "out"
    graft("export", "a", export)
    assert sha256_tree(export) == sha256_tree(model)
    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    again = graft_json(graft, "add", copy, "--name", "b")
    assert again["id"] == first["id"] and again["bytes_new"] == 0
    assert not any((tmp_path / "store" / "tmp").rglob("blob-*"))
