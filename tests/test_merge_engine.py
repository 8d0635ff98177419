"""The merge engine end to end: config → plan → streamed run → registered lineage."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import Result
from safetensors import safe_open
from safetensors.torch import load_file

from graft.lineage import register
from graft.merge.api import merge_models
from graft.merge.config import ParamValue, parse_config
from graft.merge.errors import MergeCancelled, MergeConfigError, MergeInputError
from graft.merge.executor import run
from graft.merge.plan import build_plan
from graft.registry import Store
from tests.conftest import SAMPLES, graft_json, make_model, sha256_tree

BASE = str(SAMPLES / "tiny-llama")
SFT = str(SAMPLES / "tiny-llama-sft")


def config(**doc: object) -> dict:
    return doc


def weights(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


# --- parameter values -------------------------------------------------------


def test_gradient_interpolates_over_the_layer_stack() -> None:
    value = ParamValue(((None, (0.0, 0.5, 1.0)),))
    assert value.at("x", 0.0) == 0.0
    assert value.at("x", 0.25) == pytest.approx(0.25)
    assert value.at("x", 0.75) == pytest.approx(0.75)
    assert value.at("x", 1.0) == 1.0
    assert value.at("x", None) == 0.0  # outside the stack: the first value


def test_first_matching_filter_wins_and_no_match_falls_through() -> None:
    value = ParamValue((("self_attn", 0.1), ("mlp", (0.0, 1.0))))
    assert value.at("model.layers.0.self_attn.q_proj.weight", 0.5) == 0.1
    assert value.at("model.layers.0.mlp.up_proj.weight", 0.5) == pytest.approx(0.5)
    assert value.at("model.norm.weight", None) is None


def test_parameters_resolve_model_then_top_level_then_default(tmp_path: Path) -> None:
    doc = config(
        merge_method="ties",
        base_model=BASE,
        models=[
            {"model": SFT, "parameters": {"weight": [{"filter": "mlp", "value": 2.0}]}},
        ],
        parameters={"weight": 0.5, "density": [0.2, 0.8]},
    )
    plan = build_plan(parse_config(doc), None)
    tasks = {t.name: t for t in plan.tasks}
    mlp = tasks["model.layers.0.mlp.up_proj.weight"]
    attn = tasks["model.layers.3.self_attn.q_proj.weight"]
    assert mlp.input_params[0]["weight"] == 2.0  # the model's own filter matched
    assert attn.input_params[0]["weight"] == 0.5  # no match: the top level's
    assert mlp.input_params[0]["density"] == pytest.approx(0.2)  # layer 0 of 4
    assert attn.input_params[0]["density"] == pytest.approx(0.8)  # layer 3 of 4
    assert mlp.params == {"normalize": True, "rescale": False, "lambda": 1.0, "int8_mask": False}
    assert plan.uses[0].role == "base" and plan.uses[1].params["density"] == [0.2, 0.8]


# --- config errors name the key ----------------------------------------------


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"merge_method": "linear", "models": [BASE], "typo": 1}, "key 'typo' is not known"),
        ({"models": [BASE]}, "merge_method is missing"),
        ({"merge_method": "blend", "models": [BASE]}, "unknown merge method 'blend'"),
        (
            {
                "merge_method": "task_arithmetic",
                "base_model": BASE,
                "models": [{"model": SFT, "parameters": {"weight": 1, "density": 0.5}}],
            },
            "key 'density' is not known",
        ),
        (
            {
                "merge_method": "ties",
                "base_model": BASE,
                "models": [{"model": SFT, "parameters": {"weight": 1, "normalize": False}}],
            },
            "normalize applies to the whole merge",
        ),
        (
            {
                "merge_method": "ties",
                "base_model": BASE,
                "models": [{"model": SFT, "parameters": {"weight": 1, "density": 1.5}}],
            },
            "density = 1.5",
        ),
        ({"merge_method": "ties", "models": [SFT]}, "ties needs base_model"),
        (
            {"merge_method": "linear", "models": [BASE], "dtype": "int4"},
            "dtype 'int4' is not a dtype",
        ),
        ({"merge_method": "linear", "models": [BASE], "slices": []}, "both models and slices"),
    ],
)
def test_config_errors_name_the_key(doc: dict, expected: str) -> None:
    with pytest.raises(MergeConfigError, match=expected):
        parse_config(doc)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            {"merge_method": "linear", "models": [{"model": BASE}, {"model": SFT}]},
            "parameter 'weight' of .* has no value for tensor",
        ),
        (
            {
                "merge_method": "linear",
                "base_model": BASE,
                "models": [{"model": SFT, "parameters": {"weight": 1.0}}],
            },
            "parameter 'weight' of .*tiny-llama' has no value",  # the base joins as an input
        ),
        (
            {
                "merge_method": "slerp",
                "base_model": BASE,
                "models": [{"model": SFT}, {"model": SFT + "/"}],
                "parameters": {"t": 0.5},
            },
            "slerp takes exactly 1 model",
        ),
        (
            {"merge_method": "model_stock", "base_model": BASE, "models": [{"model": SFT}]},
            "model_stock takes at least 2",
        ),
        (
            {"merge_method": "linear", "models": [{"model": "no/such/model"}]},
            "'no/such/model' is neither a file or folder nor a registered artifact",
        ),
    ],
)
def test_plan_errors_name_the_parameter_or_model(doc: dict, expected: str) -> None:
    with pytest.raises(MergeConfigError, match=expected):
        build_plan(parse_config(doc), None)


def test_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path: Path) -> None:
    a = make_model(tmp_path / "a", dim=16)
    b = make_model(tmp_path / "b", dim=8)
    doc = config(
        merge_method="linear",
        models=[{"model": str(a)}, {"model": str(b)}],
        parameters={"weight": 1},
    )
    with pytest.raises(MergeInputError, match=r"model.embed_tokens.weight: shape \[32, 8\]"):
        build_plan(parse_config(doc), None)


def test_tensor_missing_from_one_input_is_an_error(tmp_path: Path) -> None:
    a = make_model(tmp_path / "a", layers=2)
    b = make_model(tmp_path / "b", layers=1)
    doc = config(
        merge_method="linear",
        models=[{"model": str(a)}, {"model": str(b)}],
        parameters={"weight": 1},
    )
    with pytest.raises(MergeInputError, match=r"model\.layers\.1\..* is missing from"):
        build_plan(parse_config(doc), None)


# --- running -----------------------------------------------------------------


def test_linear_merge_matches_the_formula_and_rounds_once(tmp_path: Path) -> None:
    doc = config(
        merge_method="linear",
        models=[
            {"model": BASE, "parameters": {"weight": 3}},
            {"model": SFT, "parameters": {"weight": 1}},
        ],
        dtype="bfloat16",
    )
    result = run(build_plan(parse_config(doc), None), tmp_path / "out")
    got, a, b = weights(tmp_path / "out"), weights(Path(BASE)), weights(Path(SFT))
    assert set(got) == set(a)
    for name, tensor in got.items():
        expected = ((3 * a[name] + 1 * b[name]) / 4).to(torch.bfloat16)
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, expected), name
    changed = {n for n in a if not torch.equal(a[n].to(torch.bfloat16), got[n])}
    assert set(result.touched) == changed and changed  # sft changed layers 2-3 only
    assert all(".layers.2." in n or ".layers.3." in n for n in changed)


def test_output_loads_in_transformers_and_carries_its_lineage(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    doc = config(
        merge_method="task_arithmetic",
        base_model=BASE,
        models=[{"model": SFT, "parameters": {"weight": 0.7}}],
    )
    plan = build_plan(parse_config(doc), None)
    result = run(plan, tmp_path / "out", shard_size=100_000)
    out = tmp_path / "out"
    assert len(result.files) > 1 and (out / "model.safetensors.index.json").is_file()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == {t.name for t in plan.tasks}
    model = AutoModelForCausalLM.from_pretrained(out)
    logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert torch.isfinite(logits).all()
    for name in result.files:
        with safe_open(out / name, "pt") as f:
            meta = f.metadata()
        assert meta["graft.method"] == "task_arithmetic"
        parents = json.loads(meta["graft.parents"])
        assert [(p["ref"], p["role"]) for p in parents] == [(BASE, "base"), (SFT, "input")]
        assert parents[1]["params"] == {"weight": 0.7}
        assert json.loads(meta["graft.touched"]) == list(result.touched)
        assert yaml.safe_load(json.dumps(json.loads(meta["graft.config"]))) == doc
    card = (out / "README.md").read_text()
    assert "base_model:" in card and "task_arithmetic" in card and "weight=0.7" in card
    assert (out / "tokenizer.json").read_bytes() == (Path(BASE) / "tokenizer.json").read_bytes()


def test_passthrough_slices_stack_layers_from_two_models(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    doc = config(
        merge_method="passthrough",
        slices=[
            {"sources": [{"model": BASE, "layer_range": [0, 2]}]},
            {"sources": [{"model": SFT, "layer_range": [1, 4]}]},
        ],
    )
    run(build_plan(parse_config(doc), None), tmp_path / "out")
    got, a, b = weights(tmp_path / "out"), weights(Path(BASE)), weights(Path(SFT))
    assert AutoConfig.from_pretrained(tmp_path / "out").num_hidden_layers == 5
    name = "model.layers.{}.mlp.down_proj.weight"
    assert torch.equal(got[name.format(1)], a[name.format(1)])
    assert torch.equal(got[name.format(2)], b[name.format(1)])
    assert torch.equal(got[name.format(4)], b[name.format(3)])
    assert torch.equal(got["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    assert torch.equal(got["model.norm.weight"], b["model.norm.weight"])
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").config.num_hidden_layers == 5


def _dare(tmp_path: Path, out: str, seed: int) -> dict[str, str]:
    doc = config(
        merge_method="dare_ties",
        base_model=BASE,
        models=[
            {"model": SFT, "parameters": {"weight": 0.5, "density": 0.5}},
            {
                "model": BASE + "+" + str(SAMPLES / "lora-copy"),
                "parameters": {"weight": 0.5, "density": 0.3},
            },
        ],
    )
    run(build_plan(parse_config(doc), None), tmp_path / out, seed=seed)
    return {k: v for k, v in sha256_tree(tmp_path / out).items() if k.endswith(".safetensors")}


def test_outputs_that_are_their_inputs_survive_buffer_reuse(tmp_path: Path) -> None:
    """passthrough at scale 1 writes the input tensor itself, whose read buffer
    the next tensors of the same size would reuse if it came back too early."""
    doc = config(merge_method="passthrough", models=[SFT])
    run(build_plan(parse_config(doc), None), tmp_path / "out")
    got, want = weights(tmp_path / "out"), weights(Path(SFT))
    assert got.keys() == want.keys()
    assert all(torch.equal(got[name], want[name]) for name in want)


def test_buffer_pool_reuses_by_exact_size_and_frees_the_oldest_past_its_limit() -> None:
    from graft.merge.buffers import BufferPool

    pool = BufferPool(limit=100)
    a, b, c = pool.take(40), pool.take(40), pool.take(30)
    assert a.dtype == torch.uint8 and a.numel() == 40
    pool.give([a, b])
    again = pool.take(40)
    assert again.data_ptr() in (a.data_ptr(), b.data_ptr())
    assert pool.take(50).data_ptr() not in (a.data_ptr(), b.data_ptr())  # no size match
    pool.give([again, c, pool.take(50)])  # 40 + 40 + 30 + 50 > 100: the oldest go
    kept = [pool.take(n).data_ptr() for n in (40, 30)]
    assert kept[1] == c.data_ptr() and kept[0] not in (a.data_ptr(), b.data_ptr())


def test_dare_is_byte_identical_for_a_seed_whatever_the_thread_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from graft.merge import methods

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first = _dare(tmp_path, "a", seed=7)
        torch.set_num_threads(1)
        again = _dare(tmp_path, "b", seed=7)
        # large tensors keep neither task vectors nor masks: drawn again each pass
        monkeypatch.setattr(methods, "_KEEP_DELTAS_UPTO", 0)
        torch.set_num_threads(2)
        streamed = _dare(tmp_path, "c", seed=7)
    finally:
        torch.set_num_threads(threads)
    assert first == again == streamed
    assert _dare(tmp_path, "d", seed=8) != first


@pytest.mark.parametrize("method", ["ties", "dare_ties", "linear"])
def test_merges_are_byte_identical_whatever_the_number_of_merge_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    from graft.merge import executor

    folded = BASE + "+" + str(SAMPLES / "lora-reverse")
    params = {"weight": 0.5} if method == "linear" else {"weight": 0.5, "density": 0.4}
    entries = [{"model": m, "parameters": params} for m in (SFT, folded)]
    base = {} if method == "linear" else {"base_model": BASE}
    doc = config(merge_method=method, models=entries, **base)
    threads = torch.get_num_threads()
    got = []
    for workers in (1, 2, 3):
        monkeypatch.setattr(executor, "_merge_workers", lambda device, n=workers: n)
        run(build_plan(parse_config(doc), None), tmp_path / f"w{workers}", seed=3)
        assert torch.get_num_threads() == threads  # the workers' split is undone
        got.append(sha256_tree(tmp_path / f"w{workers}"))
    assert got[0] == got[1] == got[2]


def test_tensors_are_written_largest_first_and_touched_listed_in_plan_order(
    tmp_path: Path,
) -> None:
    """The largest tensors are merged (and written) first, so that the merge
    workers run out of work together; ties keep the plan's order."""
    doc = config(
        merge_method="task_arithmetic",
        base_model=BASE,
        models=[{"model": SFT, "parameters": {"weight": 0.7}}],
    )
    plan = build_plan(parse_config(doc), None)
    result = run(plan, tmp_path / "out")
    raw = (tmp_path / "out" / "model.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    meta = header.pop("__metadata__")
    written = sorted(header, key=lambda name: header[name]["data_offsets"][0])
    sizes = {t.name: t.nbytes for t in plan.tasks}
    plan_order = [t.name for t in plan.tasks]
    assert written == sorted(plan_order, key=lambda n: (-sizes[n], plan_order.index(n)))
    assert written != plan_order  # the samples' plan does not start with its largest
    touched = json.loads(meta["graft.touched"])
    assert touched == [n for n in plan_order if n in touched] == list(result.touched)
    assert 0 < len(touched) < len(plan_order)


UNWRITABLE = Path("/proc/graft-test-out")  # procfs: no folder can be made there, even as root


def test_an_unwritable_output_folder_is_a_graft_error(tmp_path: Path) -> None:
    from graft.merge.errors import MergeOutputError

    doc = config(merge_method="linear", models=[BASE, SFT], parameters={"weight": 1})
    with pytest.raises(MergeOutputError) as caught:
        run(build_plan(parse_config(doc), None), UNWRITABLE)
    assert str(caught.value).startswith(f"cannot write the merge into {UNWRITABLE}: ")
    assert "choose a folder you can write to" in str(caught.value)


def test_a_full_disk_while_writing_is_a_graft_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from graft.merge import writer
    from graft.merge.errors import MergeOutputError

    def full(self: object, name: str, tensor: torch.Tensor) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.ShardWriter, "write", full)
    doc = config(merge_method="linear", models=[BASE, SFT], parameters={"weight": 1})
    with pytest.raises(MergeOutputError, match="No space left on device; choose a folder"):
        run(build_plan(parse_config(doc), None), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # no output, no work folder


def test_an_unreadable_input_is_not_blamed_on_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Path.read_bytes

    def unreadable(path: Path) -> bytes:
        if path.name == "config.json" and path.parent == Path(BASE):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    doc = config(merge_method="linear", models=[BASE, SFT], parameters={"weight": 1})
    with pytest.raises(MergeInputError) as caught:
        run(build_plan(parse_config(doc), None), tmp_path / "out")
    assert str(caught.value).startswith(f"{Path(BASE) / 'config.json'}: cannot read it (Permission")
    assert list(tmp_path.iterdir()) == []  # no output, no work folder


def test_cli_reports_an_unwritable_output_in_one_line(
    graft: Callable[..., Result], tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    doc = config(merge_method="linear", models=[BASE, SFT], parameters={"weight": 1})
    path.write_text(yaml.safe_dump(doc))
    result = graft("merge", path, "--out", UNWRITABLE, "--no-register", code=1)
    assert result.stderr.startswith(f"graft: error: cannot write the merge into {UNWRITABLE}: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "internal error" not in result.stderr and "Error" not in result.stderr


def test_existing_output_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    doc = config(merge_method="linear", models=[BASE], parameters={"weight": 1})
    with pytest.raises(MergeConfigError, match="already exists"):
        run(build_plan(parse_config(doc), None), tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("how", ["cancel", "crash"])
def test_an_interrupted_merge_leaves_nothing_behind(tmp_path: Path, how: str) -> None:
    doc = config(merge_method="linear", models=[BASE, SFT], parameters={"weight": 1})
    seen = []

    def on_progress(p: object) -> None:
        seen.append(p)
        if how == "crash" and len(seen) == 5:
            raise RuntimeError("boom")

    with pytest.raises(MergeCancelled if how == "cancel" else RuntimeError):
        run(
            build_plan(parse_config(doc), None),
            tmp_path / "out",
            on_progress=on_progress,
            should_cancel=lambda: len(seen) >= 5,
        )
    assert list(tmp_path.iterdir()) == []


def test_unavailable_cuda_is_a_clear_error(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: covered by the device run")
    doc = config(merge_method="linear", models=[BASE], parameters={"weight": 1})
    with pytest.raises(MergeConfigError, match="no CUDA device"):
        run(build_plan(parse_config(doc), None), tmp_path / "out", device="cuda")


# --- registration and lineage ------------------------------------------------


@pytest.fixture
def registered(graft: Callable[..., Result]) -> Callable[..., Result]:
    for name in ("tiny-llama", "tiny-llama-sft", "lora-copy"):
        graft("add", SAMPLES / name)
    return graft


def test_merge_registers_edges_with_parameters(
    registered: Callable[..., Result], store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "ties.yaml"
    path.write_text(
        yaml.safe_dump(
            config(
                merge_method="ties",
                base_model="tiny-llama",
                models=[
                    {"model": "tiny-llama-sft", "parameters": {"weight": 0.6, "density": 0.5}},
                    {
                        "model": "tiny-llama+lora-copy",
                        "parameters": {"weight": 0.4, "density": 0.7},
                    },
                ],
            )
        )
    )
    out = graft_json(registered, "merge", path, "--out", tmp_path / "out", "--name", "soup")
    assert out["artifact"]["ref"] == "soup@1"
    entries = graft_json(registered, "log", "soup")
    direct = {e["ref"]: e for e in entries if e["depth"] == 1}
    assert direct["tiny-llama@1"]["params"] == {"role": "base"}
    assert direct["tiny-llama-sft@1"]["params"] == {"role": "input", "weight": 0.6, "density": 0.5}
    assert direct["lora-copy@1"]["params"] == {"role": "input", "weight": 0.4, "density": 0.7}
    assert {e["relation"] for e in direct.values()} == {"merge"}
    text = registered("log", "soup").stdout
    assert "weight=0.6" in text and "density=0.7" in text
    assert out["existed"] is False
    # The same merge again, into another folder: the registry already has it, and says so.
    again = registered("merge", path, "--out", tmp_path / "again", "--name", "soup2").stdout
    assert "identical to soup@1 (" in again and "already registered" in again
    assert "registered soup2" not in again

    touched = graft_json(registered, "touched", "soup")
    assert {t["parent"] for t in touched} == {"tiny-llama@1"}  # against the base only
    layers = {t["layer"] for t in touched}
    assert layers == {0, 1, 2, 3}  # lora-copy changes q/v everywhere, sft layers 2-3
    assert {t["module"] for t in touched if t["layer"] in (0, 1)} == {"q_proj", "v_proj"}


def test_merge_of_files_registers_its_inputs_and_dedups_unchanged_tensors(
    graft: Callable[..., Result], store: Store, tmp_path: Path
) -> None:
    doc = config(
        merge_method="task_arithmetic",
        base_model=BASE,
        models=[{"model": SFT, "parameters": {"weight": 1.0}}],
    )
    outcome = merge_models(parse_config(doc), tmp_path / "out", store=store)
    assert outcome.manifest is not None
    names = {r["name"] for r in graft_json(graft, "ls")}
    assert names == {"tiny-llama", "tiny-llama-sft", "out"}
    base = store.resolve_ref("tiny-llama")
    base_blobs = {t.name: t.blob for _, t in base.tensors}
    merged = {t.name: t.blob for _, t in outcome.manifest.tensors}
    same = {n for n in merged if merged[n] == base_blobs[n]}
    assert same == {n for n in merged if n not in outcome.result.touched}
    assert len(same) == 39 - 18  # only sft's layers 2-3 differ from the base
    touched = graft_json(graft, "touched", "out")
    assert {t["tensor"] for t in touched} == set(outcome.result.touched)


def test_merge_without_register_leaves_the_store_alone(
    graft: Callable[..., Result], store_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(config(merge_method="linear", models=[BASE, SFT], parameters={"weight": 1}))
    )
    graft("merge", path, "--out", tmp_path / "out", "--no-register")
    assert not store_dir.exists()
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("merge_method: [linear", "not valid YAML (line"),
        (
            "merge_method: linear\nmodels: [{model: nope}]\nparameters: {weight: 1}",
            "'nope' is neither",
        ),
        ("- just a list", "the config must be a mapping"),
    ],
)
def test_cli_reports_bad_configs_in_one_line(
    graft: Callable[..., Result], tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    result = graft("merge", path, "--out", tmp_path / "out", code=1)
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_reports_a_missing_config(graft: Callable[..., Result], tmp_path: Path) -> None:
    result = graft("merge", tmp_path / "none.yaml", "--out", tmp_path / "out", code=1)
    assert "none.yaml: cannot read" in result.stderr


# --- adapters merged into one adapter ----------------------------------------


def _peft_merged(adapter_dir: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(BASE)
    model = PeftModel.from_pretrained(base, adapter_dir)
    return {k: v.detach() for k, v in model.merge_and_unload().state_dict().items()}


def _dense_update(adapter: str, target: str) -> torch.Tensor:
    """s·B·A of one module, from the adapter files, by hand."""
    config = json.loads((SAMPLES / adapter / "adapter_config.json").read_text())
    tensors = load_file(SAMPLES / adapter / "adapter_model.safetensors")
    module = "base_model.model." + target.removesuffix(".weight")
    a, b = tensors.get(f"{module}.lora_A.weight"), tensors.get(f"{module}.lora_B.weight")
    if a is None or b is None:
        return torch.zeros(0)
    r = a.shape[0]
    scale = config["lora_alpha"] / (r**0.5 if config.get("use_rslora") else r)
    return scale * (b.double() @ a.double())


def test_linear_adapter_merge_is_exact_and_loads_in_peft(tmp_path: Path) -> None:
    doc = config(
        merge_method="linear",
        base_model=BASE,
        models=[
            {"model": str(SAMPLES / "lora-copy"), "parameters": {"weight": 0.7}},
            {"model": str(SAMPLES / "lora-reverse"), "parameters": {"weight": 0.3}},
        ],
        parameters={"normalize": False},
    )
    result = run(build_plan(parse_config(doc), None), tmp_path / "ad")
    assert result.rank == 4 + 8 and result.truncation_error is None
    merged, base = _peft_merged(tmp_path / "ad"), weights(Path(BASE))
    target = "model.layers.1.self_attn.q_proj.weight"  # both adapters change it
    expected = base[target].double() + 0.7 * _dense_update("lora-copy", target)
    expected += 0.3 * _dense_update("lora-reverse", target)
    torch.testing.assert_close(merged[target].double(), expected, rtol=0, atol=1e-5)
    only_reverse = "model.layers.0.mlp.up_proj.weight"
    expected = base[only_reverse].double() + 0.3 * _dense_update("lora-reverse", only_reverse)
    torch.testing.assert_close(merged[only_reverse].double(), expected, rtol=0, atol=1e-5)


def test_ties_adapter_merge_reports_the_truncation_error(tmp_path: Path) -> None:
    models = [
        {"model": str(SAMPLES / "lora-copy"), "parameters": {"weight": 0.7, "density": 0.5}},
        {"model": str(SAMPLES / "lora-reverse"), "parameters": {"weight": 0.3, "density": 0.5}},
    ]
    doc = config(merge_method="ties", base_model=BASE, models=models)
    full = run(build_plan(parse_config(doc), None), tmp_path / "full", rank=64)
    cut = run(build_plan(parse_config(doc), None), tmp_path / "cut", rank=2)
    assert full.truncation_error is not None and full.truncation_error < 1e-5
    assert cut.truncation_error is not None and 0.05 < cut.truncation_error < 1
    with safe_open(tmp_path / "cut" / "adapter_model.safetensors", "pt") as f:
        errors = json.loads(f.metadata()["graft.truncation_error"])
    assert max(errors.values()) == pytest.approx(cut.truncation_error)
    # At full rank the adapter is the dense TIES merge of the updates, exactly.
    from graft.merge.methods import TensorJob, get_method

    target = "model.layers.1.self_attn.q_proj.weight"
    deltas = tuple(_dense_update(a, target).float() for a in ("lora-copy", "lora-reverse"))
    dense = get_method("ties").merge(
        TensorJob(
            name=target,
            base=torch.zeros_like(deltas[0]),
            inputs=deltas,
            input_params=({"weight": 0.7, "density": 0.5}, {"weight": 0.3, "density": 0.5}),
            params={"normalize": True, "rescale": False, "lambda": 1.0, "int8_mask": False},
        )
    )
    merged = _peft_merged(tmp_path / "full")
    torch.testing.assert_close(
        merged[target] - weights(Path(BASE))[target], dense, rtol=0, atol=1e-4
    )


def test_adapters_and_models_do_not_mix(tmp_path: Path) -> None:
    doc = config(
        merge_method="linear",
        models=[{"model": str(SAMPLES / "lora-copy")}, {"model": SFT}],
        parameters={"weight": 1},
    )
    with pytest.raises(
        MergeConfigError,
        match=r"mix full models \(.*tiny-llama-sft\) and LoRA adapters \(.*lora-copy\)",
    ):
        build_plan(parse_config(doc), None)
    slerp = config(
        merge_method="slerp",
        base_model=BASE,
        models=[{"model": str(SAMPLES / "lora-copy")}],
        parameters={"t": 0.5},
    )
    with pytest.raises(MergeConfigError, match="cannot merge adapters into an adapter"):
        build_plan(parse_config(slerp), None)


def test_a_bf16_merge_of_fp32_models_touches_only_what_changed(
    graft: Callable[..., Result], store: Store, tmp_path: Path
) -> None:
    doc = config(
        merge_method="task_arithmetic",
        base_model=BASE,
        models=[{"model": SFT, "parameters": {"weight": 1.0}}],
        dtype="bfloat16",
    )
    merge_models(parse_config(doc), tmp_path / "soup", store=store)
    touched = graft_json(graft, "touched", "soup")
    assert {t["layer"] for t in touched} == {2, 3}  # rounding to bf16 is not a change


# --- graft fold ----------------------------------------------------------------


@pytest.mark.parametrize("adapter", ["lora-copy", "lora-reverse", "lora-count"])
def test_fold_equals_peft_merge_and_unload_bit_for_bit(
    registered: Callable[..., Result], tmp_path: Path, adapter: str
) -> None:
    if adapter != "lora-copy":
        registered("add", SAMPLES / adapter)
    out = graft_json(registered, "fold", adapter, "--out", tmp_path / "full")
    assert out["artifact"]["ref"] == "full@1"
    ours = weights(tmp_path / "full")
    peft = _peft_merged(SAMPLES / adapter)
    assert set(ours) == set(peft)
    for name, tensor in ours.items():
        assert torch.equal(tensor, peft[name]), name
    entries = graft_json(registered, "log", "full")
    assert {(e["ref"], e["params"]["role"]) for e in entries if e["depth"] == 1} == {
        (f"{adapter}@1", "input"),
        ("tiny-llama@1", "fold base"),
    }
    touched = {t["tensor"] for t in graft_json(registered, "touched", "full")}
    config = json.loads((SAMPLES / adapter / "adapter_config.json").read_text())
    assert touched and all(
        any(f".{m}." in name for m in config["target_modules"]) for name in touched
    )


def test_fold_without_a_known_base_says_to_name_one(
    graft: Callable[..., Result], tmp_path: Path
) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for f in (SAMPLES / "lora-copy").iterdir():
        (adapter / f.name).write_bytes(f.read_bytes())
    result = graft("fold", adapter, "--out", tmp_path / "full", code=1)
    assert "no base recorded for this adapter; name one with --base REF" in result.stderr
    graft("fold", adapter, "--base", BASE, "--out", tmp_path / "full", "--no-register")
    assert (tmp_path / "full" / "model.safetensors").is_file()


@pytest.mark.parametrize("method", ["ties", "dare_ties", "slerp", "model_stock", "breadcrumbs"])
def test_tensors_read_span_by_span_give_the_same_bytes(
    method: str, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large tensors are read a span at a time, from files and from blobs alike."""
    from graft.merge import chunks, executor

    for model in (BASE, SFT):  # the inputs come from blobs
        register(model, store=store)
    params = {
        "ties": {"weight": 0.6, "density": 0.4},
        "dare_ties": {"weight": 0.6, "density": 0.4},
        "breadcrumbs": {"weight": 0.6, "density": 0.8, "gamma": 0.05},
    }.get(method, {})
    doc = config(
        merge_method=method,
        base_model="tiny-llama",
        models=[
            {"model": "tiny-llama-sft", **({"parameters": params} if params else {})},
            *(
                [{"model": BASE + "+" + str(SAMPLES / "lora-copy")}]
                if method == "model_stock"
                else []
            ),
        ],
        **({"parameters": {"t": 0.3}} if method == "slerp" else {}),
    )
    whole = run(build_plan(parse_config(doc), store), tmp_path / "whole", seed=3)
    monkeypatch.setattr(executor, "READ_WHOLE_BELOW", 0)
    monkeypatch.setattr(chunks, "CHUNK", 1000)
    spans = run(build_plan(parse_config(doc), store), tmp_path / "spans", seed=3)
    assert whole.touched == spans.touched
    assert weights(tmp_path / "whole").keys() == weights(tmp_path / "spans").keys()
    for name, tensor in weights(tmp_path / "whole").items():
        assert torch.equal(tensor, weights(tmp_path / "spans")[name]), name


def test_cli_shard_size_is_parsed_and_checked(graft: Callable[..., Result], tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(config(merge_method="linear", models=[BASE], parameters={"weight": 1}))
    )
    out = graft_json(
        graft,
        "merge",
        path,
        "--out",
        tmp_path / "out",
        "--out-shard-size",
        "100KB",
        "--no-register",
    )
    assert len(out["files"]) >= 809_000 // 100_000  # 809 kB of fp32 tensors, 100 kB shards
    assert all(
        f.stat().st_size < 100_000 + 20_000 for f in (tmp_path / "out").glob("*.safetensors")
    )
    bad = graft("merge", path, "--out", tmp_path / "x", "--out-shard-size", "lots", code=2)
    assert "'lots' is not a size like 500MB or 2GB" in bad.stderr


def test_an_unreadable_input_file_is_a_merge_error(tmp_path: Path) -> None:
    from graft.merge.errors import MergeInputError
    from graft.merge.inputs import _read_exact

    with pytest.raises(MergeInputError, match=r"missing: cannot read a tensor .*graft verify"):
        _read_exact(tmp_path / "missing", 0, 4, "a tensor")


@pytest.mark.parametrize(
    ("doc", "said"),
    [
        (
            {"merge_method": "nearswap", "base_model": BASE, "models": [SFT]},
            "parameter 't' has no value for tensor model.embed_tokens.weight; nearswap requires it",
        ),
        (
            {"merge_method": "nuslerp", "models": [BASE, SFT, SFT], "parameters": {"weight": 1}},
            "nuslerp takes exactly 2 model(s) besides the base; models gives 3",
        ),
        (
            {"merge_method": "karcher", "models": [BASE, SFT], "parameters": {"max_iter": 2.5}},
            "parameters.max_iter = 2.5: must be a whole number",
        ),
        (
            {"merge_method": "sce", "models": [BASE, SFT]},
            "sce needs base_model",
        ),
    ],
)
def test_the_new_methods_refuse_bad_configs_in_one_line(
    graft: Callable[..., Result], tmp_path: Path, doc: dict, said: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = graft("merge", path, "--out", tmp_path / "out", "--no-register", code=1)
    assert said in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
