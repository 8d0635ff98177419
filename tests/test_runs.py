"""`graft add RUN_DIR` (a trainer's output folder) and `graft add PATH…`."""

from __future__ import annotations

import json
import shutil

from tests.conftest import graft_json, make_model
from tests.test_diff import _checkpoint


def _run(tmp_path, steps=(10, 20, 30), final=True):  # type: ignore[no-untyped-def]
    """base/ and out/checkpoint-N (each further from base), the final model at out/."""
    base = make_model(tmp_path / "base")
    out = tmp_path / "out"
    for i, step in enumerate(steps):
        ckpt = _checkpoint(base, out / f"checkpoint-{step}", {0: 0.01 * (i + 1)})
        state = {"global_step": step, "log_history": [{"step": step, "loss": 2.0 - 0.1 * i}]}
        (ckpt / "trainer_state.json").write_text(json.dumps(state))
    if final:
        for f in (out / f"checkpoint-{steps[-1]}").iterdir():
            if f.name != "trainer_state.json":
                shutil.copy(f, out / f.name)
    return base, out


def _parents(graft) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    return {f"{r['name']}@{r['version']}": r["parents"] for r in graft_json(graft, "ls")}


def test_a_run_folder_becomes_a_chain_in_step_order(graft, tmp_path):
    base, out = _run(tmp_path)
    graft("add", base)
    added = graft_json(graft, "add", out, "--parent", "base")
    assert [a["name"] for a in added] == [
        "out/checkpoint-10",
        "out/checkpoint-20",
        "out/checkpoint-30",
        "out",
    ]
    assert _parents(graft) == {
        "base@1": [],
        "out/checkpoint-10@1": ["base@1"],
        "out/checkpoint-20@1": ["out/checkpoint-10@1"],
        "out/checkpoint-30@1": ["out/checkpoint-20@1"],
        "out@1": ["out/checkpoint-30@1"],
    }
    series = graft_json(graft, "touched", "--series", "out")
    assert series["base"] == "base@1" and series["steps"] == [10, 20, 30]
    assert series["losses"] == [2.0, 1.9, 1.8]
    again = graft_json(graft, "add", out)  # after every save: what is there is kept
    assert all(a["existed"] and a["bytes_new"] == 0 for a in again)
    assert len(graft_json(graft, "ls")) == 5


def test_a_new_checkpoint_joins_the_end_of_its_run(graft, tmp_path):
    base, out = _run(tmp_path, steps=(10, 20), final=False)
    graft("add", base)
    graft("add", out, "--parent", "base")
    _checkpoint(base, out / "checkpoint-30", {0: 0.05})
    result = graft("add", out)
    assert "added out/checkpoint-30@1" in result.stdout
    assert result.stdout.count("already registered") == 2
    assert _parents(graft)["out/checkpoint-30@1"] == ["out/checkpoint-20@1"]
    # One checkpoint alone: linked to the latest registered earlier one of its run.
    _checkpoint(base, out / "checkpoint-50", {0: 0.07})
    result = graft("add", out / "checkpoint-50")
    assert "graft: parent out/checkpoint-30@1 (the run's checkpoint before it)" in result.stderr
    assert _parents(graft)["out/checkpoint-50@1"] == ["out/checkpoint-30@1"]


def test_several_paths_at_once(graft, tmp_path):
    a = make_model(tmp_path / "a", seed=1)
    b = make_model(tmp_path / "b", seed=2)
    docs = graft_json(graft, "add", a, b)
    assert [d["name"] for d in docs] == ["a", "b"]
    assert graft_json(graft, "add", a)["existed"]  # one path: one object, as before


def test_bad_paths_add_nothing(graft, store_dir, tmp_path):
    a = make_model(tmp_path / "a")
    result = graft("add", a, tmp_path / "missing", code=1)
    assert result.stderr.startswith("graft: error: ") and "missing" in result.stderr
    assert result.stderr.count("\n") == 1
    assert graft_json(graft, "ls") == []
    result = graft("add", a, a, "--name", "x", code=2)
    assert "--name names one artifact" in result.stderr
    (tmp_path / "empty-run" / "checkpoint-1").mkdir(parents=True)
    result = graft("add", tmp_path / "empty-run", code=1)
    assert "no weights found" in result.stderr and result.stderr.count("\n") == 1
