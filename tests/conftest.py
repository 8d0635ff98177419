"""Shared fixtures: an isolated store per test and generated tiny models."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import save_file

from graft.registry import Store
from graft.tui.cli import cli

SAMPLES = Path(__file__).resolve().parent.parent / "sample_artifacts"


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """The event loop for the TUI's async tests (`pytest.mark.anyio`)."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    # No background repacks unless a test asks; GRAFT_TEST_REPACK=inline runs the
    # whole suite on compacted stores (every add repacks before it returns).
    monkeypatch.setenv("GRAFT_REPACK", os.environ.get("GRAFT_TEST_REPACK", "off"))


@pytest.fixture
def store_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "store"
    monkeypatch.setenv("GRAFT_STORE", str(path))
    return path


@pytest.fixture
def store(store_dir: Path) -> Store:
    return Store.open(store_dir)


@pytest.fixture
def graft(store_dir: Path) -> Callable[..., Result]:
    """Run the CLI in-process on the test's store; returns click's Result."""

    def run(*args: str | Path, code: int = 0) -> Result:
        result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == code, (result.stdout, result.stderr)
        return result

    return run


def graft_json(graft: Callable[..., Result], *args: str | Path) -> object:
    return json.loads(graft(*args, "--json").stdout)


def make_model(folder: Path, *, seed: int = 0, layers: int = 2, dim: int = 16) -> Path:
    """A small Llama-named model folder: model.safetensors + config.json."""
    g = torch.Generator().manual_seed(seed)
    tensors = {"model.embed_tokens.weight": torch.randn(32, dim, generator=g)}
    for i in range(layers):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            tensors[f"model.layers.{i}.self_attn.{proj}.weight"] = torch.randn(
                dim, dim, generator=g
            )
        tensors[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(dim)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(
        json.dumps({"model_type": "llama", "num_hidden_layers": layers})
    )
    return folder


def sha256_tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def tree_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
