"""Work out what a path offered to `graft add` is, before anything is written.

Accepted: a single .safetensors file; a model folder (single file or shards
with model.safetensors.index.json); a PEFT adapter folder; a training output
folder (checkpoint-N/); a Hugging Face cache snapshot folder, or the
``models--org--name`` folder above it. Every check that can fail on the input
runs here or in the header parser, so a bad input never touches the store.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from graft.registry.errors import InvalidArtifact
from graft.registry.manifest import Kind
from graft.registry.safetensors_header import SafetensorsHeader, read_header

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Trainer state saved next to the weights: never read, never stored.
TRAINING_STATE = re.compile(
    r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|training_args\.bin|rng_state(_\d+)?\.pth)$"
)
# JSON companions graft interprets, so they must parse.
PARSED_JSON = ("config.json", "adapter_config.json")
CHECKPOINT_DIR = re.compile(r"^checkpoint-\d+$")


@dataclass(frozen=True)
class Source:
    """A validated input: its files (relative name → path) and what it looks like."""

    path: Path
    kind: Kind
    default_name: str
    weights: dict[str, SafetensorsHeader]
    companions: dict[str, Path]
    pickles: dict[str, Path]  # pickle weights with no safetensors twin
    skipped: tuple[str, ...]  # files left out, with the reason


def scan(path: Path) -> Source:
    """Classify and validate `path`; raise `InvalidArtifact` on the first defect."""
    if not path.exists():
        raise InvalidArtifact(f"{path}: no such file or folder", "check the path")
    path = _hf_snapshot(path)
    if path.is_file():
        return _scan_file(path)
    return _scan_folder(path)


def _scan_file(path: Path) -> Source:
    if path.suffix in PICKLE_SUFFIXES:
        return Source(path, "model", path.stem, {}, {}, {path.stem + ".safetensors": path}, ())
    if path.suffix != ".safetensors":
        raise InvalidArtifact(
            f"{path}: not a safetensors file", "add a .safetensors file or a model folder"
        )
    return Source(path, "model", path.stem, {path.name: read_header(path)}, {}, {}, ())


def _scan_folder(folder: Path) -> Source:
    weights: dict[str, SafetensorsHeader] = {}
    companions: dict[str, Path] = {}
    pickles: dict[str, Path] = {}
    skipped: list[str] = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if not p.is_file():
            skipped.append(f"{p.name}/ (sub-folder)")
        elif p.suffix == ".safetensors":
            weights[p.name] = read_header(p)
        elif TRAINING_STATE.match(p.name):
            skipped.append(f"{p.name} (trainer state, pickled)")
        elif p.suffix in PICKLE_SUFFIXES:
            pickles[_safetensors_name(p.name)] = p
        else:
            companions[p.name] = p
    for name in [n for n in pickles if n in weights]:
        skipped.append(f"{pickles.pop(name).name} (pickled twin of {name})")
    if not weights and not pickles:
        raise InvalidArtifact(
            f"{folder}: no weights found", "expected .safetensors files (or a model/adapter folder)"
        )
    for name in PARSED_JSON:
        if name in companions:
            _check_json(companions[name])
    _check_index(folder, companions, weights)
    _check_unique_tensors(weights)
    return Source(
        path=folder,
        kind=_kind(folder, companions),
        default_name=_default_name(folder),
        weights=weights,
        companions=companions,
        pickles=pickles,
        skipped=tuple(skipped),
    )


def _safetensors_name(pickle_name: str) -> str:
    """pytorch_model-00001-of-00002.bin → model-00001-of-00002.safetensors."""
    stem = pickle_name.rsplit(".", 1)[0]
    return stem.removeprefix("pytorch_") + ".safetensors"


def _kind(folder: Path, companions: dict[str, Path]) -> Kind:
    if "adapter_config.json" in companions:
        return "adapter"
    if "trainer_state.json" in companions or CHECKPOINT_DIR.match(folder.name):
        return "checkpoint"
    return "model"


def _default_name(folder: Path) -> str:
    if CHECKPOINT_DIR.match(folder.name):
        return f"{folder.parent.name}/{folder.name}"
    repo = folder.parent.parent.name  # .../models--org--name/snapshots/<revision>
    if folder.parent.name == "snapshots" and repo.startswith("models--"):
        return repo.removeprefix("models--").replace("--", "/")
    return folder.name


def _hf_snapshot(path: Path) -> Path:
    """Map a ``models--org--name`` cache folder to the snapshot its refs/main names."""
    ref = path / "refs" / "main"
    if path.is_dir() and path.name.startswith("models--") and ref.is_file():
        snapshot = path / "snapshots" / ref.read_text().strip()
        if snapshot.is_dir():
            return snapshot
        raise InvalidArtifact(f"{path}: refs/main names a snapshot that is not downloaded", "")
    return path


def _check_json(path: Path) -> None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidArtifact(f"{path}: not valid JSON ({e})", "fix or regenerate the file") from e


def _check_index(
    folder: Path, companions: dict[str, Path], weights: dict[str, SafetensorsHeader]
) -> None:
    """Every shard an index names exists and holds the tensors it is said to hold."""
    names = {file: {t.name for t in h.tensors} for file, h in weights.items()}
    for index_name in [n for n in companions if n.endswith(".safetensors.index.json")]:
        path = companions[index_name]
        _check_json(path)
        index = json.loads(path.read_text())
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise InvalidArtifact(f"{path}: no weight_map object", "fix or regenerate the index")
        for tensor, shard in sorted(weight_map.items()):
            if not isinstance(shard, str):
                raise InvalidArtifact(
                    f"{path}: weight_map entry of tensor {tensor!r} is not a file name",
                    "fix or regenerate the index",
                )
            if shard not in weights:
                raise InvalidArtifact(
                    f"{path}: shard {shard!r} (for tensor {tensor!r}) is not in {folder}",
                    "copy the missing shard or fix the index",
                )
            if tensor not in names[shard]:
                raise InvalidArtifact(
                    f"{path}: tensor {tensor!r} is not in shard {shard!r}",
                    "the index and the shards disagree; re-save the model",
                )


def _check_unique_tensors(weights: dict[str, SafetensorsHeader]) -> None:
    seen: dict[str, str] = {}
    for file, header in weights.items():
        for t in header.tensors:
            if t.name in seen:
                raise InvalidArtifact(
                    f"tensor {t.name!r} is in both {seen[t.name]} and {file}",
                    "remove the stray shard",
                )
            seen[t.name] = file
