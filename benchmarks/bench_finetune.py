"""graft on a ~1 GB bf16 base and a fine-tune of it: add, re-add, repack, export, merge.

The time goals of the storage issue, each against a baseline measured in the
same run on the same disk:

* `graft add base` then `graft add ft --parent base` (each until it returns with
  the artifact durably registered) against `cp -r` of both folders + `sync`;
  the deltas an add leaves for later (its background job) are timed on their
  own, as the first `graft touched ft`, which records them;
* re-adding both (unchanged) against the same copy;
* `graft repack` of the two against one `zstd -1 -T2` pass over the same files
  (to files, + `sync`);
* `graft export` of the fine-tune from the compacted store against `cp -r` of
  its folder + `sync`;
* a TIES merge of two fine-tunes onto the base read from the compacted store
  against the same merge read from the raw folders;
* the peak RSS of each graft command (`/usr/bin/time -v`).

The models are real optimizer output, not noise (whose bits decode, and
compress, nothing like a fine-tune's): a Llama-shaped bf16 base as
transformers initializes it, and two fine-tunes of it, FT_STEPS AdamW steps
each on the bytes of Python's standard library, on the CPU (~10 GB of RAM
and a few minutes; `--models DIR` keeps them for the next run). The base is
untrained, so what compaction saves on a trained one is measured by
bench_storage.py.

    .venv/bin/python benchmarks/bench_finetune.py [--size-mb 1024] [--rounds 3] [--models DIR]
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
from collections.abc import Callable
from pathlib import Path

import yaml
from bench_add import MB, choose_shape, peak_rss_mb, sync, touch_memory, warm_cache
from common import cache_bytecode, graft_command, log, machine_line, print_table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.training import relative_change, save_model, stdlib_bytes, train_steps

FT_STEPS = 10  # AdamW steps of each fine-tune: a median matrix moves ~2% (printed)
FT_LR = 1e-4
BATCH = 4  # windows of 65 bytes a step
SEED = 4321
GOALS = {"add": 1.25, "readd": 0.33, "repack": 1.0, "export": 1.5, "merge": 1.15}
GOAL_RSS_MB = 400


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--graft")
    ap.add_argument("--models", type=Path, help="Train the models here, or reuse them.")
    args = ap.parse_args()
    graft = graft_command(args.graft)
    work = Path(tempfile.mkdtemp(prefix="graft-bench-ft-", dir=args.workdir))
    os.environ.pop("GRAFT_STORE", None)  # every command names its store
    os.environ["GRAFT_REPACK"] = "off"  # repack is timed on its own
    touch_memory(16)
    cache_bytecode()
    try:
        models = train_models(args.models or work / "models", args.size_mb * MB)
        bench(work, models, args.rounds, graft)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def train_models(folder: Path, target: int) -> tuple[Path, Path, Path]:
    """base, ft and ft2 in `folder`, trained there unless a finished set is."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = choose_shape(target)
    models = base, ft, ft2 = folder / "base", folder / "ft", folder / "ft2"
    made = {**shape.config(), "steps": FT_STEPS, "lr": FT_LR, "batch": BATCH, "seed": SEED}
    marker = folder / ".complete"
    if marker.is_file() and json.loads(marker.read_text()) == made:
        log(f"reusing the models in {folder}")
        return models
    marker.unlink(missing_ok=True)
    for model in models:  # only what this function writes: --models may name any folder
        shutil.rmtree(model, ignore_errors=True)
    torch.manual_seed(SEED)
    described = ("architectures", "model_type", "torch_dtype")
    config = {k: v for k, v in shape.config().items() if k not in described}
    model = LlamaForCausalLM(LlamaConfig(**config))
    log(f"training two fine-tunes of a {shape.nbytes() / MB:.0f} MB model on the CPU")
    start = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    model.load_state_dict(start)  # the fine-tunes start from the base's bf16 values exactly
    save_model(model, base, torch.bfloat16)
    data = stdlib_bytes()
    for out, seed in ((ft, 1), (ft2, 2)):
        model.load_state_dict(start)
        for step, loss in train_steps(model, data, FT_STEPS, FT_LR, seed, batch=BATCH):
            log(f"{out.name} step {step}: loss {loss:.3f}")
        save_model(model, out, torch.bfloat16)
    marker.write_text(json.dumps(made))
    return models


def bench(work: Path, models: tuple[Path, Path, Path], rounds: int, graft: list[str]) -> None:
    base, ft, ft2 = models
    drift = relative_change(base, ft)
    files = [f for d in (base, ft) for f in sorted(d.iterdir())]
    raw = sum(f.stat().st_size for f in files)

    def g(store: Path, *args: str | Path) -> None:
        subprocess.run(
            [*graft, "--store", str(store), *map(str, args)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def add_both(store: Path) -> None:
        g(store, "add", base, "--name", "base")
        g(store, "add", ft, "--name", "ft", "--parent", "base")

    def merge_config(path: Path, refs: list[str | Path]) -> Path:
        config = {
            "merge_method": "ties",
            "base_model": str(refs[0]),
            "models": [
                {"model": str(r), "parameters": {"weight": 0.5, "density": 0.5}} for r in refs[1:]
            ],
            "dtype": "bfloat16",
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    packed = work / "packed"  # a compacted store holding all three, for export and merge
    add_both(packed)
    g(packed, "add", ft2, "--name", "ft2", "--parent", "base")
    g(packed, "repack")
    from_store = merge_config(work / "store.yaml", ["base", "ft", "ft2"])
    from_folders = merge_config(work / "folders.yaml", [base, ft, ft2])
    readd_store = work / "readd"
    add_both(readd_store)

    def rm(*paths: Path) -> None:
        for p in paths:
            shutil.rmtree(p, ignore_errors=True)

    steps: list[tuple[str, Callable[[int], object], Callable[[int], None]]] = [
        (
            "cp",
            lambda i: subprocess.run(
                f"cp -r {base} {work}/cp-b-{i} && cp -r {ft} {work}/cp-f-{i} && sync",
                shell=True,
                check=True,
            ),
            lambda i: rm(work / f"cp-b-{i}", work / f"cp-f-{i}"),
        ),
        ("add", lambda i: (add_both(work / f"s-{i}"), sync()), lambda i: None),
        ("deltas", lambda i: g(work / f"s-{i}", "touched", "ft"), lambda i: None),
        ("readd", lambda i: add_both(readd_store), lambda i: None),
        (
            "zstd",
            lambda i: subprocess.run(
                [
                    "sh",
                    "-c",
                    f"zstd -1 -T2 -q --output-dir-mirror {work}/z-{i} "
                    + " ".join(map(str, files))
                    + " && sync",
                ],
                check=True,
            ),
            lambda i: rm(work / f"z-{i}"),
        ),
        ("repack", lambda i: g(work / f"s-{i}", "repack"), lambda i: rm(work / f"s-{i}")),
        (
            "cp1",
            lambda i: subprocess.run(f"cp -r {ft} {work}/cp1-{i} && sync", shell=True, check=True),
            lambda i: rm(work / f"cp1-{i}"),
        ),
        (
            "export",
            lambda i: (g(packed, "export", "ft", work / f"e-{i}"), sync()),
            lambda i: rm(work / f"e-{i}"),
        ),
        (
            "merge raw",
            lambda i: g(packed, "merge", from_folders, "--out", work / f"m-{i}", "--no-register"),
            lambda i: rm(work / f"m-{i}"),
        ),
        (
            "merge packed",
            lambda i: g(packed, "merge", from_store, "--out", work / f"n-{i}", "--no-register"),
            lambda i: rm(work / f"n-{i}"),
        ),
    ]
    times: dict[str, list[float]] = {name: [] for name, _, _ in steps}
    for r in range(-1, rounds):  # round -1 warms up
        for name, body, cleanup in steps:
            sync()
            warm_cache(base)
            warm_cache(ft)
            start = time.perf_counter()
            body(r)
            took = time.perf_counter() - start
            log(f"round {r + 1}: {name} {took:.2f} s")
            if r >= 0:
                times[name].append(took)
            cleanup(r)  # the add's store stays for the repack, which removes it
    med = {k: statistics.median(v) for k, v in times.items()}

    du = json.loads(
        subprocess.run(
            [*graft, "--store", str(packed), "du", "--json"], check=True, capture_output=True
        ).stdout
    )
    rss = {
        "add base": peak_rss_mb([*graft, "--store", str(work / "rss"), "add", str(base)])[0],
        "add ft --parent": peak_rss_mb(
            [*graft, "--store", str(work / "rss"), "add", str(ft), "--parent", "base"]
        )[0],
        "deltas": peak_rss_mb([*graft, "--store", str(work / "rss"), "touched", ft.name])[0],
        "repack": peak_rss_mb([*graft, "--store", str(work / "rss"), "repack"])[0],
        "export": peak_rss_mb([*graft, "--store", str(packed), "export", "ft", str(work / "x")])[0],
        "merge (ties, packed)": peak_rss_mb(
            [
                *graft,
                "--store",
                str(packed),
                "merge",
                str(from_store),
                "--out",
                str(work / "y"),
                "--no-register",
            ]
        )[0],
    }

    def row(what: str, key: str, base_key: str, base_label: str, goal: str | None) -> list[str]:
        ratio = med[key] / med[base_key]
        return [
            what,
            f"{med[key]:.2f}",
            f"{base_label}: {med[base_key]:.2f}",
            f"{ratio:.2f}x",
            f"<= {GOALS[goal]:g}x" if goal else "-",
            ("PASS" if ratio <= GOALS[goal] else "FAIL") if goal else "-",
        ]

    print(
        f"graft on a {raw / 2 / MB:.0f} MB bf16 base and a fine-tune of it ({FT_STEPS} AdamW "
        f"steps at lr {FT_LR:g} on real text; a median matrix moved {drift:.1%}); median of "
        f"{rounds} interleaved rounds, warm page cache, untimed sync before each run"
    )
    print_table(
        ["what", "graft s", "baseline s", "ratio", "goal", "result"],
        [
            row("add base + add ft --parent", "add", "cp", "cp -r both + sync", "add"),
            row("re-add both (unchanged)", "readd", "cp", "cp -r both + sync", "readd"),
            row("ft's deltas (first touched)", "deltas", "cp", "cp -r both + sync", None),
            row("repack both", "repack", "zstd", "zstd -1 -T2 + sync", "repack"),
            row("export ft (compacted)", "export", "cp1", "cp -r ft + sync", "export"),
            row("ties merge from the store", "merge packed", "merge raw", "from folders", "merge"),
        ],
        numeric={1, 3},
    )
    print(
        f"stored / raw of the compacted store (base + 2 fine-tunes): "
        f"{du['stored_bytes'] / du['raw_bytes']:.3f} (an untrained base; see bench_storage.py)"
    )
    print(
        "peak RSS: "
        + ", ".join(
            f"{k} {v:.0f} MB{'' if v < GOAL_RSS_MB else ' (over ' + str(GOAL_RSS_MB) + ')'}"
            for k, v in rss.items()
        )
    )
    print(machine_line(work))


if __name__ == "__main__":
    main()
