"""The stat cache: unchanged files are not re-read, changed ones always are."""

from __future__ import annotations

import os

import pytest

from graft.registry import statcache
from graft.registry.blobs import BlobStore
from tests.conftest import graft_json, make_model


@pytest.fixture
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(statcache, "RACY_SECONDS", 0)


def _forbid_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a cached file was read again")

    monkeypatch.setattr(BlobStore, "put_range", refuse)


def test_unchanged_readd_reads_no_tensor_bytes(graft, tmp_path, monkeypatch, no_racy_window):
    model = make_model(tmp_path / "m")
    first = graft_json(graft, "add", model)
    _forbid_reading(monkeypatch)
    again = graft_json(graft, "add", model)
    assert again["id"] == first["id"] and again["existed"] and again["bytes_new"] == 0


def test_rewritten_file_with_restored_mtime_is_read_again(graft, tmp_path, no_racy_window):
    model = make_model(tmp_path / "m", seed=1)
    first = graft_json(graft, "add", model)
    weights = model / "model.safetensors"
    st = os.stat(weights)
    make_model(tmp_path / "m", seed=2)  # same size, new bytes
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(weights).st_size == st.st_size
    second = graft_json(graft, "add", model)
    assert second["id"] != first["id"] and second["version"] == 2


def test_entry_naming_a_collected_blob_is_ignored(graft, store, tmp_path, no_racy_window):
    model = make_model(tmp_path / "m")
    graft("add", model)
    graft("rm", "m")
    graft("gc")
    assert not list(store.blobs.keys())
    again = graft_json(graft, "add", model)
    assert again["bytes_new"] > 0 and not again["existed"]
    graft("verify")


def test_fresh_files_are_not_cached(graft, store, tmp_path):
    graft("add", make_model(tmp_path / "m"))  # just written: inside the racy window
    assert not list(store.stat_cache.root.iterdir())
