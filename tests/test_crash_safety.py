"""Crash safety: `graft add` killed with SIGKILL at any moment leaves a sound store.

Every test drives the installed `graft` console script in real processes. The
random kills are spread over one add's calibrated duration (seeded, so the same
moments every run): some land in start-up, some in hashing and blob writing,
some around the catalog commit. The injected kills stop a real `graft add` at
exact points (a blob half written, blobs in place, manifest written but not
indexed, catalog committed) so each of those states is reached on every run.

After each kill: `graft verify` passes, `graft ls` shows nothing or the whole
artifact, every blob on disk is complete, and a retried add exports files
byte-identical to the originals.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from graft import registry
from tests.procs import GRAFT, TIMEOUT, blob_files, graft, graft_env, graft_ok, listed, sha256_files

SHARDS = 2
TENSORS_PER_SHARD = 20
COLUMNS = 1024
ROWS = 512  # float32: 2 MiB a tensor, 80 MiB in all
SEED = 20240611


# -- helpers ------------------------------------------------------------------


@functools.cache
def original_hashes(folder: Path) -> dict[str, str]:
    """The sources' digests, taken once: the tests never change a source."""
    return sha256_files(folder)


def assert_exports_identical(store: Path, ref: str, original: Path, out: Path) -> None:
    graft_ok(store, "export", ref, out)
    assert sha256_files(out) == original_hashes(original)
    shutil.rmtree(out)


def assert_blobs_complete(store: Path) -> None:
    """A blob that exists is whole: its bytes (decoded, if encoded) hash to its address."""
    blobs = registry.Store.open(store).blobs
    for p in blob_files(store):
        assert p.is_file(), p
        with blobs.open(p.parent.name + p.name) as blob:
            for _ in blob.stream():  # CorruptBlob if they do not hash to it
                pass


def assert_sound(store: Path) -> list[dict]:
    """`verify` passes without a traceback; every blob is complete; return `ls`."""
    result = graft(store, "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert_blobs_complete(store)
    return listed(store)


def temp_leftovers(store: Path) -> int:
    tmp = store / "tmp"
    return len(list(tmp.iterdir())) if tmp.is_dir() else 0


def reset(store: Path, remove: str | None, *, gc: bool) -> None:
    """Between kills (through the API, to save process start-ups): unregister
    the artifact a kill came too late for, and maybe collect the garbage."""
    if not (remove or gc):
        return
    opened = registry.Store.open(store)
    if remove:
        registry.remove(opened, remove)
    if gc:
        registry.gc(opened)
        assert temp_leftovers(store) == 0


def kill_after(store: Path, delay: float, *args: str | Path) -> int | None:
    """Start `graft ARGS`, SIGKILL it after `delay` s; its exit code if it beat the kill."""
    proc = subprocess.Popen(
        [str(GRAFT), *map(str, args)],
        env=graft_env(store),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(delay)
    finished = proc.poll()
    proc.send_signal(signal.SIGKILL)  # a no-op if it has already exited
    proc.wait(timeout=TIMEOUT)
    return finished


def write_model(
    folder: Path, *, seed: int, rows: int = ROWS, shard_seeds: dict[int, int] | None = None
) -> Path:
    """A transformers-style sharded model: shards, index and config.

    `shard_seeds` maps a shard number to the seed of its tensors (default: `seed`).
    """
    folder.mkdir(parents=True)
    weight_map = {}
    for s in range(1, SHARDS + 1):
        g = torch.Generator().manual_seed((shard_seeds or {}).get(s, seed) * 100 + s)
        shard = f"model-{s:05d}-of-{SHARDS:05d}.safetensors"
        tensors = {
            f"model.layers.{(s - 1) * TENSORS_PER_SHARD + i}.mlp.down_proj.weight": torch.randn(
                rows, COLUMNS, generator=g
            )
            for i in range(TENSORS_PER_SHARD)
        }
        save_file(tensors, folder / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, shard))
    total = SHARDS * TENSORS_PER_SHARD * rows * COLUMNS * 4
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = {"model_type": "llama", "hidden_size": COLUMNS, "seed": seed}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


# -- fixtures -----------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """When, after its start, an uninterrupted `graft add` reached each phase (s)."""

    work: float  # its scratch folder appeared in tmp/: the blob pin is held, hashing starts
    manifest: float  # its manifest appeared: blobs are all in place, the commit follows
    end: float  # it exited
    artifact_id: str
    blobs: int  # blob files in the store afterwards


@dataclass(frozen=True)
class Calibration:
    first: Timing  # the model, into a new store
    second: Timing  # its second version, into the store holding the first


def _entries(folder: Path) -> bool:
    try:
        with os.scandir(folder) as it:
            return any(True for _ in it)
    except FileNotFoundError:
        return False


def _new_entries(folder: Path, before: set[str]) -> bool:
    try:
        return bool(set(os.listdir(folder)) - before)
    except FileNotFoundError:
        return False


def timed_add(store: Path, *args: str | Path) -> Timing:
    """Run one add to completion, polling the store to see when each phase begins."""
    proc = subprocess.Popen(
        [str(GRAFT), "add", *map(str, args), "--json"],
        env=graft_env(store),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    start = time.monotonic()
    manifests = set(os.listdir(store / "manifests")) if (store / "manifests").is_dir() else set()
    work = manifest = None
    while proc.poll() is None:
        now = time.monotonic() - start
        if work is None and _entries(store / "tmp"):
            work = now
        if manifest is None and _new_entries(store / "manifests", manifests):
            manifest = now
        time.sleep(0.001)
    end = time.monotonic() - start
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    # A phase missed between two polls: fall back to typical shares of the run.
    work = work if work is not None else 0.6 * end
    manifest = manifest if manifest is not None else 0.95 * end
    return Timing(work, manifest, end, json.loads(out)["id"], len(blob_files(store)))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("src") / "tiny-80m", seed=1)


@pytest.fixture(scope="module")
def model_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model with shard 2 retrained: shard 1 and the index are shared with v1."""
    folder = tmp_path_factory.mktemp("src") / "tiny-80m-v2"
    return write_model(folder, seed=2, shard_seeds={1: 1})


@pytest.fixture(scope="module")
def calibration(
    model: Path, model_v2: Path, tmp_path_factory: pytest.TempPathFactory
) -> Calibration:
    timed_add(tmp_path_factory.mktemp("warm-up") / "store", model)  # warm the page cache
    store = tmp_path_factory.mktemp("calibration") / "store"
    first = timed_add(store, model, "--name", "m")
    second = timed_add(store, model_v2, "--name", "m")
    print(f"\ncalibration: {first}\n             {second}")
    return Calibration(first, second)


def kill_moments(rng: random.Random, t: Timing, n: int) -> list[float]:
    """`n` moments in [0, t.end], spread over the phases of the add: a sixth very
    early (start-up, store open), half over hashing and blob writing, the rest
    around the commit and at 90-100% of the run."""
    early = max(2, n // 6)
    work = n // 2
    late = n - early - work
    moments = [0.0, *(rng.uniform(0.0, t.work) for _ in range(early - 1))]
    moments += [rng.uniform(t.work, t.manifest) for _ in range(work)]
    late_from = min(t.manifest, 0.9 * t.end)
    moments += [t.end, *(rng.uniform(late_from, t.end) for _ in range(late - 1))]
    rng.shuffle(moments)
    return moments


# -- tests --------------------------------------------------------------------


def test_add_killed_at_random_moments(
    model: Path, calibration: Calibration, tmp_path: Path
) -> None:
    store = tmp_path / "store"  # created by the first add, which may itself be killed
    rng = random.Random(SEED)
    log = []
    expected = calibration.first
    for i, delay in enumerate(kill_moments(rng, expected, 21)):
        blobs_before = len(blob_files(store))
        finished = kill_after(store, delay, "add", model)
        assert finished in (None, 0)
        rows = assert_sound(store)
        assert len(rows) <= 1, rows
        if rows:
            row = rows[0]
            assert (row["id"], row["name"], row["version"]) == (expected.artifact_id, model.name, 1)
        log.append(
            f"kill {i:2d} at {delay:.3f}s (exit {finished}): blobs {blobs_before}"
            f" -> {len(blob_files(store))}, temp files {temp_leftovers(store)},"
            f" registered {bool(rows)}"
        )
        # Start most adds from scratch, so that kills keep landing in blob
        # writing and the commit rather than in a re-add that finds it all done;
        # every third one starts from the leftovers of the last.
        reset(store, expected.artifact_id if rows else None, gc=i % 3 != 0)
    print("\n".join(log))

    added = json.loads(graft_ok(store, "add", model, "--json").stdout)
    assert added["id"] == expected.artifact_id
    rows = assert_sound(store)
    assert [(r["id"], r["version"]) for r in rows] == [(expected.artifact_id, 1)]
    assert_exports_identical(store, added["id"], model, tmp_path / "export")
    graft_ok(store, "gc")
    assert assert_sound(store) == rows
    assert len(blob_files(store)) == expected.blobs
    assert temp_leftovers(store) == 0
    assert_exports_identical(store, f"{model.name}@1", model, tmp_path / "export-after-gc")


def test_add_of_second_version_killed(
    model: Path, model_v2: Path, calibration: Calibration, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    v1 = json.loads(graft_ok(store, "add", model, "--name", "m", "--json").stdout)
    rng = random.Random(SEED + 1)
    for i, delay in enumerate(kill_moments(rng, calibration.second, 10)):
        kill_after(store, delay, "add", model_v2, "--name", "m")
        rows = assert_sound(store)
        by_version = {r["version"]: r["id"] for r in rows}
        assert by_version.get(1) == v1["id"], rows
        assert set(by_version) <= {1, 2}, rows
        assert_exports_identical(store, v1["id"], model, tmp_path / f"export-{i}")
        # gc must keep every blob of v1, the ones shared with v2 included.
        reset(store, by_version.get(2), gc=i % 2 == 1)

    v2 = json.loads(graft_ok(store, "add", model_v2, "--name", "m", "--json").stdout)
    assert (v2["id"], v2["version"], v2["existed"]) == (calibration.second.artifact_id, 2, False)
    rows = assert_sound(store)
    assert sorted((r["version"], r["id"]) for r in rows) == [(1, v1["id"]), (2, v2["id"])]
    graft_ok(store, "gc")
    assert_sound(store)
    assert len(blob_files(store)) == calibration.second.blobs
    assert_exports_identical(store, "m@1", model, tmp_path / "export-v1")
    assert_exports_identical(store, "m@2", model_v2, tmp_path / "export-v2")


# A real `graft add` (the CLI's own entry point) that SIGKILLs itself at one point.
INJECT = r"""
import importlib, itertools, os, signal, sys
from graft import registry
from graft.registry.blobs import BlobStore
from graft.tui.cli import main

add_module = importlib.import_module("graft.registry.add")  # the module, not the function
point = sys.argv[1]
installs = itertools.count(1)

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point in ("blob half written", "blob renamed"):
    install = BlobStore._install

    def _install(self, write):
        mine = next(installs)  # atomic: an add stores tensors in several threads
        if mine == 3 and point == "blob half written":
            def half(out):
                out.write(b"\0" * 4096)
                out.flush()
                die()
            return install(self, half)
        result = install(self, write)
        if mine == 3:
            die()
        return result

    BlobStore._install = _install
elif point == "blobs synced":
    sync = BlobStore.sync

    def _sync(self):
        sync(self)
        die()

    BlobStore.sync = _sync
elif point in ("manifest written", "catalog committed"):
    insert = add_module.insert_manifests

    def _insert(con, manifests, blobs):
        if point == "catalog committed":
            insert(con, manifests, blobs)
            con.commit()
        die()

    add_module.insert_manifests = _insert

sys.argv = ["graft", *sys.argv[2:]]
main()
"""


@pytest.mark.parametrize(
    "point",
    [
        "blob half written",
        "blob renamed",
        "blobs synced",
        "manifest written",  # a re-add alone must index it (no verify first)
        "catalog committed",
    ],
)
def test_add_killed_at_each_step_then_retried(point: str, tmp_path: Path) -> None:
    src = write_model(tmp_path / "src", seed=3, rows=64)  # 10 MiB in 40 tensors
    store = tmp_path / "store"
    graft_ok(store, "ls")  # an existing, empty store
    crashed = subprocess.run(
        [sys.executable, "-c", INJECT, point, "add", str(src)],
        env=graft_env(store),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr

    before = listed(store)  # a plain read, before anything repairs the catalog
    assert len(before) <= 1
    added = json.loads(graft_ok(store, "add", src, "--json").stdout)
    # The retry alone must leave the artifact visible: no verify or reindex first.
    after = listed(store)
    assert [(r["id"], r["name"], r["version"]) for r in after] == [(added["id"], "src", 1)]
    graft_ok(store, "show", "src")
    assert assert_sound(store) == after
    assert_exports_identical(store, "src", src, tmp_path / "export")
    graft_ok(store, "gc")
    assert temp_leftovers(store) == 0
    assert assert_sound(store) == after


def test_merge_killed_at_random_moments(model: Path, model_v2: Path, tmp_path: Path) -> None:
    """A merge killed at any moment leaves its output folder absent or complete,
    the store sound, and the next merge into the same place cleans up after it."""
    store = tmp_path / "store"
    graft_ok(store, "add", model, "--name", "a")
    graft_ok(store, "add", model_v2, "--name", "b")
    config = tmp_path / "merge.yaml"
    config.write_text(
        "merge_method: linear\n"
        "models:\n"
        "  - {model: a, parameters: {weight: 0.7}}\n"
        "  - {model: b, parameters: {weight: 0.3}}\n"
        "dtype: bfloat16\n"
    )
    args = ("merge", config, "--name", "soup", "--out-shard-size", "20MB", "--out")
    started = time.monotonic()
    graft_ok(store, *args, tmp_path / "reference")
    full = time.monotonic() - started
    expected = sha256_files(tmp_path / "reference")
    assert len([f for f in expected if f.endswith(".safetensors")]) > 1

    out = tmp_path / "out"
    rng = random.Random(SEED + 2)
    # Start-up is a good part of a run this small: most kills go after it.
    for delay in sorted(
        [rng.uniform(0.0, 0.3 * full)] + [rng.uniform(0.3, 1.0) * full for _ in range(7)]
    ):
        finished = kill_after(store, delay, *args, out)
        partial = len(list(tmp_path.glob(".out.partial-*")))
        print(
            f"kill at {delay:.2f}s of {full:.2f}s: exit {finished}, output {out.exists()}, "
            f"work folders {partial}"
        )
        if out.exists():  # it finished: then it is whole
            assert sha256_files(out) == expected
            shutil.rmtree(out)
        rows = assert_sound(store)
        assert {r["name"] for r in rows} == {"a", "b", "soup"}  # same content: one artifact
    graft_ok(store, *args, out)
    assert sha256_files(out) == expected
    assert list(tmp_path.glob(".out.partial-*")) == []  # removed: their processes are gone


# A real `graft add` that SIGKILLs itself once it has written its N-th blob.
KILL_AFTER_BLOBS = r"""
import os, signal, sys
from graft.registry.blobs import BlobStore
from graft.tui.cli import main

limit, installs, install = int(sys.argv[1]), 0, BlobStore._install

def _install(self, write):
    global installs
    result = install(self, write)
    installs += 1
    if installs == limit:
        os.kill(os.getpid(), signal.SIGKILL)
    return result

BlobStore._install = _install
sys.argv = ["graft", *sys.argv[2:]]
main()
"""


def test_a_killed_add_leaves_no_temp_files_and_its_rerun_writes_only_the_rest(
    model: Path, tmp_path: Path
) -> None:
    """Blobs are published in batches as they are written, so a re-run after a kill
    writes only what the killed add had not finished; and the next command that
    writes removes the dead add's temp files."""
    store = tmp_path / "store"
    model_bytes = sum(p.stat().st_size for p in model.iterdir())
    published = []
    for limit in range(4, 44, 4):  # the model has 40 tensors of 2 MiB and 4 other blobs
        killed = subprocess.run(
            [sys.executable, "-c", KILL_AFTER_BLOBS, str(limit), "add", model],
            env=graft_env(store),
            capture_output=True,
            timeout=TIMEOUT,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert temp_leftovers(store) == 1  # the dead add's folder, with its temp blobs
        published.append(sum(p.stat().st_size for p in blob_files(store)))
        rerun = json.loads(graft_ok(store, "add", model, "--json").stdout)
        assert temp_leftovers(store) == 0  # the re-run removed it, and its own
        assert rerun["bytes_new"] <= model_bytes - published[-1] + 64 * 1024  # + manifest
        reset(store, rerun["id"], gc=True)
    # Past 64 MiB a batch had been published: the re-runs wrote only the rest.
    assert published[:7] == [0] * 7 and all(p >= 64 * 2**20 for p in published[8:]), published
    assert_sound(store)
