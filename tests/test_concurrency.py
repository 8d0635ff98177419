"""Concurrency: several real `graft` processes on one store at once.

Adds race to create a new store, share tensors (stored once), take versions of
one name in turn, run beside `gc` and beside readers; every one succeeds and
every artifact exports byte-identical to its source. Outcomes are checked, never
timings; every process gets a generous timeout.
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from graft import registry
from tests.procs import GRAFT, TIMEOUT, blob_files, graft_env, graft_ok, listed, sha256_files

COLUMNS = 1024
ROWS = 256  # float32: 1 MiB a tensor
SHARED = "model.embed_tokens.weight"  # identical bytes in every generated model
CONFIG = {"model_type": "llama", "hidden_size": COLUMNS, "num_hidden_layers": 3}


# -- helpers ------------------------------------------------------------------


def start(store: Path, *args: str | Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(GRAFT), *map(str, args)],
        env=graft_env(store, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{proc.args!r} ran over {TIMEOUT} s: {err}")
    return proc.returncode, out, err


def finish_ok(proc: subprocess.Popen[str]) -> str:
    code, out, err = finish(proc)
    assert code == 0, f"{proc.args!r} exited {code}: {err}"
    assert "Traceback" not in err, err
    return out


def assert_exports_identical(store: Path, ref: str, original: Path, out: Path) -> None:
    graft_ok(store, "export", ref, out)
    assert sha256_files(out) == sha256_files(original), ref


def contents(folder: Path) -> set[str]:
    """Digests of what the store should keep of `folder`: each safetensors
    header, each tensor's bytes and each other file."""
    parts = set()
    for p in folder.iterdir():
        data = p.read_bytes()
        if p.suffix != ".safetensors":
            parts.add(hashlib.sha256(data).hexdigest())
            continue
        (n,) = struct.unpack("<Q", data[:8])
        parts.add(hashlib.sha256(data[: 8 + n]).hexdigest())
        header = json.loads(data[8 : 8 + n])
        for name, info in header.items():
            if name != "__metadata__":
                begin, end = info["data_offsets"]
                parts.add(hashlib.sha256(data[8 + n + begin : 8 + n + end]).hexdigest())
    return parts


def tensor_contents(folders: list[Path]) -> set[str]:
    """Digests of the distinct tensors of `folders` (headers and companions left out)."""
    headers_and_files = set()
    for folder in folders:
        for p in folder.iterdir():
            data = p.read_bytes()
            if p.suffix == ".safetensors":
                (n,) = struct.unpack("<Q", data[:8])
                data = data[: 8 + n]
            headers_and_files.add(hashlib.sha256(data).hexdigest())
    return set().union(*map(contents, folders)) - headers_and_files


def write_model(folder: Path, seed: int, *, unique: int = 3) -> Path:
    """A small model folder: the shared embedding, `unique` tensors of its own
    (seeded), an all-ones norm (shared too) and the common config.json."""
    folder.mkdir(parents=True)
    shared = torch.Generator().manual_seed(0)
    g = torch.Generator().manual_seed(1000 + seed)
    tensors = {SHARED: torch.randn(ROWS, COLUMNS, generator=shared)}
    for i in range(unique):
        tensors[f"model.layers.{i}.mlp.up_proj.weight"] = torch.randn(ROWS, COLUMNS, generator=g)
    tensors["model.norm.weight"] = torch.ones(COLUMNS)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(CONFIG, indent=2))
    return folder


def write_garbage(folder: Path, seeds: list[int]) -> Path:
    """A model holding the first own tensor of each of `seeds`' models, and the
    shared embedding: once removed, exactly the blobs a racing gc may delete
    while adds of those models want them."""
    folder.mkdir(parents=True)
    shared = torch.Generator().manual_seed(0)
    tensors = {SHARED: torch.randn(ROWS, COLUMNS, generator=shared)}
    for seed in seeds:
        g = torch.Generator().manual_seed(1000 + seed)
        tensors[f"borrowed.{seed}.weight"] = torch.randn(ROWS, COLUMNS, generator=g)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


READER = r"""
import json, sys, time
from pathlib import Path
from graft.registry import Store, list_artifacts

store = Store.open(Path(sys.argv[1]))
stop, ready, pause = Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
counts = []
while True:
    done = stop.exists()
    counts.append(len(list_artifacts(store)))
    ready.touch()
    if done:
        break
    time.sleep(pause)
print(json.dumps(counts))
"""

LS_LOOP = r"""
import json, subprocess, sys
from pathlib import Path

graft, stop = sys.argv[1], Path(sys.argv[2])
results = []
while True:
    done = stop.exists()
    r = subprocess.run([graft, "ls", "--json"], capture_output=True, text=True, timeout=120)
    results.append([r.returncode, len(json.loads(r.stdout)) if r.returncode == 0 else r.stderr])
    if done:
        break
print(json.dumps(results))
"""


def start_python(code: str, *args: str | Path | float, store: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        env=graft_env(store),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        assert proc.poll() is None, finish(proc)
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


# -- tests --------------------------------------------------------------------


def test_eight_adds_race_on_a_new_store(tmp_path: Path) -> None:
    """8 adds start at once on a store that does not exist yet; 4 share a name."""
    store = tmp_path / "store"
    folders = [write_model(tmp_path / "src" / f"model-{i}", seed=i) for i in range(8)]
    procs = [
        start(store, "add", f, "--json", *(("--name", "family") if i % 2 == 0 else ()))
        for i, f in enumerate(folders)
    ]
    added = [json.loads(finish_ok(p)) for p in procs]

    rows = listed(store)
    assert len(rows) == 8
    assert sorted(r["id"] for r in rows) == sorted(a["id"] for a in added)
    assert sorted(r["version"] for r in rows if r["name"] == "family") == [1, 2, 3, 4]
    assert {r["name"] for r in rows} == {"family", "model-1", "model-3", "model-5", "model-7"}
    assert all(not a["existed"] for a in added)
    graft_ok(store, "verify")

    # Each distinct header, tensor and file is stored once: the embedding, the
    # norm and config.json once for all eight models.
    assert len(blob_files(store)) == len(set().union(*map(contents, folders)))
    with registry.Store.open(store).catalog.reading() as con:
        distinct = con.execute("SELECT count(DISTINCT blob) FROM tensors").fetchone()
        shared = con.execute(
            "SELECT count(*), count(DISTINCT blob) FROM tensors WHERE name = ?", [SHARED]
        ).fetchone()
    assert distinct == (len(tensor_contents(folders)),) == (8 * 3 + 2,)
    assert shared == (8, 1)

    for a, folder in zip(added, folders, strict=True):
        assert_exports_identical(store, a["id"], folder, tmp_path / "out" / a["id"])


def test_gc_runs_between_concurrent_adds(tmp_path: Path) -> None:
    """Rounds of 4 adds and 2 gcs started interleaved, each round after a removed
    artifact left blobs that those adds need and gc would delete."""
    store = tmp_path / "store"
    opened = registry.Store.open(store)
    added: dict[str, Path] = {}
    for r in range(3):
        seeds = [4 * r + i for i in range(4)]
        folders = [write_model(tmp_path / "src" / f"model-{s}", seed=s) for s in seeds]
        garbage = registry.add(opened, write_garbage(tmp_path / "src" / f"garbage-{r}", seeds))
        registry.remove(opened, garbage.manifest.id)

        commands: list[tuple[str | Path, ...]] = [
            ("add", folders[0], "--json"),
            ("gc", "--json"),
            ("add", folders[1], "--json"),
            ("add", folders[2], "--json"),
            ("gc", "--json"),
            ("add", folders[3], "--json"),
        ]
        procs = []
        for command in commands:
            procs.append(start(store, *command))
            time.sleep(0.05 * r)  # all at once, then more and more staggered
        outputs = [json.loads(finish_ok(p)) for p in procs]
        adds = [o for o, c in zip(outputs, commands, strict=True) if c[0] == "add"]
        added.update((a["id"], f) for a, f in zip(adds, folders, strict=True))

    rows = listed(store)
    assert sorted(r["id"] for r in rows) == sorted(added)
    graft_ok(store, "verify")
    for artifact_id, folder in added.items():
        assert_exports_identical(store, artifact_id, folder, tmp_path / "out" / artifact_id)
    graft_ok(store, "gc")
    graft_ok(store, "verify")
    assert len(blob_files(store)) == len(set().union(*map(contents, added.values())))


def test_readers_in_a_loop_do_not_block_adds(tmp_path: Path) -> None:
    """`graft ls` run over and over by one process, and a long-lived process
    reading the catalog every 50 ms, while 4 adds run."""
    store = tmp_path / "store"
    graft_ok(store, "ls")
    flags = tmp_path / "flags"
    flags.mkdir()
    ls_loop = start_python(LS_LOOP, GRAFT, flags / "stop", store=store)
    reader = start_python(READER, store, flags / "stop", flags / "ready", 0.05, store=store)
    wait_for(flags / "ready", reader)

    folders = [write_model(tmp_path / "src" / f"model-{i}", seed=i) for i in range(4)]
    adds = [start(store, "add", f, "--json") for f in folders]
    added = [json.loads(finish_ok(p)) for p in adds]
    (flags / "stop").touch()

    ls_results = json.loads(finish_ok(ls_loop))
    assert all(code == 0 for code, _ in ls_results), ls_results
    for counts in ([n for _, n in ls_results], json.loads(finish_ok(reader))):
        assert counts == sorted(counts), counts  # never a step back
        assert counts[-1] == 4
    assert sorted(r["id"] for r in listed(store)) == sorted(a["id"] for a in added)
    graft_ok(store, "verify")
    for a, folder in zip(added, folders, strict=True):
        assert_exports_identical(store, a["id"], folder, tmp_path / "out" / a["id"])


def test_busy_readers_do_not_starve_an_add(tmp_path: Path) -> None:
    """Three processes reading the catalog back to back (say, TUIs refreshing)
    must not keep an add out for seconds on end."""
    store = tmp_path / "store"
    graft_ok(store, "ls")
    flags = tmp_path / "flags"
    flags.mkdir()
    readers = [
        start_python(READER, store, flags / "stop", flags / f"ready-{i}", 0, store=store)
        for i in range(3)
    ]
    try:
        for i, reader in enumerate(readers):
            wait_for(flags / f"ready-{i}", reader)
        folder = write_model(tmp_path / "src" / "model", seed=0)
        code, _, err = finish(start(store, "add", folder, GRAFT_LOCK_TIMEOUT="4"))
    finally:
        (flags / "stop").touch()
        for reader in readers:
            finish_ok(reader)
    assert code == 0, err


CREATOR_PAUSED = r"""
import sys, time
from pathlib import Path

checked, go = Path(sys.argv[1]), Path(sys.argv[2])
is_file = Path.is_file

def paused_is_file(self):
    # Stop right after finding no store marker, as a preempted process would.
    found = is_file(self)
    if self.name == "graft-store.json" and not found and not checked.exists():
        checked.touch()
        while not go.exists():
            time.sleep(0.01)
    return found

Path.is_file = paused_is_file
from graft.tui.cli import main

sys.argv = ["graft", "ls", "--json"]
main()
"""


def test_store_created_by_another_process_meanwhile(tmp_path: Path) -> None:
    """The interleaving behind 8 processes racing to create a store, made
    deterministic: B finds no marker; A creates the store; B goes on."""
    store = tmp_path / "store"
    flags = tmp_path / "flags"
    flags.mkdir()
    b = start_python(CREATOR_PAUSED, flags / "checked", flags / "go", store=store)
    wait_for(flags / "checked", b)
    assert listed(store) == []  # A: creates the store
    (flags / "go").touch()
    code, out, err = finish(b)
    assert (code, err) == (0, "")
    assert json.loads(out) == []
