"""How much disk graft's encoded blobs save, and what compaction costs, on a real training run.

A small Llama is trained on CPU on the bytes of Python's standard library
(tests/training.py, the same generator the tests use), then fine-tuned with
AdamW, saving a checkpoint every N steps, plus a second fine-tune of the base.
For the same folders, in one run:

- stored / raw bytes: graft after `graft repack`, against `zstd -3` of each file;
- `graft add` of every folder against `cp -r` + `sync` of the same folders;
- `graft repack` against one `zstd -1 -T2` pass over the same files (to files, + sync);
- `graft export` of the last checkpoint against `cp -r` + `sync` of its folder.

Times are medians of interleaved rounds. Usage:

    .venv/bin/python benchmarks/bench_storage.py [--hidden 256] [--layers 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import graft_command, log, machine_line, print_table
from tests.training import make_run, relative_change


def timed(cmd: list[str], **kw: object) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - start


def folder_bytes(folders: list[Path]) -> int:
    return sum(f.stat().st_size for d in folders for f in d.rglob("*") if f.is_file())


def zipnn_bytes(files: list[Path], dtype: str) -> tuple[int, bool] | None:
    """ZipNN's compressed size of each file (byte grouping + entropy coding, as
    its README uses it), and whether every file decompressed to its input;
    None when the benchmark-only `zipnn` package is not installed."""
    try:
        from zipnn import ZipNN
    except ImportError:
        return None
    codec = ZipNN(input_format="byte", bytearray_dtype=dtype)
    total, exact = 0, True
    for f in files:
        data = f.read_bytes()
        packed = codec.compress(data)
        total += len(packed)
        exact = exact and bytes(codec.decompress(packed)) == data
    return total, exact


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--pretrain-steps", type=int, default=200)
    ap.add_argument("--checkpoints", type=int, default=5)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument(
        "--lr",
        type=float,
        default=3e-5,
        help="fine-tuning learning rate (3e-5 moves each matrix ~3%% over 250 steps, as real SFT)",
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--graft")
    args = ap.parse_args()
    graft = graft_command(args.graft)
    work = Path(tempfile.mkdtemp(prefix="graft-bench-storage-"))
    try:
        run = work / "run"
        log(f"training a {args.layers}-layer, {args.hidden}-wide Llama on CPU ({args.dtype})")
        start = time.perf_counter()
        make_run(
            run,
            checkpoints=args.checkpoints,
            every=args.every,
            dtype=getattr(torch, args.dtype),
            hidden=args.hidden,
            layers=args.layers,
            pretrain_steps=args.pretrain_steps,
            lr=args.lr,
        )
        log(f"trained in {time.perf_counter() - start:.0f} s")
        steps = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        folders = [run / "base", *steps, run / "other"]
        parents = [None, run / "base", *steps[:-1], run / "base"]
        raw = folder_bytes(folders)
        drift = relative_change(run / "base", steps[-1])
        zstd3 = sum(
            len(subprocess.run(["zstd", "-3", "-q", "-c", f], capture_output=True).stdout)
            for d in folders
            for f in sorted(d.iterdir())
        )
        zipnn = zipnn_bytes([f for d in folders for f in sorted(d.iterdir())], args.dtype)
        times: dict[str, list[float]] = {
            k: [] for k in ("cp", "add", "zstd1", "repack", "cp1", "export")
        }
        stored = stored_ck = raw_ck = 0
        for r in range(args.rounds):
            log(f"round {r + 1} of {args.rounds}")
            copies, store = work / f"copies-{r}", work / f"store-{r}"
            copies.mkdir()
            times["cp"].append(
                timed(["sh", "-c", f"cp -r {' '.join(map(str, folders))} {copies} && sync"])
            )
            env = {"GRAFT_STORE": str(store), "PATH": "/usr/bin:/bin", "GRAFT_REPACK": "off"}
            start = time.perf_counter()
            for folder, parent in zip(folders, parents, strict=True):
                extra = ["--parent", parent.name] if parent else []
                subprocess.run(
                    [*graft, "add", folder, "--name", folder.name, *extra],
                    check=True,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            subprocess.run(["sync"], check=True)
            times["add"].append(time.perf_counter() - start)
            files = [f for d in folders for f in sorted(d.iterdir())]
            zdir = work / f"zstd-{r}"
            zdir.mkdir()
            times["zstd1"].append(
                timed(
                    [
                        "sh",
                        "-c",
                        f"zstd -1 -T2 -q --output-dir-mirror {zdir} "
                        f"{' '.join(map(str, files))} && sync",
                    ]
                )
            )
            times["repack"].append(timed([*graft, "repack"], env=env, stderr=subprocess.DEVNULL))
            last = steps[-1]
            times["cp1"].append(timed(["sh", "-c", f"cp -r {last} {work}/cp1-{r} && sync"]))
            times["export"].append(
                timed(
                    [*graft, "export", last.name, work / f"export-{r}"],
                    env=env,
                    stderr=subprocess.DEVNULL,
                )
            )
            du = json.loads(
                subprocess.run(
                    [*graft, "du", "--json"], env=env, check=True, capture_output=True
                ).stdout
            )
            stored = du["stored_bytes"]
            [base] = [a for a in du["artifacts"] if a["ref"] == "base@1"]
            ck = [a for a in du["artifacts"] if a["ref"].startswith("checkpoint-")]
            raw_ck, stored_ck = sum(a["raw_bytes"] for a in ck), sum(a["stored_bytes"] for a in ck)
            for p in (copies, zdir, work / f"cp1-{r}", work / f"export-{r}"):
                shutil.rmtree(p)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(
            f"graft storage benchmark: base + {len(steps)} {args.dtype} checkpoints (every "
            f"{args.every} AdamW steps at lr {args.lr:g}; median relative change of a matrix "
            f"from base to the last: {drift:.1%}) + a second child, {raw / 1e6:.1f} MB raw; "
            f"median of {args.rounds} interleaved rounds"
        )
        print_table(
            ["what", "graft", "baseline", "ratio"],
            [
                [
                    f"stored / raw, all {len(folders)} folders",
                    f"{stored / raw:.3f}",
                    f"zstd -3: {zstd3 / raw:.3f}",
                    f"{stored / zstd3:.2f}x zstd",
                ],
                ["", "", *_zipnn_cells(zipnn, raw, stored)],
                ["stored / raw, checkpoints only", f"{stored_ck / raw_ck:.3f}", "", ""],
                [
                    "stored / raw, base only (solo)",
                    f"{base['stored_bytes'] / base['raw_bytes']:.3f}",
                    "",
                    "",
                ],
                [
                    "add all folders (s)",
                    f"{med['add']:.2f}",
                    f"cp -r+sync: {med['cp']:.2f}",
                    f"{med['add'] / med['cp']:.2f}x",
                ],
                [
                    "repack (s)",
                    f"{med['repack']:.2f}",
                    f"zstd -1 -T2: {med['zstd1']:.2f}",
                    f"{med['repack'] / med['zstd1']:.2f}x",
                ],
                [
                    "export last checkpoint (s)",
                    f"{med['export']:.2f}",
                    f"cp -r+sync: {med['cp1']:.2f}",
                    f"{med['export'] / med['cp1']:.2f}x",
                ],
            ],
            numeric=set(),
        )
        print(machine_line(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _zipnn_cells(zipnn: tuple[int, bool] | None, raw: int, stored: int) -> list[str]:
    if zipnn is None:
        return ["ZipNN: not installed", ""]
    size, exact = zipnn
    return [
        f"ZipNN: {size / raw:.3f}" + ("" if exact else " (did not round-trip)"),
        f"{stored / size:.2f}x ZipNN",
    ]


if __name__ == "__main__":
    main()
