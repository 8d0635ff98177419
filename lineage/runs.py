"""A trainer's output folder (its `output_dir`): the checkpoint-N folders inside,
in step order, registered as one chain."""

from __future__ import annotations

import re
from pathlib import Path

from graft.registry import Store
from graft.registry.sources import CHECKPOINT_DIR

CHECKPOINT_NAME = re.compile(r"(?P<run>.+)/checkpoint-(?P<step>\d+)")


def checkpoints_in(folder: Path) -> list[Path]:
    """The checkpoint-N folders directly inside `folder`, in step order."""
    if not folder.is_dir():
        return []
    steps = [
        (int(p.name.removeprefix("checkpoint-")), p)
        for p in folder.iterdir()
        if p.is_dir() and CHECKPOINT_DIR.match(p.name)
    ]
    return [p for _, p in sorted(steps)]


def has_weights(folder: Path) -> bool:
    """Whether `folder` holds weights of its own (a final model saved at the root)."""
    return any(p.is_file() and p.suffix == ".safetensors" for p in folder.iterdir())


def run_of(name: str) -> str | None:
    """RUN, for an artifact named RUN/checkpoint-N (a checkpoint of a run)."""
    found = CHECKPOINT_NAME.fullmatch(name)
    return found["run"] if found else None


def checkpoint_name(path: Path, name: str | None) -> str | None:
    """RUN/checkpoint-N, when that is what `path` (named `name`) is registered as."""
    name = name or (f"{path.parent.name}/{path.name}" if path.parent.name else path.name)
    return name if CHECKPOINT_NAME.fullmatch(name) else None


def previous_checkpoint(store: Store, name: str) -> str | None:
    """The id of the latest registered RUN/checkpoint-M with M < N, for RUN/checkpoint-N."""
    found = CHECKPOINT_NAME.fullmatch(name)
    if found is None:
        return None
    run, step = found["run"], int(found["step"])
    with store.catalog.reading() as con:
        rows = con.execute(
            "SELECT id, name, version FROM artifacts WHERE starts_with(name, ?) AND remote IS NULL",
            [run + "/checkpoint-"],
        ).fetchall()
    earlier = [
        (int(m["step"]), version, artifact_id)
        for artifact_id, other, version in rows
        if (m := CHECKPOINT_NAME.fullmatch(other)) and m["run"] == run and int(m["step"]) < step
    ]
    return max(earlier)[2] if earlier else None
