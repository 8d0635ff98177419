"""`graft verify` finds every missing or corrupt blob and names what it belonged to."""

from __future__ import annotations

import json

import pytest

from graft.registry import ExitCode, Store
from tests.conftest import SAMPLES


def _flip(path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_any_blob_is_reported_with_its_tensor(graft, store: Store):
    graft("add", SAMPLES / "lora-copy")
    manifest = store.resolve_ref("lora-copy")
    parts = [
        (f.path, tensor.name if tensor else None, key)
        for f in manifest.files
        for tensor, key in [(None, f.blob), *((t, t.blob) for t in f.tensors)]
    ]
    assert len(parts) == 3 + 16  # three files (one header) and sixteen tensors
    for i, (file, tensor, key) in enumerate(parts):
        blob = store.blobs.path(key)
        original = blob.read_bytes()
        blob.chmod(0o644)
        _flip(blob, at=i * 7919)
        result = graft("verify", code=ExitCode.INTEGRITY)
        lines = result.stdout.splitlines()
        assert lines == [
            f"lora-copy@1 file {file}"
            + (f" tensor {tensor!r}" if tensor else "")
            + f" blob {key}: corrupt"
        ]
        blob.write_bytes(original)
    graft("verify")


def test_missing_blob_and_json_report(graft, store: Store):
    graft("add", SAMPLES / "tiny-llama")
    manifest = store.resolve_ref("tiny-llama")
    _, tensor = manifest.tensors[5]
    store.blobs.path(tensor.blob).unlink()
    report = json.loads(graft("verify", "--json", code=ExitCode.INTEGRITY).stdout)
    assert report["ok"] is False
    assert report["problems"] == [
        {
            "artifact": "tiny-llama@1",
            "what": "missing",
            "file": "model.safetensors",
            "tensor": tensor.name,
            "blob": tensor.blob,
        }
    ]


def test_truncated_blob_is_wrong_size(graft, store: Store):
    graft("add", SAMPLES / "tiny-llama")
    _, tensor = store.resolve_ref("tiny-llama").tensors[0]
    with store.blobs.open(tensor.blob) as blob:
        encoded = blob.footer is not None  # on a compacted store (GRAFT_TEST_REPACK=inline)
    path = store.blobs.path(tensor.blob)
    path.write_bytes(path.read_bytes()[:-4])
    # An encoded blob cut short has lost its footer: it is corrupt, not merely short.
    expected = "corrupt" if encoded else "wrong size"
    assert expected in graft("verify", code=ExitCode.INTEGRITY).stdout


def test_damaged_manifest_is_reported(graft, store: Store):
    graft("add", SAMPLES / "lora-count")
    path = store.manifest_path(store.resolve_ref("lora-count").id)
    path.write_text(path.read_text().replace('"lora-count"', '"lora-evil"'))
    out = graft("verify", code=ExitCode.INTEGRITY).stdout
    assert f"manifests/{path.stem}.json: damaged manifest" in out


def test_verify_one_ref_checks_only_that_artifact(graft, store: Store):
    graft("add", SAMPLES / "lora-copy")
    graft("add", SAMPLES / "lora-count")
    _, tensor = store.resolve_ref("lora-count").tensors[0]
    store.blobs.path(tensor.blob).unlink()
    graft("verify", "lora-copy")
    graft("verify", "lora-count", code=ExitCode.INTEGRITY)


@pytest.mark.parametrize("flip_at", [0, 8, -1])
def test_export_refuses_a_corrupt_blob(graft, store: Store, tmp_path, flip_at):
    graft("add", SAMPLES / "lora-copy")
    f = next(f for f in store.resolve_ref("lora-copy").files if f.tensors)
    _flip(store.blobs.path(f.tensors[-1].blob), at=flip_at)
    result = graft("export", "lora-copy", tmp_path / "out", code=ExitCode.ERROR)
    assert "is corrupt" in result.stderr
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.graft-*"))
