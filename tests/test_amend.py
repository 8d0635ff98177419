"""`graft amend`: parent, method, meta and name fixed after the fact, kept by reindex."""

from __future__ import annotations

import json
import shutil
import subprocess

from graft.registry import Store, amend
from graft.registry.amendments import Amendment
from tests.conftest import SAMPLES, graft_json, make_model
from tests.procs import GRAFT, graft_env
from tests.test_diff import _checkpoint


def _row(graft, ref: str) -> dict:  # type: ignore[no-untyped-def]
    name, _, version = ref.partition("@")
    return next(
        r for r in graft_json(graft, "ls") if r["name"] == name and str(r["version"]) == version
    )


def _two(graft, tmp_path):  # type: ignore[no-untyped-def]
    graft("add", make_model(tmp_path / "base", seed=0))
    graft("add", make_model(tmp_path / "other", seed=1))
    added = graft_json(graft, "add", make_model(tmp_path / "ft", seed=2))
    return added["id"]


def test_amend_sets_parent_method_and_meta_and_keeps_the_id(graft, tmp_path, store_dir):
    ft_id = _two(graft, tmp_path)
    out = graft("amend", "ft", "--parent", "base", "--method", "dpo", "--meta", "beta=0.1")
    assert out.stdout.startswith("amended ft@1")
    row = _row(graft, "ft@1")
    assert (row["id"], row["parents"], row["method"]) == (ft_id, ["base@1"], "dpo")
    shown = graft_json(graft, "show", "ft")
    assert shown["meta"] == {"beta": "0.1"} and shown["id"] == ft_id
    assert [a["method"] for a in shown["amendments"]] == ["dpo"]
    log = graft("log", "ft").stdout
    assert "base@1" in log and "amended=" in log
    # the manifest itself is untouched: its file still says no parent
    manifest = json.loads((store_dir / "manifests" / f"{ft_id}.json").read_text())
    assert manifest["parents"] == [] and manifest["method"] is None

    graft("amend", "ft", "--parent", "other")  # a later amendment wins
    assert _row(graft, "ft@1")["parents"] == ["other@1"]
    assert _row(graft, "ft@1")["method"] == "dpo"


def test_amendments_survive_reindex_and_a_lost_catalog(graft, tmp_path, store_dir):
    _two(graft, tmp_path)
    graft("amend", "ft", "--parent", "base", "--method", "sft", "--name", "ft-fixed")
    before = _row(graft, "ft-fixed@1")
    graft("reindex")
    assert _row(graft, "ft-fixed@1") == before
    (store_dir / "catalog.duckdb").unlink()
    graft("reindex")
    after = _row(graft, "ft-fixed@1")
    assert (after["parents"], after["method"]) == (["base@1"], "sft")
    assert not any(r["name"] == "ft" for r in graft_json(graft, "ls"))


def test_an_amendment_written_but_not_indexed_is_picked_up(graft, tmp_path, store_dir):
    """A process killed between writing the amendment and indexing it: the
    next command that writes the catalog applies it."""
    ft_id = _two(graft, tmp_path)
    store = Store.open(store_dir)
    base_id = _row(graft, "base@1")["id"]
    store.write_amendment(
        ft_id,
        Amendment(at="2026-01-01T00:00:00Z", parent=base_id, relation="finetune", method="kto"),
    )
    assert _row(graft, "ft@1")["parents"] == []  # not indexed yet
    graft("add", make_model(tmp_path / "another", seed=5))
    assert _row(graft, "ft@1")["parents"] == ["base@1"]
    assert _row(graft, "ft@1")["method"] == "kto"


def test_touched_follows_the_amended_parent(graft, tmp_path):
    base = make_model(tmp_path / "base", seed=0)
    graft("add", base)
    graft("add", make_model(tmp_path / "other", seed=1))
    graft("add", _checkpoint(base, tmp_path / "ft", {1: 0.05}), "--parent", "other")
    assert len(graft_json(graft, "touched", "ft")) > 1  # against other: everything differs
    graft("amend", "ft", "--parent", "base")
    touched = graft_json(graft, "touched", "ft")
    assert {t["parent"] for t in touched} == {"base@1"}
    assert {t["tensor"] for t in touched} == {"model.layers.1.self_attn.q_proj.weight"}


def test_amend_refuses_cycles_bad_refs_and_merges_in_one_line(graft, tmp_path, store_dir):
    _two(graft, tmp_path)
    graft("amend", "ft", "--parent", "base")
    amendments = sorted(p.name for p in (store_dir / "amendments").rglob("*.json"))
    for args, says in [
        (("base", "--parent", "ft"), "cycle"),
        (("base", "--parent", "base"), "cycle"),
        (("nope", "--method", "x"), "no artifact matches 'nope'"),
        (("ft", "--parent", "nope"), "parent 'nope' is not in the store"),
        (("ft",), "nothing to amend"),
    ]:
        result = graft("amend", *args, code=1)
        assert says in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert sorted(p.name for p in (store_dir / "amendments").rglob("*.json")) == amendments
    assert _row(graft, "base@1")["parents"] == []


def test_a_merge_keeps_its_recipe_parents(graft, tmp_path, store_dir):
    _two(graft, tmp_path)
    config = tmp_path / "m.yml"
    config.write_text(
        "merge_method: linear\nmodels:\n  - model: base\n  - model: other\n"
        "parameters:\n  weight: 0.5\n"
    )
    graft("merge", config, "--out", tmp_path / "soup")
    result = graft("amend", "soup", "--parent", "ft", code=1)
    assert "is a merge" in result.stderr
    graft("amend", "soup", "--method", "model-soup")
    assert _row(graft, "soup@1")["method"] == "model-soup"


def test_a_damaged_amendment_is_a_one_line_error_naming_it(graft, tmp_path, store_dir):
    ft_id = _two(graft, tmp_path)
    graft("amend", "ft", "--method", "sft")
    (path,) = (store_dir / "amendments" / ft_id).iterdir()
    path.write_text('{"format": 1, "at": "x", "parent": "not-a-key"}')
    result = graft("show", "ft", code=1)
    assert str(path) in result.stderr and result.stderr.count("\n") == 1


def test_amend_and_adds_from_other_processes_at_once(graft, tmp_path, store_dir):
    ft_id = _two(graft, tmp_path)
    folders = [make_model(tmp_path / f"m{i}", seed=10 + i) for i in range(4)]
    env = graft_env(store_dir)
    commands = [["amend", "ft", "--parent", "base", "--method", "orpo"]]
    commands += [["add", str(f), "--no-repack"] for f in folders]
    procs = [subprocess.Popen([str(GRAFT), *c], env=env) for c in commands]
    assert [p.wait(120) for p in procs] == [0] * len(procs)
    row = _row(graft, "ft@1")
    assert (row["id"], row["parents"], row["method"]) == (ft_id, ["base@1"], "orpo")
    assert {f"m{i}" for i in range(4)} <= {r["name"] for r in graft_json(graft, "ls")}
    amended = amend(Store.open(store_dir), "ft", meta={"k": "v"})
    assert amended.meta == {"k": "v"} and amended.method == "orpo"


def _adapter_declaring(folder, base: str):  # type: ignore[no-untyped-def]
    """The sample LoRA, copied with `base` as the base its config declares."""
    shutil.copytree(SAMPLES / "lora-copy", folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def test_an_adapter_added_before_its_declared_base_is_linked_when_the_base_arrives(graft, tmp_path):
    early = graft("add", _adapter_declaring(tmp_path / "early", "org/tiny-llama"), "--json")
    assert json.loads(early.stdout)["parents"] == []
    assert "declare base 'org/tiny-llama', which is not registered" in early.stderr
    assert _row(graft, "early@1")["parents"] == []
    graft("add", make_model(tmp_path / "unrelated"))  # another name: nothing linked
    assert _row(graft, "early@1")["parents"] == []

    base = graft("add", SAMPLES / "tiny-llama", "--json")  # "tiny-llama": the declared name's end
    assert json.loads(base.stdout)["linked"] == ["early@1"]
    assert "linked early@1 to tiny-llama@1, the base its files declare" in base.stderr
    assert _row(graft, "early@1")["parents"] == ["tiny-llama@1"]
    touched = graft_json(graft, "touched", "early")  # measured against the base now
    assert touched and all(t["parent"] == "tiny-llama@1" for t in touched)
    again = graft("add", SAMPLES / "tiny-llama", "--name", "tiny-llama", "--json")
    assert json.loads(again.stdout)["linked"] == []  # already linked: nothing more


def test_a_base_declared_by_relative_path_is_linked_by_path(graft, tmp_path):
    graft("add", _adapter_declaring(tmp_path / "adapter", "../weights"))
    shutil.copytree(SAMPLES / "tiny-llama", tmp_path / "weights")
    added = graft_json(graft, "add", tmp_path / "weights", "--name", "renamed-base")
    assert added["linked"] == ["adapter@1"]
    assert _row(graft, "adapter@1")["parents"] == ["renamed-base@1"]


def test_a_given_parent_records_no_declared_base(graft, tmp_path):
    graft("add", make_model(tmp_path / "base"))
    graft("add", _adapter_declaring(tmp_path / "ad", "tiny-llama"), "--parent", "base")
    assert "declared_base" not in graft_json(graft, "show", "ad")["meta"]
    assert graft_json(graft, "add", SAMPLES / "tiny-llama")["linked"] == []
    assert _row(graft, "ad@1")["parents"] == ["base@1"]
