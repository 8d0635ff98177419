"""Project-wide contracts: import direction, exit codes, help text, README coverage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from registry import ExitCode
from tui.cli import cli

ROOT = Path(__file__).resolve().parent.parent
FRONT_END_MODULES = ("tui", "textual", "rich", "click")


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("registry", ("lineage", "merge", *FRONT_END_MODULES)),
        ("lineage", ("merge", *FRONT_END_MODULES)),
        ("merge", FRONT_END_MODULES),
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
    leaked = [m for m in loaded if m.split(".")[0] in forbidden]
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
    assert "Traceback" not in result.stderr and "Missing argument 'PATH'" in result.stderr


def test_the_cli_starts_without_importing_torch():
    """torch costs a second per command; only computing deltas or pickles needs it."""
    code = "import sys, tui.cli, lineage; print('torch' in sys.modules)"
    assert (
        subprocess.check_output([sys.executable, "-c", code], cwd=ROOT, text=True).strip()
        == "False"
    )
