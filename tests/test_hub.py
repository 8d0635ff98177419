"""`graft add hf:ORG/NAME[@REVISION]` from the local Hugging Face cache, offline."""

from __future__ import annotations

import pytest

from tests.conftest import SAMPLES, graft_json, sha256_tree
from tests.test_roundtrip import _hf_cache


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    repo = _hf_cache(tmp_path)  # hub/models--acme--tiny-llama, refs/main → snapshot 0123abcd
    (repo / "refs" / "v1").write_text("0123abcd")  # a tag, as a revision
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hub"


@pytest.mark.parametrize("spec", ["hf:acme/tiny-llama", "hf:acme/tiny-llama@v1"])
def test_add_from_the_cache_offline(graft, hub_cache, tmp_path, spec):
    doc = graft_json(graft, "add", spec)
    assert (doc["name"], doc["kind"], doc["tensors"]) == ("acme/tiny-llama", "model", 39)
    graft("export", "acme/tiny-llama", tmp_path / "out")
    assert sha256_tree(tmp_path / "out") == sha256_tree(SAMPLES / "tiny-llama")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("hf:acme/not-cached", "hf:acme/not-cached: not in the local Hugging Face cache"),
        ("hf:acme/tiny-llama@v9", "not in the local Hugging Face cache"),
        ("hf:just-a-name", "hf:just-a-name: not a Hub reference"),
    ],
)
def test_missing_or_malformed_hub_refs(graft, hub_cache, spec, message):
    result = graft("add", spec, code=1)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert graft_json(graft, "ls") == []
