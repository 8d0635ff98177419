"""CLI behaviour: where the store is, what goes to stdout and stderr, progress, demo."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import SAMPLES, graft_json, make_model

GRAFT = Path(sys.executable).parent / "graft"


def _run(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRAFT, *map(str, args)], capture_output=True, text=True, env=env)


def test_store_option_beats_env_which_beats_the_user_default(tmp_path):
    home = tmp_path / "home"
    base = {"PATH": os.environ["PATH"], "HOME": str(home)}
    sample = SAMPLES / "lora-copy"
    assert _run("add", sample, env=base).returncode == 0
    assert (home / ".local" / "share" / "graft" / "graft-store.json").is_file()

    env = {**base, "GRAFT_STORE": str(tmp_path / "from-env")}
    assert _run("add", sample, env=env).returncode == 0
    assert _run("--store", tmp_path / "from-flag", "add", sample, env=env).returncode == 0
    for store in ("from-env", "from-flag"):
        listed = json.loads(_run("--store", tmp_path / store, "ls", "--json", env=base).stdout)
        assert [a["name"] for a in listed] == ["lora-copy"]


def test_json_goes_to_stdout_and_notes_to_stderr(graft):
    result = graft("add", SAMPLES / "lora-count", "--json")
    doc = json.loads(result.stdout)
    assert {"id", "name", "version", "kind", "tensors", "bytes_new"} <= doc.keys()
    assert (doc["kind"], doc["tensors"]) == ("adapter", 24)
    assert result.stderr == (
        "graft: its files declare base 'tiny-llama', which is not registered: "
        "no parent recorded; adding 'tiny-llama' links it\n"
    )


def test_progress_bar_on_a_terminal(tmp_path):
    """With stderr a terminal (forced), a large add draws a byte progress bar there."""
    model = tmp_path / "big"
    model.mkdir()
    g = torch.Generator().manual_seed(0)
    tensors = {f"layers.{i}.weight": torch.randn(1024, 1024, generator=g) for i in range(48)}
    save_file(tensors, model / "model.safetensors")  # 192 MiB: takes a few refreshes
    env = {"PATH": os.environ["PATH"], "GRAFT_STORE": str(tmp_path / "s"), "FORCE_COLOR": "1"}
    result = _run("add", model, env=env)
    assert result.returncode == 0, result.stderr
    assert "adding big" in result.stderr
    assert "MB" in result.stderr  # the transferred/total column
    assert result.stdout.startswith("added big@1")


def test_demo_registers_lists_and_shows_lineage(graft):
    out = graft("demo").stdout
    assert "$ graft ls" in out and "$ graft show tiny-llama-sft" in out
    assert "$ graft touched --method lora" in out and "method lora, 3 artifacts" in out
    assert "tiny-llama@1 (model" in out and "finetune by sft" in out
    assert "21 of 39 tensors (" in out and "are tiny-llama@1's, stored once" in out
    shared = graft_json(graft, "show", "tiny-llama-sft")["shared"]
    assert shared == [{"parent": "tiny-llama@1", "tensors": 21, "nbytes": shared[0]["nbytes"]}]
    assert 0 < shared[0]["nbytes"] < 809_000
    assert graft_json(graft, "show", "lora-copy")["shared"][0]["tensors"] == 0
    listed = graft_json(graft, "ls")
    assert sorted((a["name"], a["parents"]) for a in listed) == [
        ("demo-soup", ["lora-copy@1", "tiny-llama@1", "tiny-llama-sft@1"]),
        ("lora-copy", ["tiny-llama@1"]),
        ("lora-count", ["tiny-llama@1"]),
        ("lora-reverse", ["tiny-llama@1"]),
        ("tiny-llama", []),
        ("tiny-llama-sft", ["tiny-llama@1"]),
    ]
    assert "$ graft log demo-soup@1" in out and "merge by ties (role=input, weight=0.6" in out
    soup = {t["layer"] for t in graft_json(graft, "touched", "demo-soup")}
    assert soup == {0, 1, 2, 3}  # lora-copy's q/v everywhere, the fine-tune's layers 2-3
    again = graft("demo").stdout  # idempotent: nothing new
    assert again.count("already registered") == 5
    assert len(graft_json(graft, "ls")) == 6


@pytest.mark.parametrize("name", ["sft[bold]v2", "y[/]z"])
def test_names_print_as_they_are(graft, tmp_path, name):
    """A name that looks like rich markup is printed, not interpreted (nor an error)."""
    graft("add", make_model(tmp_path / "m"), "--name", name)
    for command in ("ls", "show", "log"):
        assert f"{name}@1" in graft(command, *([name] if command != "ls" else [])).stdout


def test_piped_tables_are_the_lines_rich_prints(graft, store_dir, tmp_path):
    """Piped, `ls` and `sql` print plain aligned text without loading rich's
    tables: the same lines as rich's borderless tables, trailing blanks aside."""
    from rich.console import Console

    from graft.registry import Store, list_artifacts
    from graft.tui import artifact_views

    def rich_lines(table: object) -> list[str]:
        console = Console(width=400, file=io.StringIO(), record=True)
        console.print(table)
        return [line.rstrip() for line in console.export_text().splitlines()]

    graft("demo")
    graft("add", make_model(tmp_path / "m"), "--name", "模型-sft")  # two columns a character
    store = Store.open(store_dir)
    listed = graft("ls").stdout.splitlines()
    assert listed == rich_lines(artifact_views.artifact_table(list_artifacts(store)))
    assert len(listed) == 8 and listed[0].startswith("NAME ")
    query = "SELECT name, version, method, n_tensors FROM artifacts ORDER BY name"
    with store.catalog.reading() as con:
        rows = con.execute(query).fetchall()
    table = artifact_views.rows_table(["name", "version", "method", "n_tensors"], rows)
    assert graft("sql", query).stdout.splitlines() == rich_lines(table)


def test_a_piped_value_never_breaks_its_line(graft):
    assert graft("sql", "SELECT 'a' || chr(10) || 'b' AS x, 1 AS y").stdout == "x     y\na\\nb  1\n"
    assert graft("sql", 'SELECT 1 AS "a\nb"').stdout == "a\\nb\n1\n"


def test_a_reader_that_leaves_early_gets_no_error(tmp_path):
    """`graft sql … | head`: the pipe closes while graft writes; it stops quietly."""
    env = {"PATH": os.environ["PATH"], "GRAFT_STORE": str(tmp_path / "s")}
    query = "SELECT i, repeat('x', 50) AS s FROM range(300000) t(i)"
    done = subprocess.run(
        [
            "bash",
            "-c",
            f'"$0" sql "{query}" | head -c 10 >/dev/null; exit ${{PIPESTATUS[0]}}',
            GRAFT,
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert (done.returncode, done.stderr) == (1, "")


def test_show_tensors_lists_every_tensor(graft):
    graft("add", SAMPLES / "lora-copy")
    out = graft("show", "lora-copy", "--tensors").stdout
    for line in ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "F32", "4×64"):
        assert line in out
    doc = graft_json(graft, "show", "lora-copy", "--tensors")
    assert len(doc["files"][-1]["tensors"]) == 16


def test_readd_with_new_options_says_they_were_not_applied(graft):
    graft("add", SAMPLES / "lora-copy")
    result = graft("add", SAMPLES / "lora-copy", "--name", "other", "--method", "dpo")
    assert result.stdout.startswith("already registered as lora-copy@1")
    assert "--name, --parent, --method and --meta were not applied" in result.stderr
    assert graft_json(graft, "show", "lora-copy")["method"] == "lora"  # declared, kept
