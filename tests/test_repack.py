"""Encoded blobs: codecs, `graft repack`, `graft du`, and the one read path through them.

The data is a real training run (tests/training.py): compression is only
meaningful on optimizer output.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xxhash

from graft import registry
from graft.lineage.tensors import load_tensor
from graft.merge import merge_models, parse_config
from graft.registry import Store, codecs, transforms
from graft.registry.repack import repack
from graft.registry.usage import usage
from tests.conftest import graft_json
from tests.procs import sha256_files
from tests.training import make_run

GRAFT = Path(sys.executable).parent / "graft"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    make_run(out)
    return out


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 4 KB, so every tensor spans many and span reads cross them."""
    monkeypatch.setattr(codecs, "CHUNK_BYTES", 4096)


def _register_run(store: Store, run: Path) -> list[str]:
    refs = ["base"]
    registry.add(store, run / "base", name="base")
    parent = "base"
    for folder in sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        registry.add(store, folder, name=folder.name, parent=parent)
        refs.append(folder.name)
        parent = folder.name
    registry.add(store, run / "other", name="other", parent="base")
    return [*refs, "other"]


def _footer(store: Store, key: str) -> codecs.Footer | None:
    with store.blobs.open(key) as blob:
        return blob.footer


def _tensor(store: Store, ref: str, name: str) -> registry.TensorRecord:
    return next(t for _, t in store.resolve_ref(ref).tensors if t.name == name)


MLP = "model.layers.1.mlp.down_proj.weight"


# -- codecs ----------------------------------------------------------------------


SPECIAL_F32 = np.array(
    [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3.4e38, -3.4e38, 1.0, -1.0], np.float32
)


@pytest.mark.parametrize("dtype", codecs.DELTA_DTYPES)
@pytest.mark.parametrize("ref_dtype", codecs.DELTA_DTYPES)
def test_delta_chunks_decode_to_the_exact_bits(dtype, ref_dtype):
    rng = np.random.default_rng(0)
    values = np.concatenate([SPECIAL_F32, rng.standard_normal(5000).astype(np.float32) * 0.02])
    child = torch.from_numpy(values).to(getattr(torch, _TORCH[dtype]))
    parent = (torch.from_numpy(values) * 0.97).to(getattr(torch, _TORCH[ref_dtype]))
    raw = child.view(_UINT_TORCH[dtype]).numpy().tobytes()
    ref = transforms.convert_reference(
        parent.view(_UINT_TORCH[ref_dtype]).numpy().tobytes(), ref_dtype, dtype
    )
    chunk, frames = transforms.encode_chunk("delta", dtype, raw, ref)
    footer = codecs.Footer("1" * 32, "delta", dtype, len(raw), "0" * 32, ref_dtype, (chunk,))
    assert transforms.decode_chunk(footer, chunk, b"".join(frames), ref) == raw


_TORCH = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
_UINT_TORCH = {"F32": torch.int32, "BF16": torch.int16, "F16": torch.int16}


def test_references_convert_exactly_when_they_widen():
    x = torch.tensor([1.5, -2.25, 3e-3, 0.0], dtype=torch.bfloat16)
    widened = transforms.convert_reference(x.view(torch.int16).numpy().tobytes(), "BF16", "F32")
    assert torch.equal(torch.from_numpy(widened.view(np.float32)), x.float())
    h = torch.tensor([1.5, -2.25, 3e-3, 65504.0], dtype=torch.float16)
    widened = transforms.convert_reference(h.view(torch.int16).numpy().tobytes(), "F16", "F32")
    assert torch.equal(torch.from_numpy(widened.view(np.float32)), h.float())


def test_solo_chunks_of_every_width_decode_exactly():
    rng = np.random.default_rng(1)
    for dtype, width in codecs.ITEM_SIZES.items():
        raw = rng.integers(0, 256, 4000 * width, dtype=np.uint8).tobytes()
        chunk, frames = transforms.encode_chunk("solo", dtype, raw, None)
        footer = codecs.Footer("1" * 32, "solo", dtype, len(raw), None, None, (chunk,))
        assert transforms.decode_chunk(footer, chunk, b"".join(frames), None) == raw, dtype


def test_hostile_footers_and_frames_are_refused():
    with pytest.raises(codecs.BadEncoding):
        codecs.parse_footer(b'{"format": 1, "codec": "solo"}')
    one_chunk = (codecs.Chunk(4, "0" * 16, (1, 1)),)
    good = codecs.Footer("1" * 32, "solo", "BF16", 4, None, None, one_chunk)
    doc = json.loads(good.to_json())
    for bad in ({"raw_length": 8}, {"ref": "../../etc/passwd"}, {"codec": "xor"}):
        with pytest.raises(codecs.BadEncoding):
            codecs.parse_footer(json.dumps({**doc, **bad}).encode())
    # A frame that claims far more than its chunk holds is refused before decompressing.
    bomb = __import__("zstandard").ZstdCompressor().compress(b"\0" * 1_000_000)
    chunk = codecs.Chunk(4, "0" * 16, (len(bomb), len(bomb)))
    with pytest.raises(codecs.BadEncoding, match="wrong size"):
        transforms.decode_chunk(good, chunk, bomb + bomb, None)


# -- repack ------------------------------------------------------------------------


def test_repack_stores_deltas_against_the_parent_and_exports_identical_files(
    run, store_dir, small_chunks
):
    store = Store.open(store_dir)
    refs = _register_run(store, run)
    before, _ = usage(store)
    result = repack(store)
    assert result.encoded > 0 and result.bytes_after < result.bytes_before
    # checkpoint-20's MLP is a delta against checkpoint-10's, in its own footer.
    mine, theirs = _tensor(store, "checkpoint-20", MLP), _tensor(store, "checkpoint-10", MLP)
    footer = _footer(store, mine.blob)
    assert footer and (footer.codec, footer.ref) == ("delta", theirs.blob)
    assert len(footer.chunks) > 1  # small_chunks: the span path is exercised
    base_footer = _footer(store, _tensor(store, "base", MLP).blob)
    assert base_footer and base_footer.codec == "solo"
    total, rows = usage(store)
    assert total.raw_bytes == before.raw_bytes and total.stored_bytes < 0.75 * before.stored_bytes
    ratios = {u.name: u.ratio for u in rows}
    assert all(ratios[f"{r}@1"] < 0.8 for r in refs if r.startswith("checkpoint")), ratios
    for ref, folder in zip(refs, ["base", *[r for r in refs[1:-1]], "other"], strict=True):
        out = store_dir.parent / f"export-{ref}"
        registry.export(store, ref, out)
        assert sha256_files(out) == sha256_files(run / folder), ref
    assert registry.verify(store).ok
    again = repack(store)  # nothing left to do
    assert again.encoded == 0 and again.bytes_before == 0


def test_a_tensor_unrelated_to_its_parents_is_stored_alone(run, store_dir, tmp_path):
    """The codec is chosen on the start of each blob: a child's tensor that has
    nothing to do with its parent's (re-initialized, or only sharing a name) is
    smaller alone, a fine-tuned one is smaller as a delta."""
    from safetensors.torch import load_file, save_file

    store = Store.open(store_dir)
    registry.add(store, run / "base", name="base")
    tensors = load_file(run / "checkpoint-10" / "model.safetensors")
    tensors[MLP] = tensors[MLP].flip(0).contiguous()  # its rows in reverse: no longer aligned
    child = tmp_path / "child"
    child.mkdir()
    save_file(tensors, child / "model.safetensors")
    registry.add(store, child, name="child", parent="base")
    repack(store)
    replaced = _footer(store, _tensor(store, "child", MLP).blob)
    assert replaced and replaced.codec == "solo"
    tuned = _footer(store, _tensor(store, "child", MLP.replace("down", "up")).blob)
    assert tuned and (tuned.codec, tuned.ref) == (
        "delta",
        _tensor(store, "base", MLP.replace("down", "up")).blob,
    )
    registry.export(store, "child", tmp_path / "out")
    assert sha256_files(tmp_path / "out") == sha256_files(child)


def test_span_reads_of_encoded_blobs_match_the_raw_bytes(run, store_dir, small_chunks):
    store = Store.open(store_dir)
    _register_run(store, run)
    t = _tensor(store, "checkpoint-30", MLP)
    raw = (run / "checkpoint-30" / "model.safetensors").read_bytes()
    repack(store)
    rng = random.Random(0)
    with store.blobs.open(t.blob) as blob:
        assert blob.footer is not None and blob.size == t.nbytes
        whole = b"".join(blob.stream())
        assert whole in raw
        for _ in range(50):
            start = rng.randrange(t.nbytes)
            length = rng.randrange(t.nbytes - start + 1)
            assert blob.read(start, length) == whole[start : start + length]
    tensor = load_tensor(store, t)  # the lineage/merge path: the same bytes
    assert tensor.view(torch.int16).numpy().tobytes() == whole


def test_streams_decode_ahead_and_survive_a_fork(run, store_dir, small_chunks):
    """Chunks decode on a thread pool, in order whatever finishes first; a forked
    child (whose copy of the pool has no threads) still streams."""
    store = Store.open(store_dir)
    _register_run(store, run)
    t = _tensor(store, "checkpoint-30", MLP)
    raw = (run / "checkpoint-30" / "model.safetensors").read_bytes()
    repack(store)
    with store.blobs.open(t.blob) as blob:
        pieces = list(blob.stream())
        assert len(pieces) > 8 and b"".join(pieces) in raw
        spans = list(blob.stream(1000))
        assert {len(x) for x in spans[:-1]} == {1000} and b"".join(spans) == b"".join(pieces)
        assert next(iter(blob.stream())) == pieces[0]  # abandoned: close() stops the rest
        pid = os.fork()
        if pid == 0:  # the child: exit 0 only if it reads the same bytes
            os._exit(0 if b"".join(blob.stream()) == b"".join(pieces) else 1)
        deadline = time.monotonic() + 60
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if done[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child hung reading the blob")
        assert os.waitstatus_to_exitcode(done[1]) == 0


def test_a_merge_over_a_compacted_store_is_identical(run, store_dir, tmp_path):
    store = Store.open(store_dir)
    _register_run(store, run)
    config = {
        "merge_method": "ties",
        "base_model": "base",
        "models": [
            {"model": "checkpoint-30", "parameters": {"weight": 0.6, "density": 0.5}},
            {"model": "other", "parameters": {"weight": 0.4, "density": 0.5}},
        ],
        "dtype": "bfloat16",
    }
    merge_models(parse_config(config), tmp_path / "raw", store=store, register=False)
    repack(store)
    merge_models(parse_config(config), tmp_path / "packed", store=store, register=False)
    assert sha256_files(tmp_path / "raw") == sha256_files(tmp_path / "packed")


def _flip(path: Path, offset: int) -> None:
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def _problems(store: Store) -> set[tuple[str, str | None, str]]:
    return {(p.artifact, p.tensor, p.what) for p in registry.verify(store).problems}


@pytest.mark.parametrize("damage", ["chunk", "reference", "truncate"])
def test_damaged_encoded_blobs_are_named_and_never_read(run, store_dir, tmp_path, damage):
    store = Store.open(store_dir)
    _register_run(store, run)
    repack(store)
    mine, theirs = _tensor(store, "checkpoint-20", MLP), _tensor(store, "checkpoint-10", MLP)
    path = store.blobs.path(theirs.blob if damage == "reference" else mine.blob)
    if damage == "truncate":
        os.chmod(path, 0o644)
        os.truncate(path, path.stat().st_size // 2)
    else:
        _flip(path, len(codecs.MAGIC) + 10)
    problems = _problems(store)
    assert ("checkpoint-20@1", MLP, "corrupt") in problems
    if damage == "reference":
        assert ("checkpoint-10@1", MLP, "corrupt") in problems
    done = subprocess.run(
        [GRAFT, "export", "checkpoint-20", tmp_path / "out"],
        capture_output=True,
        text=True,
        env={**os.environ, "GRAFT_STORE": str(store_dir)},
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "run `graft verify`" in done.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(registry.CorruptBlob, match=f"of tensor {MLP}"):
        load_tensor(store, mine)


def test_a_blob_that_refers_to_itself_is_refused_not_a_hang(run, store_dir, tmp_path):
    """Its chunks would wait for themselves: each reader decodes on its own then,
    until the chain is too deep, and says so."""
    import dataclasses

    store = Store.open(store_dir)
    _register_run(store, run)
    repack(store)
    mine = _tensor(store, "checkpoint-20", MLP)
    path = store.blobs.path(mine.blob)
    footer = _footer(store, mine.blob)
    assert footer is not None and footer.ref is not None
    stored = path.read_bytes()
    body = stored[: len(codecs.MAGIC) + sum(sum(c.planes) for c in footer.chunks)]
    looped = dataclasses.replace(footer, ref=mine.blob, ref_dtype=footer.dtype).to_json()
    os.chmod(path, 0o644)
    path.write_bytes(body + looped + codecs.TAIL.pack(len(looped), codecs.MAGIC))
    env = {**os.environ, "GRAFT_STORE": str(store_dir)}
    for args, code in ((["verify"], 3), (["export", "checkpoint-20", tmp_path / "out"], 1)):
        done = subprocess.run(
            [GRAFT, *map(str, args)], capture_output=True, text=True, env=env, timeout=120
        )
        assert done.returncode == code and "Traceback" not in done.stderr, done.stderr
    assert "over 16 deep" in done.stderr and not (tmp_path / "out").exists()


def test_two_readers_of_one_base_decode_its_chunks_once(run, store_dir, monkeypatch):
    """Fine-tunes read side by side (a merge) share the base's decoded chunks."""
    store = Store.open(store_dir)
    _register_run(store, run)
    repack(store)
    store = Store.open(store_dir)  # nothing decoded yet
    first, second = _tensor(store, "checkpoint-10", MLP), _tensor(store, "other", MLP)
    base = _tensor(store, "base", MLP).blob
    assert _footer(store, first.blob).ref == _footer(store, second.blob).ref == base
    decoded: list[str] = []
    real = registry.blobs.BlobReader._decode_chunk

    def counted(self, index):  # type: ignore[no-untyped-def]
        decoded.append(self.key)
        return real(self, index)

    monkeypatch.setattr(registry.blobs.BlobReader, "_decode_chunk", counted)
    with store.blobs.open(first.blob) as a, store.blobs.open(second.blob) as b:
        assert xxhash.xxh3_128_hexdigest(a.read(0, a.size)) == first.blob
        assert xxhash.xxh3_128_hexdigest(b.read(0, b.size)) == second.blob
    chunks = len(_footer(store, base).chunks)
    assert decoded.count(base) == chunks  # once each, not once per fine-tune
    decoded.clear()
    with store.blobs.open(first.blob) as a:  # kept for the next reader
        a.read(0, a.size)
    assert decoded == []
    stat = store.blobs.path(base).stat()  # the base's file changed: nothing kept applies
    os.utime(store.blobs.path(base), ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    with store.blobs.open(first.blob) as a:
        a.read(0, a.size)
    assert decoded.count(base) == chunks
    decoded.clear()
    with store.blobs.open(first.blob, from_disk=True) as a:  # as `verify` reads
        a.read(0, a.size)
    assert decoded.count(base) == chunks


def test_gc_and_rm_keep_the_blobs_deltas_refer_to(run, store_dir, tmp_path):
    store = Store.open(store_dir)
    _register_run(store, run)
    repack(store)
    reference = _tensor(store, "checkpoint-10", MLP).blob
    assert _footer(store, _tensor(store, "checkpoint-20", MLP).blob).ref == reference
    for ref in ("checkpoint-10", "base"):  # the parents go; their children stay
        registry.remove(store, ref, force=True)
    registry.gc(store)
    assert store.blobs.path(reference).is_file()
    assert registry.verify(store).ok
    registry.export(store, "checkpoint-30", tmp_path / "out")
    assert sha256_files(tmp_path / "out") == sha256_files(run / "checkpoint-30")
    for ref in ("checkpoint-20", "checkpoint-30", "other"):  # nothing needs them now
        registry.remove(store, ref, force=True)
    registry.gc(store)
    assert list(store.blobs.keys()) == []


def test_missing_reference_is_reported_as_such(run, store_dir):
    store = Store.open(store_dir)
    _register_run(store, run)
    repack(store)
    reference = _tensor(store, "checkpoint-10", MLP).blob
    store.blobs.path(reference).unlink()
    problems = _problems(store)
    assert ("checkpoint-20@1", MLP, "missing reference") in problems
    assert ("checkpoint-10@1", MLP, "missing") in problems


def test_reference_chains_stay_bounded(store_dir, tmp_path, monkeypatch):
    """A run of 12 checkpoints: no chain of deltas is longer than MAX_CHAIN."""
    from graft.registry import repack as repack_module

    monkeypatch.setattr(repack_module, "MAX_CHAIN", 3)
    store = Store.open(store_dir)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(256, 256, generator=g) * 0.02
    parent = None
    for i in range(12):
        w = w + torch.randn(256, 256, generator=g) * 1e-4  # a slow drift, like training
        folder = tmp_path / f"ck-{i}"
        folder.mkdir()
        from safetensors.torch import save_file

        save_file({"w": w.to(torch.bfloat16)}, folder / "model.safetensors")
        registry.add(store, folder, name=f"ck-{i}", parent=parent)
        parent = f"ck-{i}"
    repack(store)
    depths, roots = [], set()
    for i in range(12):
        key, depth = _tensor(store, f"ck-{i}", "w").blob, 0
        while (footer := _footer(store, key)) and footer.ref:
            key, depth = footer.ref, depth + 1
        depths.append(depth)
        roots.add(key)
    assert max(depths) == 3 and depths[:5] == [0, 1, 2, 3, 1], depths  # re-based on the root
    assert roots == {_tensor(store, "ck-0", "w").blob}
    assert registry.verify(store).ok


def test_du_and_repack_on_the_command_line(run, store, graft):
    _register_run(store, run)
    result = graft_json(graft, "repack")
    assert result["encoded"] > 0 and result["bytes_after"] < result["bytes_before"]
    du = graft_json(graft, "du")
    assert set(du) == {"raw_bytes", "stored_bytes", "artifacts"}
    assert du["stored_bytes"] < du["raw_bytes"]
    assert du["artifacts"][0]["ref"] == "base@1"
    one = graft_json(graft, "du", "checkpoint-20")
    [row] = one["artifacts"]
    assert row["ref"] == "checkpoint-20@1" and row["stored_bytes"] < row["raw_bytes"]
    shown = registry.show(store, "checkpoint-20").usage
    assert (shown.raw_bytes, shown.stored_bytes) == (row["raw_bytes"], row["stored_bytes"])
    assert f"({shown.ratio:.2f} of its blobs' bytes)" in graft("show", "checkpoint-20").stdout


def test_kill_during_repack_leaves_a_sound_store_that_the_next_repack_finishes(
    run, store_dir, tmp_path
):
    store = Store.open(store_dir)
    _register_run(store, run)
    env = {**os.environ, "GRAFT_STORE": str(store_dir)}
    rng = random.Random(0)
    for _ in range(10):
        proc = subprocess.Popen([GRAFT, "repack"], env=env, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert registry.verify(store).ok
    repack(store)
    total, _ = usage(store)
    assert total.stored_bytes < 0.75 * total.raw_bytes
    for ref, folder in (("checkpoint-30", "checkpoint-30"), ("other", "other")):
        registry.export(store, ref, tmp_path / ref)
        assert sha256_files(tmp_path / ref) == sha256_files(run / folder)


# -- background repacks and settings ---------------------------------------------------


def _graft(store_dir: Path, *args: str | Path, env: dict[str, str] | None = None):
    return subprocess.run(
        [GRAFT, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "GRAFT_STORE": str(store_dir), **(env or {})},
        timeout=300,
    )


def _add_run_by_cli(store_dir: Path, run: Path, *extra: str, env=None) -> None:
    parent = None
    for folder in [run / "base", *sorted(run.glob("checkpoint-*"))]:
        args = ["add", folder, "--name", folder.name, *extra]
        done = _graft(store_dir, *args, *(["--parent", parent] if parent else []), env=env)
        assert done.returncode == 0, done.stderr
        parent = folder.name


def _wait_for_background_repacks(store_dir: Path, timeout: float = 120) -> None:
    """Until no repack is asked for or running (the lock is free and no request waits)."""
    import fcntl

    deadline = time.monotonic() + timeout
    lock = store_dir / "locks" / "repack.lock"
    while time.monotonic() < deadline:
        if not (store_dir / "locks" / "repack-wanted").exists():
            with open(lock, "a") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    pass
        time.sleep(0.05)
    raise AssertionError("the background repack did not finish")


def test_an_add_starts_a_repack_in_the_background(run, store_dir, monkeypatch):
    monkeypatch.delenv("GRAFT_REPACK")  # the default: background
    _add_run_by_cli(store_dir, run)
    _wait_for_background_repacks(store_dir)
    store = Store.open(store_dir)
    total, _ = usage(store)
    assert total.stored_bytes < 0.75 * total.raw_bytes
    assert repack(store).encoded == 0  # the background repack left nothing to do
    assert registry.verify(store).ok


def _delta_pairs(store_dir: Path) -> set[tuple[str, str]]:
    """(child NAME, parent NAME) of every pair whose deltas are recorded, read
    straight from the catalog (`graft sql` would record the missing ones first)."""
    with Store.open(store_dir).catalog.reading() as con:
        rows = con.execute(
            """
            SELECT c.name, p.name FROM delta_pairs d
            JOIN artifacts c ON c.id = d.child_id JOIN artifacts p ON p.id = d.parent_id
            """
        ).fetchall()
    return set(rows)


def test_deltas_are_recorded_after_the_add_not_during_it(run, store_dir):
    """`graft add` returns once the files are stored; with no background job the
    deltas wait until something reads them, and `graft sql` records them first."""
    _add_run_by_cli(store_dir, run, env={"GRAFT_REPACK": "off"})  # no background job
    assert _delta_pairs(store_dir) == set()
    query = "SELECT count(*) FROM tensor_deltas WHERE status = 'changed'"
    done = _graft(store_dir, "sql", query, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["count_star()"] > 0
    names = [f.name for f in sorted(run.glob("checkpoint-*"))]
    assert _delta_pairs(store_dir) == set(zip(names, ["base", *names[:-1]], strict=True))


def test_the_background_job_records_the_deltas(run, store_dir):
    _add_run_by_cli(store_dir, run, env={"GRAFT_REPACK": "background"})
    _wait_for_background_repacks(store_dir)
    names = [f.name for f in sorted(run.glob("checkpoint-*"))]
    assert _delta_pairs(store_dir) == set(zip(names, ["base", *names[:-1]], strict=True))


def test_eight_parallel_adds_of_related_checkpoints_lose_nothing(store_dir, tmp_path, monkeypatch):
    """Eight checkpoints of one run added at once, each starting a background
    repack while the others still write: every one is registered, exports
    byte-identical, and the store ends compact and sound."""
    monkeypatch.delenv("GRAFT_REPACK")
    run = tmp_path / "run8"
    make_run(run, checkpoints=8, every=5, hidden=256, layers=2, pretrain_steps=20)
    assert _graft(store_dir, "add", run / "base", "--name", "base").returncode == 0
    folders = sorted(run.glob("checkpoint-*"))
    procs = [
        subprocess.Popen(
            [GRAFT, "add", folder, "--name", folder.name, "--parent", "base"],
            env={**os.environ, "GRAFT_STORE": str(store_dir)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for folder in folders
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    _wait_for_background_repacks(store_dir)
    store = Store.open(store_dir)
    assert registry.verify(store).ok
    assert {r.name for r in registry.list_artifacts(store)} == {"base", *(f.name for f in folders)}
    total, _ = usage(store)
    assert total.stored_bytes < 0.8 * total.raw_bytes
    for folder in folders:
        registry.export(store, folder.name, tmp_path / "out" / folder.name)
        assert sha256_files(tmp_path / "out" / folder.name) == sha256_files(folder)


def test_no_repack_and_no_compress(run, store_dir):
    _add_run_by_cli(store_dir, run, "--no-repack", env={"GRAFT_REPACK": "background"})
    assert not (store_dir / "locks" / "repack-wanted").exists()  # nothing was started
    store = Store.open(store_dir)
    total, _ = usage(store)
    assert total.stored_bytes == total.raw_bytes
    inline = {"GRAFT_REPACK": "inline"}
    done = _graft(store_dir, "add", run / "other", "--parent", "base", "--no-compress", env=inline)
    assert done.returncode == 0, done.stderr
    _, rows = usage(store)
    ratios = {u.name: u.ratio for u in rows}
    assert ratios["other@1"] == 1.0  # kept raw, while the inline repack encoded the rest
    assert ratios["checkpoint-30@1"] < 0.8 and ratios["base@1"] < 0.9, ratios


def test_store_settings(store_dir, run):
    assert _graft(store_dir, "config").stdout == "compress = true\nauto_repack = true\n"
    assert _graft(store_dir, "config", "compress", "false").returncode == 0
    assert json.loads(_graft(store_dir, "config", "--json").stdout) == {
        "compress": False,
        "auto_repack": True,
    }
    refused = _graft(store_dir, "repack")
    assert refused.returncode == 1 and "compression is off" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    _add_run_by_cli(store_dir, run, env={"GRAFT_REPACK": "background"})
    assert not (store_dir / "locks" / "repack-wanted").exists()
    for bad, words in (
        (["config", "colour", "true"], "unknown setting 'colour'"),
        (["config", "compress", "maybe"], "must be true or false"),
    ):
        done = _graft(store_dir, *bad)
        assert done.returncode == 1 and words in done.stderr and "Traceback" not in done.stderr
    assert _graft(store_dir, "config", "compress", "true").returncode == 0
    bad_env = _graft(store_dir, "add", run / "other", env={"GRAFT_REPACK": "sometimes"})
    assert bad_env.returncode == 1 and "GRAFT_REPACK='sometimes'" in bad_env.stderr
    (store_dir / "settings.json").write_text('{"compress": "yes"}')
    done = _graft(store_dir, "add", run / "other")
    assert done.returncode == 1 and "each true or false" in done.stderr
    assert "other" not in _graft(store_dir, "ls").stdout  # refused before it was added


def test_kill_during_a_background_repack(run, store_dir, tmp_path):
    store = Store.open(store_dir)
    _register_run(store, run)
    rng = random.Random(1)
    env = {**os.environ, "GRAFT_STORE": str(store_dir)}
    for _ in range(10):
        (store_dir / "locks" / "repack-wanted").touch()
        proc = subprocess.Popen(
            [sys.executable, "-m", "graft.registry.repack", str(store_dir)],
            env=env,
            start_new_session=True,
        )
        time.sleep(rng.uniform(0.2, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert registry.verify(store).ok
    repack(store)
    for ref in ("checkpoint-30", "other"):
        registry.export(store, ref, tmp_path / ref)
        assert sha256_files(tmp_path / ref) == sha256_files(run / ref)


def test_gc_refuses_when_it_cannot_read_what_a_blob_refers_to(run, store_dir):
    store = Store.open(store_dir)
    _register_run(store, run)
    repack(store)
    path = store.blobs.path(_tensor(store, "checkpoint-20", MLP).blob)
    os.chmod(path, 0o644)
    os.truncate(path, path.stat().st_size - 3)  # the footer's tail is gone
    before = sorted(store.blobs.keys())
    done = _graft(store_dir, "gc")
    assert done.returncode == 1 and "gc cannot tell which blobs it refers to" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert sorted(store.blobs.keys()) == before


def test_raw_bytes_that_look_encoded_are_read_as_they_are(run, store_dir, tmp_path):
    """An encoded blob's file, added as a file of another artifact, is that artifact's raw
    bytes: its footer names another key, so it is not decoded."""
    store = Store.open(store_dir)
    _register_run(store, run)
    repack(store)
    encoded = store.blobs.path(_tensor(store, "checkpoint-20", MLP).blob).read_bytes()
    folder = tmp_path / "lookalike"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((run / "base" / "model.safetensors").read_bytes())
    (folder / "README.md").write_bytes(encoded)
    registry.add(store, folder, name="lookalike")
    registry.export(store, "lookalike", tmp_path / "out")
    assert sha256_files(tmp_path / "out") == sha256_files(folder)
    assert registry.verify(store).ok
    registry.gc(store)
    assert registry.verify(store).ok
