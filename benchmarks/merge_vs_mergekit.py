"""Benchmark `graft merge` against mergekit 0.1.5 on generated bf16 Llama-shaped models.

Usage::

    bash .ci/setup-mergekit           # once: the mergekit venv (.venv-mergekit)
    python benchmarks/merge_vs_mergekit.py [--size-gb 1.0] [--repeats 3] [--workdir DIR]

Generates (or reuses, when a finished copy is already in the work folder) a
base model of about --size-gb GB and three fine-tunes of it (the base plus
small random deltas on every tensor), all bf16 with fixed seeds. Then, for
each method (linear, ties, dare_ties), writes one mergekit-style YAML and runs
--repeats rounds of

* ``graft merge CONFIG --out DIR --no-register`` (GRAFT_STORE set to a
  temporary store; ``--seed`` for dare_ties), and
* ``mergekit-yaml CONFIG DIR`` with mergekit's defaults (``--random-seed``
  for dare_ties; ``--no-copy-tokenizer``, as the models have none),

measuring each child's wall time and peak RSS (``os.wait4``, in a small
launcher process). Every run starts from a warm page cache with no dirty pages
(untimed ``sync`` and a read of the inputs), and its output is deleted
afterwards. After the first round the two
outputs of linear and ties are compared tensor by tensor.

The table goes to stdout; progress goes to stderr. MB means 10**6 bytes. The
script exits with 1 when a goal fails or graft could not run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from bench_add import Shape, choose_shape, sync, touch_memory, warm_cache
from common import cache_bytecode, graft_command, log, machine_line, print_table

MB = 1_000_000
GB = 1_000_000_000
SEED = 4321
DELTA_STD = 0.002  # fine-tune deltas: 10% of the weights' N(0, 0.02)
N_FINETUNES = 3
WEIGHTS = (0.5, 0.3, 0.2)
DENSITY = 0.5
DARE_SEED = 0
METHODS = ("linear", "ties", "dare_ties")
REPO = Path(__file__).resolve().parent.parent
MERGEKIT = REPO / ".venv-mergekit" / "bin" / "mergekit-yaml"

# Goals (issue 14): graft time and peak RSS as a fraction of mergekit's.
GOAL_TIME = {"linear": 0.25, "ties": 0.10, "dare_ties": 0.25}
GOAL_RSS = 0.2


# -- the models ------------------------------------------------------------


@dataclass(frozen=True)
class ModelSet:
    """A generated base model and its fine-tunes, on disk."""

    folder: Path
    shape: Shape

    @property
    def base(self) -> Path:
        return self.folder / "base"

    @property
    def finetunes(self) -> list[Path]:
        return [self.folder / f"ft-{k}" for k in range(1, N_FINETUNES + 1)]

    def all(self) -> list[Path]:
        return [self.base, *self.finetunes]


def shard_plan(shape: Shape) -> list[list[tuple[str, tuple[int, ...]]]]:
    """The tensors of each shard: 1 file under 256 MB, else 2 or 3 (as bench_add)."""
    total = shape.nbytes()
    n = 1 if total < 256 * MB else 2 if total < 512 * MB else 3
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[] for _ in range(n)]
    filled = 0
    for name, dims in shape.tensors():
        shards[min(int(filled // (total / n)), n - 1)].append((name, dims))
        filled += 2 * math.prod(dims)
    return shards


def generate_models(folder: Path, target_bytes: int, delta_std: float = DELTA_STD) -> ModelSet:
    """Write the base and its fine-tunes into `folder`, or reuse a finished set.

    One shard at a time, tensor by tensor: each tensor of the base is drawn in
    fp32 and kept as bf16, and each fine-tune adds its own N(0, delta_std)
    noise to it (norm weights included), so at most one shard of each model
    is in memory at once. A `.complete` file, written last, marks a usable set.
    """
    import torch
    from safetensors.torch import save_file

    shape = choose_shape(target_bytes)
    models = ModelSet(folder, shape)
    marker, made = folder / ".complete", {**shape.config(), "delta_std": delta_std}
    if marker.is_file() and json.loads(marker.read_text()) == made:
        log(f"reusing the models in {folder}")
        return models
    shutil.rmtree(folder, ignore_errors=True)
    for m in models.all():
        m.mkdir(parents=True)

    shards = shard_plan(shape)
    base_gen = torch.Generator().manual_seed(SEED)
    ft_gens = [torch.Generator().manual_seed(SEED + k) for k in range(1, N_FINETUNES + 1)]
    weight_maps: dict[str, str] = {}
    for k, members in enumerate(shards, start=1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        if len(shards) == 1:
            file = "model.safetensors"
        data: list[dict[str, torch.Tensor]] = [{} for _ in models.all()]
        for name, dims in members:
            if len(dims) == 1:
                base = torch.ones(dims, dtype=torch.float32)
            else:
                base = torch.empty(dims).normal_(0.0, 0.02, generator=base_gen)
            base = base.to(torch.bfloat16).float()
            data[0][name] = base.to(torch.bfloat16)
            for j, gen in enumerate(ft_gens, start=1):
                delta = torch.empty(dims).normal_(0.0, delta_std, generator=gen)
                data[j][name] = (base + delta).to(torch.bfloat16)
                del delta
            del base
            weight_maps[name] = file
        for model, tensors in zip(models.all(), data, strict=True):
            save_file(tensors, str(model / file), metadata={"format": "pt"})
        del data
        log(f"wrote {file} of {len(models.all())} models ({len(members)} tensors each)")

    for model in models.all():
        if len(shards) > 1:
            index = {"metadata": {"total_size": shape.nbytes()}, "weight_map": weight_maps}
            (model / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        (model / "config.json").write_text(json.dumps(shape.config(), indent=2) + "\n")
    marker.write_text(json.dumps(made))
    return models


def write_config(path: Path, method: str, models: ModelSet) -> None:
    """A mergekit YAML: linear over the fine-tunes; ties/dare_ties on the base."""
    entries: list[dict[str, object]] = []
    for ft, w in zip(models.finetunes, WEIGHTS, strict=True):
        params: dict[str, float] = {"weight": w}
        if method != "linear":
            params["density"] = DENSITY
        entries.append({"model": str(ft), "parameters": params})
    config: dict[str, object] = {"merge_method": method}
    if method != "linear":
        config["base_model"] = str(models.base)
    config["models"] = entries
    config["dtype"] = "bfloat16"
    path.write_text(yaml.safe_dump(config, sort_keys=False))


# -- measuring -------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    """One child process: wall and CPU seconds, peak RSS, exit status, stderr."""

    seconds: float
    cpu: float
    rss_mb: float
    returncode: int
    stderr: str


# Runs argv[2:] and writes its wall time and rusage, as JSON, to the file argv[1].
LAUNCHER = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[2:])
_, status, ru = os.wait4(p.pid, 0)
wall = time.perf_counter() - t0
with open(sys.argv[1], "w") as f:
    json.dump({"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "maxrss_kib": ru.ru_maxrss,
               "rc": os.waitstatus_to_exitcode(status)}, f)
"""


def run_child(cmd: Sequence[str], env: dict[str, str], stderr_file: Path) -> RunResult:
    """Run `cmd`, timing it and reading its own peak RSS from `os.wait4`.

    Linux carries a process's peak RSS across fork and exec, so a child
    started from this process would report at least this process's RSS (which
    reaches gigabytes while generating the models). A small launcher
    interpreter starts the command instead, and reports its wall time and
    rusage; the ~20 ms it takes to start is not counted.
    """
    report_file = stderr_file.with_suffix(".rusage.json")
    launcher = [sys.executable, "-S", "-c", LAUNCHER, str(report_file)]
    with open(stderr_file, "wb") as err:
        proc = subprocess.run(
            [*launcher, *cmd], stdout=subprocess.DEVNULL, stderr=err, env=env, check=False
        )
    if proc.returncode != 0 or not report_file.is_file():
        raise SystemExit(f"bench: the launcher failed (exit {proc.returncode}): {stderr_file}")
    ru = json.loads(report_file.read_text())
    report_file.unlink()
    return RunResult(
        seconds=ru["wall"],
        cpu=ru["cpu"],
        rss_mb=ru["maxrss_kib"] * 1024 / MB,  # KiB on Linux
        returncode=ru["rc"],
        stderr=stderr_file.read_text(errors="replace"),
    )


@dataclass
class Series:
    """The successful runs of one tool on one method, or why it has none."""

    runs: list[RunResult] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.runs) and not self.error

    def median_s(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    def median_rss(self) -> float:
        return statistics.median(r.rss_mb for r in self.runs)


def compare_outputs(a: Path, b: Path) -> str:
    """Max |a - b| over all tensors and the share of elements that differ."""
    import torch
    from safetensors import safe_open

    def index(folder: Path) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as st:
                out.update(dict.fromkeys(st.keys(), f))
        return out

    ia, ib = index(a), index(b)
    if set(ia) != set(ib):
        only = sorted(set(ia) ^ set(ib))
        return f"tensor names differ ({len(only)}, e.g. {only[0]})"
    worst, differ, total = 0.0, 0, 0
    for name in sorted(ia):
        with (
            safe_open(str(ia[name]), framework="pt") as sa,
            safe_open(str(ib[name]), framework="pt") as sb,
        ):
            x, y = sa.get_tensor(name), sb.get_tensor(name)
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"{name}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}"
        d = (x.float() - y.float()).abs()
        worst = max(worst, float(d.max()))
        differ += int(torch.count_nonzero(d))
        total += d.numel()
    return f"{worst:.2g} ({100 * differ / total:.2f}% differ)"


def bench(
    models: ModelSet,
    run_dir: Path,
    methods: Sequence[str],
    repeats: int,
    graft: list[str],
    mergekit: list[str],
) -> tuple[dict[str, dict[str, Series]], dict[str, str]]:
    """Per method, `repeats` interleaved rounds of graft and mergekit."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRAFT_STORE": str(run_dir / "store")}
    results: dict[str, dict[str, Series]] = {}
    agreement: dict[str, str] = {}
    for method in methods:
        config = run_dir / f"{method}.yaml"
        write_config(config, method, models)
        seed = ["--seed", str(DARE_SEED)] if method == "dare_ties" else []
        mk_seed = ["--random-seed", str(DARE_SEED)] if method == "dare_ties" else []
        cmds = {
            "graft": lambda out, s=seed, c=config: [
                *graft,
                "merge",
                str(c),
                "--out",
                str(out),
                "--no-register",
                *s,
            ],
            "mergekit": lambda out, s=mk_seed, c=config: [
                *mergekit,
                str(c),
                str(out),
                "--quiet",
                "--no-copy-tokenizer",
                *s,
            ],
        }
        series = {tool: Series() for tool in cmds}
        results[method] = series
        for i in range(repeats):
            # Alternate which tool goes first, so neither always follows the other.
            order = list(cmds) if i % 2 == 0 else list(reversed(cmds))
            for tool in order:
                if series[tool].error:
                    continue
                out = run_dir / f"out-{tool}"
                shutil.rmtree(out, ignore_errors=True)
                sync()
                for m in models.all():
                    warm_cache(m)
                r = run_child(cmds[tool](out), env, run_dir / f"{tool}.stderr")
                if r.returncode != 0:
                    tail = "\n".join(r.stderr.strip().splitlines()[-15:])
                    log(f"{method}: {tool} failed (exit {r.returncode}):\n{tail}")
                    series[tool].error = f"exit {r.returncode}"
                    continue
                series[tool].runs.append(r)
                log(
                    f"{method} {tool} #{i + 1}: {r.seconds:.2f} s wall, {r.cpu:.2f} s CPU, "
                    f"peak RSS {r.rss_mb:.0f} MB"
                )
            outs = [run_dir / f"out-{tool}" for tool in cmds]
            if i == 0 and method != "dare_ties" and all(s.ok for s in series.values()):
                agreement[method] = compare_outputs(*outs)
                log(f"{method}: graft vs mergekit max |diff| {agreement[method]}")
            for out in outs:
                shutil.rmtree(out, ignore_errors=True)
    return results, agreement


# -- main ------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=1.0, help="size of each model, in GB")
    ap.add_argument("--repeats", type=int, default=3, help="rounds per method (median quoted)")
    ap.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "graft-merge-bench",
        help="folder for the models (kept and reused), outputs and store",
    )
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    ap.add_argument("--graft", help="command that runs graft (default: the one beside python)")
    ap.add_argument(
        "--mergekit",
        default=str(MERGEKIT),
        help="command that runs mergekit-yaml (default: .venv-mergekit, see .ci/setup-mergekit)",
    )
    ap.add_argument("--keep", action="store_true", help="keep this run's folder (configs, logs)")
    ap.add_argument(
        "--pretouch-gb",
        type=float,
        default=16,
        help="touch this much memory once before measuring (0: skip); see bench_add",
    )
    args = ap.parse_args(argv)
    cache_bytecode()
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := sorted(set(methods) - set(METHODS)):
        ap.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    mergekit = args.mergekit.split()
    if not shutil.which(mergekit[0]):
        ap.error(f"{mergekit[0]} not found: run `bash .ci/setup-mergekit` first")

    args.workdir.mkdir(parents=True, exist_ok=True)
    target = int(args.size_gb * GB)
    models = generate_models(args.workdir / f"models-{target // MB}MB-seed{SEED}", target)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=args.workdir))
    touch_memory(args.pretouch_gb)
    try:
        results, agreement = bench(
            models, run_dir, methods, args.repeats, graft_command(args.graft), mergekit
        )
    finally:
        if args.keep:
            log(f"kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return report(models, results, agreement, args.repeats, args.workdir)


def report(
    models: ModelSet,
    results: dict[str, dict[str, Series]],
    agreement: dict[str, str],
    repeats: int,
    workdir: Path,
) -> int:
    """Print the table; 1 when a goal fails or graft has no figures."""
    shape = models.shape
    size = sum(p.stat().st_size for p in models.base.iterdir() if p.is_file())
    rows: list[list[str]] = []
    failed = False
    for method, series in results.items():
        g, m = series["graft"], series["mergekit"]
        gs = f"{g.median_s():.2f}" if g.ok else f"n/a ({g.error or 'no runs'})"
        ms = f"{m.median_s():.2f}" if m.ok else f"n/a ({m.error or 'no runs'})"
        gr = f"{g.median_rss():.0f}" if g.ok else "n/a"
        mr = f"{m.median_rss():.0f}" if m.ok else "n/a"
        t_ratio = g.median_s() / m.median_s() if g.ok and m.ok else None
        r_ratio = g.median_rss() / m.median_rss() if g.ok and m.ok else None
        t_goal = GOAL_TIME.get(method)
        ok = (
            t_ratio is not None
            and r_ratio is not None
            and (t_goal is None or t_ratio <= t_goal)
            and r_ratio <= GOAL_RSS
        )
        failed |= not ok
        rows.append(
            [
                method,
                gs,
                ms,
                "n/a" if t_ratio is None else f"{t_ratio:.2f}x",
                "—" if t_goal is None else f"<= {t_goal}x",
                gr,
                mr,
                "n/a" if r_ratio is None else f"{r_ratio:.2f}x",
                f"<= {GOAL_RSS}x",
                agreement.get(method, "—"),
                "PASS" if ok else "FAIL",
            ]
        )
    print(
        f"graft merge vs mergekit 0.1.5: base + {N_FINETUNES} fine-tunes of {size / MB:.1f} MB "
        f"each ({len(shape.tensors())} bf16 tensors; hidden {shape.hidden}, {shape.layers} "
        f"layers, MLP {shape.intermediate}, vocab {shape.vocab}); weights {list(WEIGHTS)}, "
        f"density {DENSITY} (ties, dare_ties), dtype bfloat16; median of {repeats} interleaved "
        f"rounds; warm page cache, untimed sync before each run"
    )
    print(
        "goals: time <= 0.10x mergekit (ties), <= 0.25x (linear, dare_ties); "
        "peak RSS <= 0.2x mergekit"
    )
    header = ["method", "graft s", "mergekit s", "time", "goal", "graft MB", "mergekit MB"]
    header += ["RSS", "goal", "max |graft - mergekit|", "result"]
    print_table(header, rows, numeric={1, 2, 3, 5, 6, 7})
    print(
        "time, RSS = graft / mergekit (lower is better); peak RSS of each child from wait4() "
        "in a small launcher. "
        "linear merges the 3 fine-tunes; ties and dare_ties merge them onto the base. "
        f"dare_ties: graft --seed {DARE_SEED}, mergekit --random-seed {DARE_SEED} (different "
        "RNG streams, so its outputs are not compared). mergekit runs with its defaults plus "
        "--quiet --no-copy-tokenizer and does not fsync its output."
    )
    print(machine_line(workdir))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
