"""Project-wide contracts: import direction, exit codes, help text, README coverage."""

from __future__ import annotations

import ast
import importlib
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


@pytest.mark.parametrize(("preset", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_torch_threads_sleep_between_parallel_regions_unless_the_user_says(preset, expected):
    """OpenMP reads OMP_WAIT_POLICY when torch loads: graft sets it first, and
    leaves a user's own setting alone."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    code = "import os, graft.merge.executor, torch; print(os.environ['OMP_WAIT_POLICY'])"
    policy = subprocess.check_output([sys.executable, "-c", code], cwd=ROOT, env=env, text=True)
    assert policy.strip() == expected


HEAVY = ("torch", "transformers", "peft", "textual", "pyarrow", "numpy", "matplotlib")
# Runs one command in a fresh interpreter, then names the heavy modules it loaded.
RUN_AND_LIST = """
import sys
from graft.tui.cli import cli
try:
    cli.main(sys.argv[1:], prog_name="graft")
except SystemExit as e:
    assert not e.code, e.code
print(sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("ls",),
        ("show", "sft"),
        ("log", "sft"),
        ("touched", "sft"),
        ("touched", "--method", "finetune"),
        ("diff", "base", "sft"),
        ("sql", "SELECT count(*) FROM artifacts"),
        ("add", "SFT"),  # unchanged content: the stat cache answers
    ],
    ids=lambda args: args[0].strip("-"),
)
def test_reading_commands_load_no_heavy_module(tmp_path, args):
    """`graft ls` should start about as fast as DuckDB does (benchmarks/bench_cli_start.py):
    the commands that only read the catalog load none of torch, transformers,
    peft, textual, pyarrow, numpy or matplotlib."""
    from tests.conftest import make_model

    # inline: the deltas are recorded before `add` returns, not computed on the spot
    env = {**os.environ, "GRAFT_STORE": str(tmp_path / "store"), "GRAFT_REPACK": "inline"}
    base, sft = make_model(tmp_path / "base"), make_model(tmp_path / "sft", seed=1)
    graft = Path(sys.executable).parent / "graft"
    subprocess.run([graft, "add", base, "--name", "base"], env=env, check=True)
    subprocess.run(
        [graft, "add", sft, "--name", "sft", "--parent", "base", "--method", "finetune"],
        env=env,
        check=True,
    )
    args = tuple(str(sft) if a == "SFT" else a for a in args)
    code = RUN_AND_LIST.format(heavy=HEAVY)
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "[]"


def test_listing_loads_neither_the_blob_store_nor_its_thread_pools(tmp_path):
    """`graft ls` reads only the catalog: the blob store's hashing, codecs and
    decoding threads (and the default store's platformdirs) stay unloaded, and
    so does rich's console when stdout is a pipe (plain text is printed)."""
    from tests.conftest import make_model

    env = {**os.environ, "GRAFT_STORE": str(tmp_path / "store"), "GRAFT_REPACK": "off"}
    graft = Path(sys.executable).parent / "graft"
    subprocess.run([graft, "add", make_model(tmp_path / "base")], env=env, check=True)
    unneeded = (
        *HEAVY,
        "graft.registry.blobs",
        "concurrent.futures",
        "platformdirs",
        "rich.console",
        "rich.table",
    )
    code = RUN_AND_LIST.format(heavy=unneeded)
    done = subprocess.run(
        [sys.executable, "-c", code, "ls"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "base@1" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "[]"


def test_an_unchanged_re_add_loads_only_what_it_needs(tmp_path):
    """A training loop re-adds after every save: besides the heavy modules, an
    unchanged re-add loads neither yaml (model cards), rich's tables (views),
    nor the remote and parent-guessing code it does not run."""
    from tests.conftest import make_model

    env = {**os.environ, "GRAFT_STORE": str(tmp_path / "store"), "GRAFT_REPACK": "off"}
    base, sft = make_model(tmp_path / "base"), make_model(tmp_path / "sft", seed=1)
    graft = Path(sys.executable).parent / "graft"
    subprocess.run([graft, "add", base, "--name", "base"], env=env, check=True)
    subprocess.run([graft, "add", sft, "--parent", "base"], env=env, check=True)
    unneeded = (
        *HEAVY,
        "yaml",
        "rich.table",
        "rich.tree",
        "graft.lineage.share",
        "graft.lineage.infer",
    )
    code = RUN_AND_LIST.format(heavy=unneeded)
    done = subprocess.run(
        [sys.executable, "-c", code, "add", str(sft), "--parent", "base"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "already registered" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("package", ["graft.registry", "graft.lineage", "graft.merge"])
def test_lazy_packages_type_check_what_they_export(package):
    """Each package's `if TYPE_CHECKING:` imports name exactly the lazily exported
    names, each from the module that defines it."""
    module = importlib.import_module(package)
    tree = ast.parse(Path(module.__file__).read_text())
    declared = {
        alias.name: node.module
        for block in tree.body
        if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert declared == module._exports
    assert sorted(declared) == module.__all__
    for name, source in declared.items():
        assert getattr(module, name) is getattr(importlib.import_module(source), name)


def test_a_submodule_named_like_its_function_does_not_hide_it():
    """`import graft.registry.add` binds the module as an attribute of the package;
    `registry.add` must stay the function, as an eager `from .add import add` keeps it."""
    code = (
        "import graft.registry.add, graft.lineage.diff, graft.registry as r, graft.lineage as l; "
        "print(r.add.__name__, type(r.add).__name__, l.diff.__name__, type(l.diff).__name__)"
    )
    shown = subprocess.check_output([sys.executable, "-c", code], cwd=ROOT, text=True).split()
    assert shown == ["add", "function", "diff", "function"]


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


def _graft_imports(path: Path, package: str) -> set[str]:
    """The graft modules `path` imports anywhere in it (functions included), except
    under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    checking = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in checking:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("graft.")}
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = node.module if node.level == 0 else f"{package}.{node.module}"
            if module.startswith("graft."):
                found.add(module)
    return found


@pytest.mark.parametrize("package", ["registry", "lineage", "merge", "tui"])
def test_modules_import_each_other_in_one_direction(package):
    """No cycle among a package's modules (its lazy __init__ aside)."""
    modules = {
        f"graft.{package}.{p.stem}": p
        for p in (ROOT / package).glob("*.py")
        if p.stem != "__init__"
    }
    graph = {
        name: _graft_imports(path, f"graft.{package}") & set(modules)
        for name, path in modules.items()
    }
    if package == "merge":  # the graph is read: executor runs formulas and adapter merges
        assert graph["graft.merge.executor"] >= {"graft.merge.run_adapters", "graft.merge.chunks"}

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*path, nxt]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [c for name in sorted(graph) if (c := cycle_from(name))]
    assert cycles == []
