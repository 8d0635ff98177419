"""Benchmark how fast the `graft` command starts, against its catalog engine.

Usage::

    python benchmarks/bench_cli_start.py [--rounds 5] [--workdir DIR] [--keep]

Fills a store with the bundled samples (`graft demo`, compaction off), then
times, in fresh processes and interleaved round by round:

* baseline: `python -c "import duckdb; duckdb.connect(CATALOG,
  read_only=True).execute('select 1')"` in the same venv: the floor of any
  command that reads the catalog;
* `graft ls`, `graft show tiny-llama-sft`, `graft log demo-soup`,
  `graft touched tiny-llama-sft`, `graft sql "SELECT count(*) FROM
  artifacts"` and `graft --help`.

It prints the median wall time of each over the rounds, and its ratio to the
baseline's median. Byte code is compiled first (as `pip install` does), so
no run pays for compiling graft's sources; stdout goes to a pipe, as in a script.
Goal (issue 14): `graft ls` ≤ 1.5× the baseline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cache_bytecode, graft_command, log, machine_line, print_table

GOAL = 1.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true", help="Keep the work folder.")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="graft-bench-start-", dir=args.workdir))
    try:
        run(workdir, args.rounds)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def run(workdir: Path, rounds: int) -> None:
    store = workdir / "store"
    cache_bytecode()
    env = {**os.environ, "GRAFT_STORE": str(store), "GRAFT_REPACK": "off"}
    graft = graft_command(None)
    log("filling the store with the samples (graft demo)")
    subprocess.run([*graft, "demo"], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*graft, "sql", "SELECT 1"], env=env, check=True, stdout=subprocess.DEVNULL)
    catalog = store / "catalog.duckdb"
    floor = f"import duckdb; duckdb.connect({str(catalog)!r}, read_only=True).execute('select 1')"
    commands = {
        "python + duckdb + select 1": [sys.executable, "-c", floor],
        "graft ls": [*graft, "ls"],
        "graft show tiny-llama-sft": [*graft, "show", "tiny-llama-sft"],
        "graft log demo-soup": [*graft, "log", "demo-soup"],
        "graft touched tiny-llama-sft": [*graft, "touched", "tiny-llama-sft"],
        "graft sql (count)": [*graft, "sql", "SELECT count(*) FROM artifacts"],
        "graft --help": [*graft, "--help"],
    }
    for cmd in commands.values():  # warm the page cache and write byte code
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for r in range(rounds):
        for name, cmd in commands.items():
            start = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE)
            times[name].append(time.perf_counter() - start)
        log(f"round {r + 1}/{rounds} done")
    base = statistics.median(times["python + duckdb + select 1"])
    rows = [
        [name, f"{statistics.median(t) * 1000:.0f}", f"{statistics.median(t) / base:.2f}×"]
        for name, t in times.items()
    ]
    print(machine_line(workdir))
    print(f"medians of {rounds} interleaved rounds, each command in a fresh process")
    print_table(["command", "ms", "vs baseline"], rows, numeric={1, 2})
    ls = statistics.median(times["graft ls"]) / base
    verdict = "met" if ls <= GOAL else "NOT met"
    print(f"graft ls: {ls:.2f}× the baseline (goal ≤ {GOAL}×): {verdict}")


if __name__ == "__main__":
    main()
