"""What the benchmark scripts share: logging, finding graft, describing the machine."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def graft_command(arg: str | None) -> list[str]:
    """`--graft` split into words, else the graft beside this Python, else on PATH."""
    if arg:
        return arg.split()
    beside = Path(sys.executable).parent / "graft"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("graft")
    if found:
        return [found]
    return [sys.executable, "-c", "from graft.tui.cli import main; main()"]


def cache_bytecode() -> None:
    """Time graft as installed, its bytecode compiled once and kept (pip compiles
    at install), not compiled anew by each command where the environment sets
    PYTHONDONTWRITEBYTECODE."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    # graft/ links to the subpackages; the samples' generate.py is no module of graft's
    # (and a __pycache__ there would end up in the wheel)
    package = Path(__file__).resolve().parents[1] / "graft"
    compile_all = [sys.executable, "-m", "compileall", "-q", "-x", "sample_artifacts"]
    subprocess.run([*compile_all, str(package)], check=True)


def machine_line(workdir: Path, *, extra: str = "") -> str:
    """CPUs, RAM, the work folder's file system, Python (and `extra`), kernel, date."""
    cpu, ram = "unknown CPU", "? GB RAM"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) * 1024 / 1e9:.1f} GB RAM"
                break
    fs = "?"
    for cmd in (["findmnt", "-n", "-o", "FSTYPE", "-T"], ["stat", "-f", "-c", "%T"]):
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            fs = subprocess.run(
                [*cmd, str(workdir)], capture_output=True, text=True, check=True
            ).stdout.strip()
            break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"machine: {usable} CPUs usable of {os.cpu_count()} ({cpu}), {ram}, workdir fs {fs}; "
        f"Python {platform.python_version()}{extra} on {platform.system()} {platform.release()}; "
        f"{dt.datetime.now().astimezone().isoformat(timespec='seconds')}"
    )


def print_table(header: list[str], rows: list[list[str]], numeric: set[int]) -> None:
    """Aligned columns on stdout; the columns in `numeric` right-aligned."""
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]

    def fmt(r: list[str]) -> str:
        cells = [r[c].rjust(w) if c in numeric else r[c].ljust(w) for c, w in enumerate(widths)]
        return "  ".join(cells).rstrip()

    print(fmt(header))
    print(fmt(["-" * w for w in widths]))
    for r in rows:
        print(fmt(r))
