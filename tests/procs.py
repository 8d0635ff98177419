"""Helpers for tests that run `graft` as real processes (crash and concurrency)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

GRAFT = Path(sys.executable).parent / "graft"
TIMEOUT = 120  # seconds any one graft process may take


def graft_env(store: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GRAFT_LOCK_TIMEOUT"}
    return {**env, "GRAFT_STORE": str(store), **extra}


def graft(store: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run `graft ARGS` on `store` to completion."""
    return subprocess.run(
        [str(GRAFT), *map(str, args)],
        env=graft_env(store),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def graft_ok(store: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    result = graft(store, *args)
    assert result.returncode == 0, f"graft {' '.join(map(str, args))}: {result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def listed(store: Path) -> list[dict]:
    return json.loads(graft_ok(store, "ls", "--json").stdout)


def sha256_files(folder: Path) -> dict[str, str]:
    """sha256 of each file directly in `folder`, read in chunks."""
    out = {}
    for p in sorted(folder.iterdir()):
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        out[p.name] = h.hexdigest()
    return out


def blob_files(store: Path) -> list[Path]:
    blobs = store / "blobs"
    return sorted(blobs.glob("*/*")) if blobs.is_dir() else []
