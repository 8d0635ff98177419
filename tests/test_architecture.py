"""Project-wide contracts: import direction, exit codes, help text, README coverage."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import graft
from graft.registry import ExitCode
from graft.tui.cli import cli

ROOT = Path(__file__).resolve().parent.parent
FRONT_END_MODULES = ("graft.tui", "textual", "rich", "click")


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("graft.registry", ("graft.lineage", "graft.merge", *FRONT_END_MODULES)),
        ("graft.lineage", ("graft.merge", *FRONT_END_MODULES)),
        ("graft.merge", FRONT_END_MODULES),
    ],
)
def test_core_packages_never_import_front_ends(package, forbidden):
    code = (
        f"import sys, json, importlib, pkgutil; import {package}\n"
        f"for m in pkgutil.walk_packages({package}.__path__, '{package}.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    loaded = json.loads(subprocess.check_output([sys.executable, "-c", code], cwd=ROOT))
    assert any(m.startswith(f"{package}.") for m in loaded)  # the walk found the modules
    leaked = [m for m in loaded if any(m == f or m.startswith(f"{f}.") for f in forbidden)]
    assert leaked == []


def test_exit_codes_are_pinned():
    assert {c.name: c.value for c in ExitCode} == {
        "OK": 0,
        "ERROR": 1,
        "USAGE": 2,
        "INTEGRITY": 3,
        "INTERRUPTED": 130,
    }


def test_every_command_has_help_and_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    assert cli.commands, "no commands registered"
    for name, command in cli.commands.items():
        assert command.help and len(command.help) > 20, name
        assert f"graft {name}" in readme, f"`graft {name}` is not in README.md"
        for param in command.params:
            if param.param_type_name == "option":
                assert getattr(param, "help", None), f"graft {name} {param.opts[0]} has no help"


def test_usage_error_exits_2_without_traceback(tmp_path):
    graft = Path(sys.executable).parent / "graft"
    result = subprocess.run(
        [graft, "add"], capture_output=True, text=True, env={"GRAFT_STORE": str(tmp_path / "s")}
    )
    assert result.returncode == ExitCode.USAGE
    assert "Traceback" not in result.stderr and "Missing argument 'PATH...'" in result.stderr


def test_the_cli_starts_without_importing_torch_or_numpy():
    """torch costs a second per command, numpy ~50 ms, matplotlib ~300 ms: only
    computing deltas, merging, encoding or decoding blobs and drawing need them."""
    heavy = ("torch", "numpy", "zstandard", "matplotlib", "networkx")
    code = (
        "import sys, graft.tui.cli, graft.lineage, graft.registry.repack; "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    loaded = subprocess.check_output([sys.executable, "-c", code], cwd=ROOT, text=True).strip()
    assert loaded == "[]"


OLD_NAMES = ("registry", "lineage", "merge", "tui")  # importable only as graft.<name>
# An import statement written in text: README code, or code a test runs in a child process.
OLD_IMPORT_TEXT = re.compile(
    rf"(?:^|[;\"'])\s*(?:from\s+(?:{'|'.join(OLD_NAMES)})(?:\.\w+)*\s+import\b"
    rf"|import\s+(?:{'|'.join(OLD_NAMES)})\b)",
    re.M,
)
# A module named in a string: mock targets, logger names, sys.modules keys, `-m`.
DOTTED = re.compile(rf"[\"']((?:{'|'.join(OLD_NAMES)})(?:\.\w+)+)[\"']")


def _project_files(*suffixes: str) -> Iterator[Path]:
    """The repository's own files (not venvs, caches or builds; graft/'s links not followed)."""
    skip = {"build", "dist", "__pycache__"}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in skip]
        dirs[:] = [d for d in dirs if not d.endswith(".egg-info")]
        yield from (Path(folder) / f for f in files if f.endswith(suffixes))


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_nothing_imports_the_old_top_level_names():
    # This file's own examples, and the test that imports PyPI's `lineage` on purpose.
    exempt = {ROOT / "tests" / "test_architecture.py", ROOT / "tests" / "test_packaging.py"}
    sources = [p for p in _project_files(".py") if p not in exempt]
    assert ROOT / "tui" / "cli.py" in sources and ROOT / "tests" / "conftest.py" in sources
    found = []
    for path in sources:
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found += [f"{path}:{node.lineno}: {n}" for n in names if n.split(".")[0] in OLD_NAMES]
        found += [f"{path}: {m.group(1)}" for m in DOTTED.finditer(text) if _is_module(m.group(1))]
    for path in [*sources, *_project_files(".md")]:
        found += [
            f"{path}: {m.group(0).strip()}" for m in OLD_IMPORT_TEXT.finditer(path.read_text())
        ]
    assert found == []


def test_the_old_name_checks_catch_what_they_look_for():
    assert OLD_IMPORT_TEXT.search("from lineage.callback import GraftCallback")
    assert OLD_IMPORT_TEXT.search('code = "import sys, json; import registry"')
    assert not OLD_IMPORT_TEXT.search("from graft.lineage.callback import GraftCallback")
    assert [
        m.group(1) for m in DOTTED.finditer('sys.modules["registry.add"]; "merge.yaml" merge.plan')
    ] == [
        "registry.add",
        "merge.yaml",
    ]
    assert _is_module("registry.add") and not _is_module("merge.yaml")


def test_the_package_exposes_its_api_lazily():
    """`import graft` is cheap; each public name is the object its subpackage defines."""
    code = "import sys, graft; print(sorted(m for m in ('torch', 'duckdb') if m in sys.modules))"
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "[]"
    from graft.lineage.callback import GraftCallback
    from graft.merge import merge_models
    from graft.registry import Store, add

    assert (graft.add, graft.Store, graft.merge_models) == (add, Store, merge_models)
    assert graft.GraftCallback is GraftCallback
    for name in graft.__all__:
        assert getattr(graft, name) is not None, name
    assert set(graft.__all__) <= set(dir(graft))
    assert graft.lineage.register is graft.register  # subpackages are attributes too
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = graft.nope  # type: ignore[attr-defined]
