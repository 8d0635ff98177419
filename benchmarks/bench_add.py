"""Benchmark `graft add` against `cp -r` on a generated Llama-shaped bf16 model.

Usage::

    python benchmarks/bench_add.py [--size-mb 1024] [--repeats 3] [--workdir DIR]

Generates a sharded bf16 model folder of about --size-mb MB (fixed seed), then
times each operation --repeats times and reports the median:

* ``cp -r`` of the folder to a new folder on the same disk (baseline);
* ``cp -r`` followed by ``sync`` (graft fsyncs every blob; plain cp does not);
* ``graft add`` into a fresh store (a new store per repeat);
* ``graft add`` of the unchanged folder into a store that already holds it;
* ``graft --help`` (interpreter start and imports: a floor for any graft command);
* the peak RSS of a ``graft add`` process.

Every run is warm-cache: dropping the page cache needs root, so instead the
folder is read once before every run. An untimed ``sync`` before every run
flushes the previous run's writes, so no run pays for another's writeback.
The operations run round-robin (one untimed warm-up round, then --repeats
rounds) so that a slow phase of the machine does not land on one operation.

The table goes to stdout; progress goes to stderr. MB means 10**6 bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common import cache_bytecode, graft_command, log, machine_line, print_table

MB = 1_000_000
SEED = 1234
VOCAB = 32_000
HEAD_DIM = 128
# Hidden sizes tried, largest first; the first that gives at least MIN_LAYERS wins.
HIDDEN_SIZES = (4096, 3072, 2560, 2048, 1536, 1024, 768, 512, 256)
MIN_LAYERS = 16

# Goals (see benchmarks/README.md).
GOAL_ADD_VS_CP = 0.8  # add throughput >= 0.8x cp -r
GOAL_READD_VS_CP = 3.0  # re-add >= 3x faster than cp -r
GOAL_RSS_MB = 300.0  # peak RSS of `graft add`


# -- the model -------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """A Llama-style architecture; sizes in elements."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int = VOCAB

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) in the order transformers writes a Llama checkpoint."""
        h, i, kv = self.hidden, self.intermediate, self.kv_heads * HEAD_DIM
        out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab, h))]
        for n in range(self.layers):
            p = f"model.layers.{n}."
            out += [
                (p + "self_attn.q_proj.weight", (h, h)),
                (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, h)),
                (p + "mlp.gate_proj.weight", (i, h)),
                (p + "mlp.up_proj.weight", (i, h)),
                (p + "mlp.down_proj.weight", (h, i)),
                (p + "input_layernorm.weight", (h,)),
                (p + "post_attention_layernorm.weight", (h,)),
            ]
        out += [("model.norm.weight", (h,)), ("lm_head.weight", (self.vocab, h))]
        return out

    def nbytes(self) -> int:
        return sum(2 * math.prod(s) for _, s in self.tensors())

    def config(self) -> dict[str, object]:
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "bos_token_id": 1,
            "eos_token_id": 2,
        }


def choose_shape(target_bytes: int) -> Shape:
    """A Llama-like shape whose bf16 size is close to `target_bytes`."""
    for hidden in HIDDEN_SIZES:
        intermediate = 256 * round(hidden * 8 / 3 / 256)  # Llama's ~2.7x MLP, 256-aligned
        heads = hidden // HEAD_DIM
        base = Shape(hidden, intermediate, 0, heads, heads)
        per_layer = Shape(hidden, intermediate, 1, heads, heads).nbytes() - base.nbytes()
        layers = round((target_bytes - base.nbytes()) / per_layer)
        if layers >= MIN_LAYERS or hidden == HIDDEN_SIZES[-1]:
            return Shape(hidden, intermediate, max(layers, 1), heads, heads)
    raise AssertionError("unreachable")


def generate_model(folder: Path, target_bytes: int) -> Shape:
    """Write config.json, 2-3 safetensors shards and the index into `folder`."""
    import torch
    from safetensors.torch import save_file

    shape = choose_shape(target_bytes)
    tensors = shape.tensors()
    n_shards = 3 if shape.nbytes() >= 512 * MB else 2
    per_shard = shape.nbytes() / n_shards
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[] for _ in range(n_shards)]
    filled = 0
    for name, dims in tensors:
        # Each tensor goes into the shard its starting byte falls in.
        shards[min(int(filled // per_shard), n_shards - 1)].append((name, dims))
        filled += 2 * math.prod(dims)

    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(SEED)
    weight_map: dict[str, str] = {}
    for k, members in enumerate(shards, start=1):
        file = f"model-{k:05d}-of-{n_shards:05d}.safetensors"
        data = {}
        for name, dims in members:
            if len(dims) == 1:
                data[name] = torch.ones(dims, dtype=torch.bfloat16)
            else:
                t = torch.empty(dims, dtype=torch.float32).normal_(0.0, 0.02, generator=gen)
                data[name] = t.to(torch.bfloat16)
            weight_map[name] = file
        save_file(data, str(folder / file), metadata={"format": "pt"})
        del data
        log(f"wrote {file} ({(folder / file).stat().st_size / MB:.0f} MB, {len(members)} tensors)")
    index = {"metadata": {"total_size": shape.nbytes()}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (folder / "config.json").write_text(json.dumps(shape.config(), indent=2) + "\n")
    return shape


# -- measuring -------------------------------------------------------------


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def warm_cache(folder: Path) -> None:
    """Read every file once so the timed runs all start from a warm page cache."""
    buf = bytearray(8 * 1024 * 1024)
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            with open(p, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass


def sync() -> None:
    subprocess.run(["sync"], check=True)


def run(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(
            f"bench: command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()}"
        )
    return proc


@dataclass
class Timed:
    """Wall and child-CPU seconds of each run of one operation."""

    label: str
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@dataclass(frozen=True)
class Op:
    """A measured operation: `body(i)` is timed; `cleanup(i)` removes what it wrote."""

    label: str
    body: Callable[[int], object]
    cleanup: Callable[[int], None]


def measure(ops: list[Op], repeats: int, model: Path) -> dict[str, Timed]:
    """Round-robin: one untimed warm-up round, then `repeats` timed rounds.

    Interleaving spreads slow phases of the machine over every operation
    instead of one group; before each run the previous output is removed, the
    page cache is flushed of dirty pages (sync) and the model is read again, so
    every run starts warm-cache and with nothing left to write back.
    """
    results = {op.label: Timed(op.label) for op in ops}
    for i in range(-1, repeats):
        for op in ops:
            sync()
            warm_cache(model)
            cpu0, t0 = children_cpu(), time.perf_counter()
            op.body(i)
            wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
            op.cleanup(i)
            if i < 0:
                log(f"{op.label} (warm-up): {wall:.3f} s")
                continue
            results[op.label].seconds.append(wall)
            results[op.label].cpu.append(cpu)
            log(f"{op.label} #{i + 1}: {wall:.3f} s wall, {cpu:.3f} s CPU")
    return results


def peak_rss_mb(cmd: Sequence[str]) -> tuple[float, str]:
    """Peak RSS of `cmd` in MB, and how it was measured."""
    gnu_time = Path("/usr/bin/time")
    if gnu_time.is_file():
        proc = subprocess.run([str(gnu_time), "-v", *cmd], capture_output=True, text=True)
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        if proc.returncode == 0 and m:
            return int(m.group(1)) * 1024 / MB, "/usr/bin/time -v"
    # Fallback: the rusage of this one child (wait4 reports ru_maxrss in KiB on Linux).
    p = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"bench: command failed: {' '.join(cmd)}")
    return usage.ru_maxrss * 1024 / MB, "wait4() ru_maxrss"


# -- main ------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="model size in MB (10**6 bytes)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per measurement (median quoted)")
    ap.add_argument("--workdir", type=Path, help="folder for the model, copies and stores")
    ap.add_argument("--graft", help="command that runs graft (default: the one beside python)")
    ap.add_argument("--keep", action="store_true", help="leave the work folder in place")
    ap.add_argument(
        "--pretouch-gb",
        type=float,
        default=16,
        help="touch this much memory once before measuring (0: skip); see touch_memory",
    )
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    cache_bytecode()

    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="graft-bench-", dir=args.workdir))
    touch_memory(args.pretouch_gb)
    graft = graft_command(args.graft)
    env_store = os.environ.pop("GRAFT_STORE", None)  # every command passes --store
    # The add itself is measured: a background repack would load the next rounds
    # (benchmarks/bench_storage.py times compaction).
    os.environ["GRAFT_REPACK"] = "off"
    try:
        return bench(work, args.size_mb * MB, args.repeats, graft)
    finally:
        if env_store is not None:
            os.environ["GRAFT_STORE"] = env_store
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def touch_memory(gb: float) -> None:
    """Write to `gb` GB of fresh memory once, in a child process that then exits.

    Virtual machines that back guest memory lazily (Firecracker, as here) make
    the first write to each guest page several times slower than later ones.
    Page-cache writes of whichever run first reaches untouched memory would
    pay for it, so touch it before anything is timed. Capped at what is free
    minus 4 GB.
    """
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    n = int(min(gb * 1e9, available - 4e9))
    if n <= 0:
        return
    log(f"touching {n / 1e9:.1f} GB of memory once")
    run([sys.executable, "-c", f"import torch; torch.ones({n}, dtype=torch.uint8)"])


def bench(work: Path, target_bytes: int, repeats: int, graft: list[str]) -> int:
    model = work / "model"
    log(f"generating a ~{target_bytes / MB:.0f} MB bf16 Llama-shaped model in {model}")
    shape = generate_model(model, target_bytes)
    size = folder_bytes(model)
    n_tensors = len(shape.tensors())
    files = sorted(p.name for p in model.iterdir())
    sync()

    def rm(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def add(store: Path) -> dict[str, object]:
        out = run([*graft, "--store", str(store), "add", str(model), "--json"]).stdout
        return json.loads(out)

    def cp_sync(i: int) -> None:
        run(["cp", "-r", str(model), str(work / f"cps-{i}")])
        sync()

    add_results: list[dict[str, object]] = []
    readd_results: list[dict[str, object]] = []
    warm_store = work / "store-warm"
    add(warm_store)  # the store every re-add finds the model in
    ops = [
        Op(
            "cp -r",
            lambda i: run(["cp", "-r", str(model), str(work / f"cp-{i}")]),
            lambda i: rm(work / f"cp-{i}"),
        ),
        Op("cp -r + sync", cp_sync, lambda i: rm(work / f"cps-{i}")),
        Op(
            "graft add (fresh store)",
            lambda i: add_results.append(add(work / f"store-{i}")),
            lambda i: rm(work / f"store-{i}"),
        ),
        Op(
            "graft add (re-add, unchanged)",
            lambda i: readd_results.append(add(warm_store)),
            lambda i: None,
        ),
        Op("graft --help (startup only)", lambda i: run([*graft, "--help"]), lambda i: None),
    ]
    timed = measure(ops, repeats, model)
    add_results, readd_results = add_results[1:], readd_results[1:]  # drop the warm-ups
    cp, cps, fresh, readd, startup = (timed[op.label] for op in ops)
    rm(warm_store)

    # (d) peak RSS of an add into a fresh store
    warm_cache(model)
    rss_values, rss_how = [], ""
    for i in range(repeats):
        store = work / f"rss-{i}"
        mb, rss_how = peak_rss_mb([*graft, "--store", str(store), "add", str(model), "--json"])
        rss_values.append(mb)
        rm(store)
        log(f"peak RSS #{i + 1}: {mb:.1f} MB")
    rss = statistics.median(rss_values)

    # checks that the runs did what they claim
    added_bytes = [int(r["bytes_new"]) for r in add_results]  # type: ignore[call-overload]
    readd_new = [int(r["bytes_new"]) for r in readd_results]  # type: ignore[call-overload]
    readd_existed = all(bool(r["existed"]) for r in readd_results)

    # -- the table ---------------------------------------------------------
    base = cp.median

    def row(t: Timed, goal: str = "", ok: bool | None = None, rate: bool = True) -> list[str]:
        return [
            t.label,
            f"{t.median:.3f}",
            f"{min(t.seconds):.3f}-{max(t.seconds):.3f}",
            f"{statistics.median(t.cpu):.3f}",
            f"{size / MB / t.median:.0f}" if rate else "",
            f"{base / t.median:.2f}x",
            f"{cps.median / t.median:.2f}x",
            goal,
            "" if ok is None else ("PASS" if ok else "FAIL"),
        ]

    add_ratio = base / fresh.median
    readd_ratio = base / readd.median
    rows = [
        row(cp, "baseline"),
        row(cps, "baseline 2"),
        row(fresh, f">= {GOAL_ADD_VS_CP}x cp", add_ratio >= GOAL_ADD_VS_CP),
        row(
            readd,
            f">= {GOAL_READD_VS_CP:g}x cp, 0 B new",
            readd_ratio >= GOAL_READD_VS_CP and readd_existed and not any(readd_new),
        ),
        row(startup, "(fixed cost)", rate=False),
        [
            "graft add peak RSS",
            f"{rss:.0f} MB",
            f"{min(rss_values):.0f}-{max(rss_values):.0f} MB",
            "",
            "",
            "",
            "",
            f"< {GOAL_RSS_MB:g} MB",
            "PASS" if rss < GOAL_RSS_MB else "FAIL",
        ],
    ]
    header = ["operation", "median s", "range s", "CPU s", "MB/s", "vs cp", "vs cp+sync"]
    header += ["goal", "result"]
    print(
        f"graft add benchmark: {size / MB:.1f} MB in {len(files)} files "
        f"({n_tensors} bf16 tensors; hidden {shape.hidden}, {shape.layers} layers, "
        f"MLP {shape.intermediate}, vocab {shape.vocab}), "
        f"median of {repeats} interleaved rounds after 1 warm-up round; warm page cache, "
        f"untimed sync before each run"
    )
    print_table(header, rows, numeric={1, 2, 3, 4, 5, 6})
    print(
        f"vs = baseline time / op time (higher is faster); CPU s = user+sys of the child "
        f"processes. Bytes new per add: "
        f"{sorted(set(added_bytes))}; per re-add: {sorted(set(readd_new))}. "
        f"Peak RSS via {rss_how}."
    )
    print(machine_line(work))
    failed = [r[0] for r in rows if r[-1] == "FAIL"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
