"""The installed package: one top-level name, `graft`, that lives beside PyPI's look-alikes.

The wheel is built from a copy of the checkout (nothing is written into the
working tree) and installed into a fresh virtual environment with its
dependencies from the package index, torch's CPU build first as the README
says. PyPI's `lineage` (genetics; its wheel installs a top-level `lineage`)
then goes in beside it, and both programs must still work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = ("registry", "lineage", "merge", "tui")
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command; on failure the assertion shows its output."""
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=NOT_SOURCE)
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "-q",
        "-w",
        work / "dist",
        source,
        cwd=work,
    )
    [built] = (work / "dist").glob("*.whl")
    return built


def _source_files(pattern: str) -> set[str]:
    """Files of the four subpackages as the wheel should hold them (graft/<path>)."""
    found = set()
    for package in SUBPACKAGES:
        for path in (ROOT / package).rglob(pattern):
            if "__pycache__" not in path.parts:
                found.add("graft/" + path.relative_to(ROOT).as_posix())
    return found


def test_the_wheel_installs_one_top_level_name(wheel: Path) -> None:
    assert wheel.name.startswith("graft_lineage-")  # the distribution name free on PyPI
    names = zipfile.ZipFile(wheel).namelist()
    installed = [n for n in names if ".dist-info/" not in n]
    assert {n.split("/")[0] for n in installed} == {"graft"}
    assert not any(n.endswith(".pth") for n in names)  # nothing that extends sys.path
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    )
    assert b"graft = graft.tui.cli:main" in entry_points


def test_the_wheel_holds_every_subpackage_module_and_stylesheet(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = _source_files("*.py")
    subpackages = {f"graft/{p}/__init__.py" for p in (*SUBPACKAGES, "tui/screens", "tui/widgets")}
    assert subpackages <= modules and "graft/registry/store.py" in modules
    assert modules | {"graft/__init__.py"} <= names
    stylesheets = _source_files("*.tcss")
    assert len(stylesheets) >= 4 and stylesheets <= names


def test_the_wheel_ships_the_demo_samples(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    samples = {
        "graft/" + p.relative_to(ROOT).as_posix()
        for p in (ROOT / "sample_artifacts").glob("*/*")
        if p.is_file()
    }
    assert "graft/sample_artifacts/tiny-llama/model.safetensors" in samples
    assert samples <= names


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel and its dependencies, and nothing else."""
    path = tmp_path_factory.mktemp("venv") / "v"
    _run(sys.executable, "-m", "venv", path, cwd=path.parent)
    pip = (path / "bin" / "python", "-m", "pip", "install", "-q")
    _run(*pip, "torch==2.13.0", cwd=path.parent)  # the CPU build, so no CUDA wheels come
    _run(*pip, wheel, cwd=path.parent)
    return path


def _clean_env(tmp: Path) -> dict[str, str]:
    """No PYTHONPATH or checkout on the path: only what the venv holds can be imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return {**env, "GRAFT_STORE": str(tmp / "store"), "HF_HUB_OFFLINE": "1"}


def test_graft_help_runs_from_the_wheel_alone(venv: Path, tmp_path: Path) -> None:
    env = _clean_env(tmp_path)
    python = venv / "bin/python"
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(_run(python, "-c", purelib, cwd=tmp_path, env=env).strip())
    assert not (site / "lineage").exists()  # nothing installed beside graft yet
    assert not any((site / name).exists() for name in SUBPACKAGES)
    shown = _run(venv / "bin/graft", "--help", cwd=tmp_path, env=env)
    assert "Usage: graft [OPTIONS] COMMAND" in shown and "demo" in shown
    where = _run(
        python, "-c", "import graft.tui.app as a; print(a.__file__)", cwd=tmp_path, env=env
    )
    assert Path(where.strip()).is_relative_to(site)  # the installed copy, not the checkout


def test_graft_demo_runs_beside_pypi_lineage(venv: Path, tmp_path: Path) -> None:
    env = _clean_env(tmp_path)
    _run(venv / "bin/python", "-m", "pip", "install", "-q", "lineage==4.5.0", cwd=tmp_path)
    shown = _run(venv / "bin/graft", "demo", cwd=tmp_path, env=env)
    assert "$ graft add tiny-llama-sft  → tiny-llama-sft@1 (model" in shown
    assert "→ demo-soup@1: 39 tensors" in shown
    assert (tmp_path / "store").is_dir()
    # ...and the other `lineage` is still the one `import lineage` finds, and it works.
    genetics = "import lineage; from lineage import Lineage; print(lineage.__file__)"
    where = _run(venv / "bin/python", "-c", genetics, cwd=tmp_path, env=env)
    assert f"{os.sep}site-packages{os.sep}lineage{os.sep}__init__.py" in where
