"""Make the README's pictures: from the bundled samples (`graft demo`) and from a
real tiny training run (tests/training.py: a small Llama trained on CPU on
Python's standard library, with a checkpoint every 10 steps).

    .venv/bin/python docs/make_pictures.py      # writes docs/pictures/*.png
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "pictures"
sys.path.insert(0, str(ROOT))

from tests.training import make_run  # noqa: E402


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    graft = Path(sys.executable).parent / "graft"
    with tempfile.TemporaryDirectory(prefix="graft-pictures-") as tmp:
        env = {**os.environ, "GRAFT_STORE": f"{tmp}/store", "GRAFT_REPACK": "off"}

        def g(*args: str | Path) -> None:
            print("$ graft", *args, file=sys.stderr)
            subprocess.run([graft, *map(str, args)], env=env, check=True, stdout=subprocess.DEVNULL)

        g("demo")
        g("touched", "tiny-llama-sft", "--plot", OUT / "touched.png")
        g("touched", "--method", "lora", "--plot", OUT / "method.png")
        g("diff", "tiny-llama-sft", "demo-soup", "--plot", OUT / "diff.png")
        g("log", "demo-soup", "--plot", OUT / "log.png")
        run = Path(tmp) / "run"
        make_run(run, checkpoints=5, every=10, layers=4)
        g("add", run / "base", "--name", "run-base")
        parent = "run-base"
        for step in range(10, 60, 10):
            g("add", run / f"checkpoint-{step}", "--parent", parent, "--method", "sft")
            parent = f"run/checkpoint-{step}"
        g("touched", "--series", "run", "--plot", OUT / "series.png")
        g("report", "demo-soup", "-o", Path(tmp) / "report.html")
        chromium = shutil.which("chromium")
        if chromium:
            subprocess.run(
                [
                    chromium,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    f"--screenshot={OUT / 'report.png'}",
                    "--window-size=1000,1500",
                    (Path(tmp) / "report.html").as_uri(),
                ],
                check=True,
                capture_output=True,
            )
    print(f"wrote {', '.join(sorted(p.name for p in OUT.glob('*.png')))} in {OUT}")


if __name__ == "__main__":
    main()
