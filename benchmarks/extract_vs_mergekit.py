"""Benchmark `graft extract` against mergekit-extract-lora 0.1.5 on the generated
bf16 Llama-shaped models of merge_vs_mergekit.py (a base and a fine-tune of it).

Usage::

    bash .ci/setup-mergekit           # once: the mergekit venv (.venv-mergekit)
    python benchmarks/extract_vs_mergekit.py [--size-gb 1.0] [--repeats 2] [--rank 16]

Each round runs, one after the other (interleaved rounds, warm page cache, no
dirty pages),

* ``graft extract FT --base BASE --rank R --out DIR --no-register``, and
* ``mergekit-extract-lora --model FT --base-model BASE --max-rank R
  --out-path DIR -e '(embed_tokens|lm_head)'`` (graft leaves the embeddings
  and the head out unless ``--embeddings``),

measuring each child's wall time and peak RSS (``os.wait4``, in a launcher).
Both do a full SVD of every linear weight's change. The table goes to stdout
with the medians and graft / mergekit ratios; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench_add import sync, touch_memory, warm_cache
from common import graft_command, log, machine_line, print_table
from merge_vs_mergekit import GB, MB, REPO, SEED, RunResult, generate_models, run_child

MERGEKIT_EXTRACT = REPO / ".venv-mergekit" / "bin" / "mergekit-extract-lora"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=1.0, help="size of each model, in GB")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds (median quoted)")
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank")
    ap.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "graft-merge-bench",
        help="folder for the models (kept and reused) and outputs",
    )
    ap.add_argument("--graft", help="command that runs graft (default: the one beside python)")
    ap.add_argument("--pretouch-gb", type=float, default=16, help="see bench_add (0: skip)")
    args = ap.parse_args(argv)
    if not MERGEKIT_EXTRACT.exists():
        ap.error(f"{MERGEKIT_EXTRACT} not found: run `bash .ci/setup-mergekit` first")
    args.workdir.mkdir(parents=True, exist_ok=True)
    target = int(args.size_gb * GB)
    models = generate_models(args.workdir / f"models-{target // MB}MB-seed{SEED}", target)
    base, tuned = models.base, models.finetunes[0]
    run_dir = Path(tempfile.mkdtemp(prefix="extract-", dir=args.workdir))
    touch_memory(args.pretouch_gb)
    env = {"GRAFT_STORE": str(run_dir / "store"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    commands = {
        "graft": [
            *graft_command(args.graft),
            "extract",
            str(tuned),
            "--base",
            str(base),
            "--rank",
            str(args.rank),
            "--no-register",
            "--out",
        ],
        "mergekit": [
            str(MERGEKIT_EXTRACT),
            "--model",
            str(tuned),
            "--base-model",
            str(base),
            "--max-rank",
            str(args.rank),
            "-e",
            "(embed_tokens|lm_head)",
            "--out-path",
        ],
    }
    runs: dict[str, list[RunResult]] = {tool: [] for tool in commands}
    try:
        for round_ in range(args.repeats):
            for tool, command in commands.items():
                out = run_dir / f"{tool}-{round_}"
                sync()
                warm_cache(base)
                warm_cache(tuned)
                log(f"round {round_ + 1}: {tool}")
                result = run_child([*command, str(out)], env, run_dir / f"{tool}-{round_}.err")
                if result.returncode != 0:
                    sys.stderr.write(result.stderr[-2000:])
                    raise SystemExit(f"bench: {tool} failed (exit {result.returncode})")
                runs[tool].append(result)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    seconds = {t: statistics.median(r.seconds for r in rs) for t, rs in runs.items()}
    rss = {t: statistics.median(r.rss_mb for r in rs) for t, rs in runs.items()}
    print(machine_line(args.workdir, extra=f"; models {models.shape.nbytes() / GB:.2f} GB bf16"))
    print(f"graft extract vs mergekit-extract-lora, rank {args.rank}, {args.repeats} rounds")
    rows = [[tool, f"{seconds[tool]:.1f}", f"{rss[tool]:.0f}"] for tool in commands]
    rows.append(
        [
            "graft / mergekit",
            f"{seconds['graft'] / seconds['mergekit']:.2f}x",
            f"{rss['graft'] / rss['mergekit']:.2f}x",
        ]
    )
    print_table(["tool", "median s", "peak RSS MB"], rows, numeric={1, 2})
    return 0


if __name__ == "__main__":
    sys.exit(main())
