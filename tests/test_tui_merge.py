"""The merge builder through Pilot: compose, check, preview, run, cancel, fail."""

from __future__ import annotations

import errno
import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from textual.widgets import (
    Button,
    Checkbox,
    Input,
    Label,
    ProgressBar,
    Select,
    SelectionList,
    Static,
)

from graft import lineage, registry
from graft.merge import load_config
from graft.registry import Store, list_artifacts
from graft.tui.app import GraftApp
from graft.tui.merge_draft import Draft
from graft.tui.screens import merge_builder
from graft.tui.screens.merge_builder import MergeBuilder, SaveYaml
from graft.tui.widgets import ArtifactTree

SAMPLES = Path(__file__).resolve().parent.parent / "sample_artifacts"
SIZE = (80, 24)  # the smallest terminal the builder must work in
pytestmark = pytest.mark.anyio


@pytest.fixture
def store_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A store with the base, two LoRA adapters and the fine-tune; outputs go to tmp_path."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "store"
    store = Store.open(path)
    lineage.register(SAMPLES / "tiny-llama", store=store, name="tiny-llama")
    for folder, method in (
        ("lora-copy", "lora"),
        ("lora-reverse", "lora"),
        ("tiny-llama-sft", "sft"),
    ):
        lineage.register(
            SAMPLES / folder, store=store, name=folder, parent="tiny-llama", method=method
        )
    return path


async def _open_builder(app: GraftApp, pilot: Any, on: str | None = None) -> MergeBuilder:
    await app.workers.wait_for_complete()
    await pilot.pause()
    if on is not None:
        assert app.query_one(ArtifactTree).select_ref(on)
        await pilot.pause()
    await pilot.press("b")
    await pilot.pause()
    assert isinstance(app.screen, MergeBuilder)
    return app.screen


async def _settle(app: GraftApp, pilot: Any) -> None:
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()


async def _type(pilot: Any, field: Input, text: str) -> None:
    field.value = text
    await pilot.pause()


async def _pick_method(screen: MergeBuilder, pilot: Any, method: str) -> None:
    """Choose `method` (or extract) and wait until the form has rebuilt its fields."""
    screen.query_one("#method", Select).value = method
    await pilot.pause()
    await pilot.pause()


def _field(screen: MergeBuilder, key: str) -> Input:
    return next(f for f in screen.query(Input) if f.name == key)


async def _ties_of_two_adapters(screen: MergeBuilder, pilot: Any) -> None:
    """From the builder opened on lora-copy, by keyboard: add lora-reverse, set the
    parameters and the name."""
    inputs: SelectionList[str] = screen.query_one("#inputs", SelectionList)
    inputs.focus()
    await pilot.press("home")
    for _ in range(inputs.option_count):
        option = inputs.highlighted_option
        if option is not None and option.value == "lora-reverse@1":
            break
        await pilot.press("down")
    await pilot.press("space")
    assert "lora-reverse@1" in inputs.selected
    await pilot.pause()
    for key, keys in (
        ("lora-copy@1.density", "0.5"),
        ("lora-reverse@1.weight", "\b0.5"),  # \b: backspace over the starting 1
        ("lora-reverse@1.density", "0.5"),
        ("name", "soup"),
    ):
        _field(screen, key).focus()
        await pilot.press(*["backspace" if k == "\b" else k for k in keys])
    await pilot.pause()


async def test_builds_and_runs_a_ties_merge_of_two_adapters(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[float, float | None]] = []  # the bar's (progress, total) after each message
    real = MergeBuilder.on_merge_builder_progressed

    def watched(screen: MergeBuilder, message: MergeBuilder.Progressed) -> None:
        real(screen, message)
        bar = screen.query_one("#progress", ProgressBar)
        seen.append((bar.progress, bar.total))

    monkeypatch.setattr(MergeBuilder, "on_merge_builder_progressed", watched)
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open_builder(app, pilot, on="lora-copy@1")
        # Opened on an adapter: it is the first input, over its parent as the base.
        assert screen.base == "tiny-llama@1"
        assert screen.query_one("#inputs", SelectionList).selected == ["lora-copy@1"]
        assert screen.method == "ties"
        await _ties_of_two_adapters(screen, pilot)

        draft = screen.draft()
        assert draft.problems() == {}
        assert draft.document() == {
            "merge_method": "ties",
            "base_model": "tiny-llama@1",
            "models": [
                {"model": "lora-copy@1", "parameters": {"weight": 1, "density": 0.5}},
                {"model": "lora-reverse@1", "parameters": {"weight": 0.5, "density": 0.5}},
            ],
        }
        _field(screen, "rank").focus()
        await pilot.press("6")  # cut the merged adapter back to rank 6 (the inputs': 4 + 8)
        assert screen.preview.startswith("# graft merge soup.yaml --out ./soup --rank 6\n")
        assert yaml.safe_load(screen.preview) == draft.document()
        assert not screen.query_one("#run", Button).disabled

        await pilot.press("ctrl+r")
        await _settle(app, pilot)
        await _settle(app, pilot)
        assert app.screen is not screen  # dismissed on success
        current = app.query_one(ArtifactTree).current
        assert current is not None and current.ref == "soup@1"  # the new artifact, selected
        [merged] = [n.message for n in app._notifications if n.title == "graft: merged"]
        assert merged.startswith("soup@1: ") and "an adapter of rank 6" in merged

    total = seen[-1][1]
    assert seen[-1] == (total, total) and len(seen) > 2  # the bar advanced to the end
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    rows = {r.ref: r for r in list_artifacts(Store.open(store_path))}
    soup = rows["soup@1"]
    assert soup.kind == "adapter" and soup.method == "ties"
    assert set(soup.parents) == {"tiny-llama@1", "lora-copy@1", "lora-reverse@1"}
    assert (store_path.parent / "soup" / "adapter_model.safetensors").is_file()
    config = json.loads((store_path.parent / "soup" / "adapter_config.json").read_text())
    assert config["r"] == 6


async def test_an_invalid_parameter_is_shown_inline_and_run_is_disabled(
    store_path: Path,
) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open_builder(app, pilot, on="lora-copy@1")
        await _ties_of_two_adapters(screen, pilot)
        density = _field(screen, "lora-reverse@1.density")
        await _type(pilot, density, "1.5")
        assert density.has_class("-invalid")
        valid = _field(screen, "lora-copy@1.density")
        assert not valid.has_class("-invalid")
        # seen, not just classed: a compact field has no border, so its background turns
        assert density.styles.background != valid.styles.background
        # the preview agrees with the form: bad values are left out and named
        rank = screen.query_one("#rank", Input)
        await _type(pilot, rank, "abc")
        assert rank.has_class("-invalid")
        assert rank.styles.background == density.styles.background
        assert "--rank" not in screen.preview
        assert "# left out until fixed: lora-reverse@1.density, rank" in screen.preview
        await _type(pilot, rank, "")
        problems = str(screen.query_one("#problems", Static).render())
        assert "lora-reverse@1.density: must be in (0, 1]" in problems
        assert screen.query_one("#run", Button).disabled
        await pilot.press("ctrl+r")  # refused: nothing runs
        await _settle(app, pilot)
        assert app.screen is screen and not screen.running
        # Not a number, then fixed.
        await _type(pilot, density, "half")
        assert "must be a number" in str(screen.query_one("#problems", Static).render())
        await _type(pilot, density, "0.5")
        assert not density.has_class("-invalid")
        assert not screen.query_one("#run", Button).disabled
    assert len(list_artifacts(Store.open(store_path))) == 4


async def test_the_form_follows_the_method_declaration(store_path: Path) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open_builder(app, pilot, on="tiny-llama-sft@1")
        await _pick_method(screen, pilot, "slerp")
        # slerp: no per-input fields, a required global t, at most one input besides the base.
        assert not [f for f in screen.query(Input) if (f.name or "").startswith("tiny-llama-sft")]
        t = _field(screen, "parameters.t")
        assert screen.draft().problems()["parameters.t"] == "required"
        await _type(pilot, t, "0.3")
        await _type(pilot, _field(screen, "name"), "halfway")
        assert screen.draft().problems() == {}
        assert screen.draft().document()["parameters"] == {"t": 0.3}
        screen.query_one("#inputs", SelectionList).select("lora-copy@1")
        await pilot.pause()
        assert "slerp takes exactly 1 input(s), got 2" in screen.draft().problems()["inputs"]
        # linear takes no base: the base list is off and the base is offered as an input.
        await _pick_method(screen, pilot, "linear")
        assert screen.query_one("#base", Select).disabled
        assert "base_model" not in screen.draft().document()
        offered = [o.value for o in screen.query_one("#inputs", SelectionList)._options]
        assert "tiny-llama@1" in offered
        # what an empty Rank means depends on the method: exact only where it is
        rank = screen.query_one("#rank", Input)
        assert rank.placeholder == "adapters; empty: exact (rank sum)"
        await _pick_method(screen, pilot, "ties")
        assert rank.placeholder == "adapters; empty: rank sum, by SVD"


async def test_cancelling_a_running_merge_leaves_nothing(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    real = merge_builder.merge_models

    def held(*args: Any, on_progress: Callable[..., None], **kwargs: Any) -> Any:
        def progress(p: Any) -> None:
            on_progress(p)
            gate.wait(10)  # hold after each tensor until the test has pressed esc

        return real(*args, on_progress=progress, **kwargs)

    monkeypatch.setattr(merge_builder, "merge_models", held)
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open_builder(app, pilot, on="lora-copy@1")
        await _ties_of_two_adapters(screen, pilot)
        await pilot.press("ctrl+r")
        for _ in range(200):
            await pilot.pause(0.02)
            if screen.query_one("#progress", ProgressBar).progress > 0:
                break
        assert screen.running and screen.query_one("#form").disabled
        assert screen.query_one("#progress", ProgressBar).progress > 0
        await pilot.press("escape")  # cancels the merge; does not close the builder
        gate.set()
        await _settle(app, pilot)
        assert app.screen is screen and not screen.running
        assert "merge cancelled" in str(screen.query_one("#status", Static).render())
        assert not screen.query_one("#form").disabled
    assert len(list_artifacts(Store.open(store_path))) == 4
    assert not [p for p in store_path.parent.iterdir() if "soup" in p.name]


async def test_mixing_models_and_adapters_is_refused_before_running(store_path: Path) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open_builder(app, pilot, on="lora-copy@1")
        await _ties_of_two_adapters(screen, pilot)
        screen.query_one("#inputs", SelectionList).select("tiny-llama-sft@1")
        await pilot.pause()
        await _type(pilot, _field(screen, "tiny-llama-sft@1.density"), "0.5")
        problems = screen.draft().problems()
        assert problems == {"inputs": "pick only full models, or only LoRA adapters"}
        assert screen.query_one("#run", Button).disabled
        assert screen.check_action("save", ()) is None  # a config that cannot run is not saved


async def test_a_failing_merge_is_shown_and_registers_nothing(store_path: Path) -> None:
    # A damaged store: one of lora-reverse's tensors has lost its blob.
    store = Store.open(store_path)
    manifest = registry.show(store, "lora-reverse@1").manifest
    _, tensor = manifest.tensors[0]
    store.blobs.path(tensor.blob).unlink()
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open_builder(app, pilot, on="lora-copy@1")
        await _ties_of_two_adapters(screen, pilot)
        assert screen.draft().problems() == {}
        name = _field(screen, "name")
        assert name.has_focus
        await pilot.press("ctrl+r")
        await _settle(app, pilot)
        assert app.screen is screen and not screen.running
        status = str(screen.query_one("#status", Static).render())
        missing = f"merge failed: blob {tensor.blob} of tensor {tensor.name} is missing"
        assert status.startswith(missing), status
        assert "graft verify" in status
        assert not screen.query_one("#run", Button).disabled  # fix and try again
        assert name.has_focus  # where the user was
    assert len(list_artifacts(Store.open(store_path))) == 4
    assert not (store_path.parent / "soup").exists()


async def test_a_full_disk_fails_in_one_graft_line_and_registers_nothing(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from graft.merge import writer

    def full(self: object, name: str, tensor: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.ShardWriter, "write", full)
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open_builder(app, pilot, on="lora-copy@1")
        await _ties_of_two_adapters(screen, pilot)
        await pilot.press("ctrl+r")
        await _settle(app, pilot)
        status = str(screen.query_one("#status", Static).render())
        out = Path.cwd() / "soup"  # the folder the draft names, in the test's folder
        assert status == (
            "merge failed: cannot write the merge into soup: No space left on device; "
            "choose a folder you can write to, on a disk with room for the output"
        )
        assert not out.exists()
    assert len(list_artifacts(Store.open(store_path))) == 4


async def test_an_unwritable_folder_fails_in_one_graft_line_cleared_by_the_next_edit(
    store_path: Path,
) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open_builder(app, pilot, on="lora-copy@1")
        await _ties_of_two_adapters(screen, pilot)
        folder = screen.query_one("#out-dir", Input)
        await _type(pilot, folder, "/proc/graft-out")  # procfs: no folder can be made there
        assert screen.draft().problems() == {}
        await pilot.press("ctrl+r")
        await _settle(app, pilot)
        status = str(screen.query_one("#status", Static).render())
        assert status.startswith("merge failed: cannot write the merge into /proc/graft-out: ")
        assert "Error" not in status and "partial" not in status
        problems = screen.query_one("#problems", Static)
        assert str(problems.render()) == "✗ the run failed: see below"  # not "ready to run"
        await _type(pilot, folder, str(store_path.parent / "soup"))
        assert str(screen.query_one("#status", Static).render()) == ""
        assert str(problems.render()) == "✓ ready to run"
    assert len(list_artifacts(Store.open(store_path))) == 4


async def test_save_writes_the_yaml_that_graft_merge_reads(store_path: Path) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open_builder(app, pilot, on="lora-copy@1")
        await _ties_of_two_adapters(screen, pilot)
        await _type(pilot, _field(screen, "parameters.lambda"), "0.8")
        await pilot.press("ctrl+s")
        await pilot.pause()
        path_field = app.screen.query_one("#save-path", Input)
        assert path_field.value == "soup.yaml"
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is screen
        assert "saved soup.yaml" in str(screen.query_one("#status", Static).render())
        # Saving again over the file asks first: one enter warns, the second replaces.
        saved = store_path.parent / "soup.yaml"
        saved.write_text("# mine\n")
        await pilot.press("ctrl+s")
        await pilot.pause()
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, SaveYaml) and saved.read_text() == "# mine\n"
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is screen and saved.read_text() != "# mine\n"
    saved = store_path.parent / "soup.yaml"
    document = yaml.safe_load(saved.read_text())
    assert document["parameters"] == {"lambda": 0.8}
    config = load_config(saved)
    assert config.method.name == "ties" and config.base == "tiny-llama@1"
    assert [m.model for m in config.models] == ["lora-copy@1", "lora-reverse@1", "tiny-llama@1"]


async def test_switches_left_alone_keep_each_method_default(store_path: Path) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open_builder(app, pilot, on="lora-copy@1")
        for method in ("task_arithmetic", "dare_ties", "ties"):
            await _pick_method(screen, pilot, method)
            assert "parameters" not in screen.draft().document(), method
        normalize = next(c for c in screen.query(Checkbox) if c.name == "parameters.normalize")
        assert normalize.value  # ties normalizes by default
        normalize.focus()
        await pilot.press("space")
        await pilot.pause()
        assert screen.draft().document()["parameters"] == {"normalize": False}


async def test_a_merge_ending_under_the_command_palette_still_lands(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    real = merge_builder.merge_models

    def held(*args: Any, **kwargs: Any) -> Any:
        gate.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(merge_builder, "merge_models", held)
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open_builder(app, pilot, on="lora-copy@1")
        await _ties_of_two_adapters(screen, pilot)
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert screen.running and screen.check_action("save", ()) is None  # dimmed
        app.action_command_palette()  # any screen over the builder, as the merge ends
        await pilot.pause()
        assert not screen.is_active
        gate.set()
        await _settle(app, pilot)
        await _settle(app, pilot)
        assert not isinstance(app.screen, MergeBuilder) and screen not in app.screen_stack
        current = app.query_one(ArtifactTree).current
        assert current is not None and current.ref == "soup@1"


async def test_the_builder_opens_on_an_adapter_without_a_parent(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "lone")
    lineage.register(SAMPLES / "lora-copy", store=store, name="lone")
    assert [r.parents for r in list_artifacts(store)] == [[]]
    app = GraftApp(store.root, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open_builder(app, pilot, on="lone@1")
        assert screen.base is None and screen.draft().inputs == ("lone@1",)
        assert screen.draft().problems()["base"] == "ties needs a base model"


async def test_the_builder_on_an_empty_store_says_how_to_add_one(tmp_path: Path) -> None:
    app = GraftApp(tmp_path / "empty", poll=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open_builder(app, pilot)
        problems = str(screen.query_one("#problems", Static).render())
        assert "inputs: the store has no artifacts yet: esc, then a adds one" in problems
        assert screen.query_one("#run", Button).disabled


async def test_the_first_b_loads_the_merge_engine_then_opens(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "graft.tui.screens.merge_builder")  # as in a fresh `graft tui`
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        await _settle(app, pilot)
        await pilot.press("b")
        await _settle(app, pilot)
        assert type(app.screen).__name__ == "MergeBuilder"
        assert any(n.message == "loading the merge engine…" for n in app._notifications)


async def test_escape_closes_the_builder_when_idle(store_path: Path) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open_builder(app, pilot)  # on the base: it becomes the base
        assert screen.base == "tiny-llama@1" and screen.draft().inputs == ()
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, MergeBuilder)


async def test_escape_asks_before_discarding_an_edited_draft(store_path: Path) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open_builder(app, pilot, on="lora-copy@1")
        await _ties_of_two_adapters(screen, pilot)
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is screen
        status = str(screen.query_one("#status", Static).render())
        assert status == "esc again discards this draft (ctrl+s saves it)"
        await _type(pilot, _field(screen, "name"), "soup2")  # an edit: the warning is over
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is screen
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, MergeBuilder)


def test_draft_checks_come_from_the_method_registry(tmp_path: Path) -> None:
    ok = Draft("dare_ties", "b", ("x",), {"x.weight": "1", "x.density": "0.3"}, name="n")
    assert ok.problems() == {}
    missing = Draft("dare_ties", "b", ("x",), {"x.weight": "1"}, name="n")
    assert missing.problems() == {"x.density": "required"}
    no_base = Draft("ties", None, ("x",), {"x.weight": "1"}, name="n")
    assert no_base.problems() == {"base": "ties needs a base model"}
    della = Draft("della", "b", ("x",), {"x.weight": "1", "x.density": "0.1"}, name="n")
    assert "density - epsilon > 0" in della.problems()["x.epsilon"]
    bad = Draft("ties", "b", ("x",), {"x.weight": "1"}, seed="-1", rank="0", name="a@b")
    assert set(bad.problems()) == {"seed", "rank", "name"}
    assert Draft("ties", "b", ("x",), {"x.weight": "1"}, rank="16", name="n").problems() == {}
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "f").write_text("x")
    taken = Draft("ties", "b", ("x",), {"x.weight": "1"}, name="n", out_dir=str(tmp_path / "taken"))
    assert "already exists" in taken.problems()["folder"]
    elsewhere = Draft("ties", "b", ("x",), {}, seed="3", name="n", out_dir="/x/y")
    assert elsewhere.command() == "graft merge n.yaml --out /x/y --name n --seed 3"
    spaced = Draft("ties", "b", ("x",), {"x.weight": "1"}, name="my soup ", out_dir=" ")
    assert spaced.output == Path("my soup")  # what the run writes, stripped
    assert spaced.command() == "graft merge 'my soup.yaml' --out './my soup'"
    odd = Draft("ties", "b", ("x",), {"x.weight": "1"}, seed="²", rank="²", name="n")
    assert set(odd.problems()) == {"seed", "rank"}  # checked, not a crash
    # Defaults are left out of the document; booleans only when they differ.
    doc = Draft(
        "ties", "b", ("x",), {"x.weight": "2"}, {"normalize": True, "rescale": True}, name="n"
    ).document()
    assert doc == {
        "merge_method": "ties",
        "base_model": "b",
        "models": [{"model": "x", "parameters": {"weight": 2}}],
        "parameters": {"rescale": True},
    }


async def test_the_replace_prompt_fits_80_columns_and_saved_goes_with_the_next_edit(
    store_path: Path, tmp_path: Path
) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open_builder(app, pilot, on="lora-copy@1")
        await _ties_of_two_adapters(screen, pilot)
        rank = screen.query_one("#rank", Input)
        assert 0 < len(rank.placeholder) <= rank.content_region.width  # the hint is not cut
        existing = tmp_path / "a-folder-with-a-rather-long-name" / "and-a-long-file-name.yaml"
        existing.parent.mkdir()
        existing.write_text("# mine\n")
        await pilot.press("ctrl+s")
        await pilot.pause()
        await _type(pilot, app.screen.query_one("#save-path", Input), str(existing))
        await pilot.press("enter")
        await pilot.pause()
        ask = app.screen.query_one("#save-ask", Label)
        said = f"{existing} exists: enter again to replace it, or change the name"
        assert str(ask.render()) == said
        box = app.screen.query_one("#save-box")
        assert ask.region.right <= box.content_region.right  # wrapped, not cut
        assert ask.size.height * ask.size.width >= len(said)
        await pilot.press("enter")
        await pilot.pause()
        status = screen.query_one("#status", Static)
        assert str(status.render()) == f"saved {existing}"
        # Any edit makes the draft differ from what was saved: the line goes.
        inputs: SelectionList[str] = screen.query_one("#inputs", SelectionList)
        inputs.focus()
        await pilot.press("space")  # picks or unpicks the highlighted input
        await pilot.pause()
        assert str(status.render()) == ""
        await pilot.press("ctrl+s")
        await pilot.pause()
        await pilot.press("escape")  # back without saving
        await pilot.pause()
        assert app.screen is screen


async def test_every_method_of_the_registry_has_a_form(store_path: Path) -> None:
    """Each method, the new ones included, builds its fields from its declaration;
    a required one (nearswap's t, nuslerp's weight) is named until filled in."""
    from graft.merge.methods import METHODS

    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open_builder(app, pilot, on="tiny-llama-sft@1")
        for method in METHODS:
            await _pick_method(screen, pilot, method)
            names = {f.name for f in screen.query(Input)} | {c.name for c in screen.query(Checkbox)}
            for param in METHODS[method].global_params:
                assert f"parameters.{param.name}" in names, (method, param.name)
            assert screen.draft().document()["merge_method"] == method
        await _pick_method(screen, pilot, "nearswap")
        assert "parameters.t" in screen.draft().problems()
        await _type(pilot, _field(screen, "parameters.t"), "0.01")
        assert "parameters.t" not in screen.draft().problems()
        assert screen.draft().document()["parameters"] == {"t": 0.01}
        await _pick_method(screen, pilot, "karcher")
        await _type(pilot, _field(screen, "parameters.max_iter"), "2.5")
        assert screen.draft().problems()["parameters.max_iter"].startswith("must be a whole")


async def test_extract_is_a_target_that_registers_a_lora_of_the_base(store_path: Path) -> None:
    """The fine-tune under the cursor, over its base: pick extract, give a rank and a
    name, run. The adapter is registered under the base with an edge to the fine-tune,
    as `graft extract` does."""
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open_builder(app, pilot, on="tiny-llama-sft@1")
        await _pick_method(screen, pilot, "extract")
        assert screen.draft().problems() == {
            "rank": "the adapter's rank is needed",
            "name": "name the new artifact (no @ or /)",
        }
        assert screen.query_one("#seed", Input).disabled
        assert screen.query_one("#union", Checkbox).disabled
        assert str(screen.query_one("#run", Button).label) == "Run extract"
        await _type(pilot, _field(screen, "rank"), "4")
        await _type(pilot, _field(screen, "name"), "sft-lora")
        assert screen.draft().problems() == {}
        assert screen.preview == (
            "# graft extract tiny-llama-sft@1 --base tiny-llama@1 --rank 4 --out ./sft-lora\n"
        )
        assert screen.check_action("save", ()) is None  # no YAML to save
        await pilot.press("ctrl+r")
        await _settle(app, pilot)
        await _settle(app, pilot)
        assert app.screen is not screen
        [said] = [n.message for n in app._notifications if n.title == "graft: extracted"]
        assert said.startswith("sft-lora@1: a rank-4 LoRA of ")
        current = app.query_one(ArtifactTree).current
        assert current is not None and current.ref == "sft-lora@1"
    rows = {r.ref: r for r in list_artifacts(Store.open(store_path))}
    lora = rows["sft-lora@1"]
    assert lora.kind == "adapter" and lora.method == "extract"
    assert set(lora.parents) == {"tiny-llama@1", "tiny-llama-sft@1"}
    config = json.loads((store_path.parent / "sft-lora" / "adapter_config.json").read_text())
    assert config["r"] == 4


async def test_extract_refuses_an_adapter_or_two_inputs_before_running(store_path: Path) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open_builder(app, pilot, on="lora-copy@1")
        await _pick_method(screen, pilot, "extract")
        await _type(pilot, _field(screen, "rank"), "4")
        await _type(pilot, _field(screen, "name"), "x")
        assert screen.draft().problems() == {"inputs": "pick the one fine-tuned model to extract"}
        screen.query_one("#inputs", SelectionList).deselect("lora-copy@1")
        screen.query_one("#inputs", SelectionList).select("tiny-llama-sft@1")
        await pilot.pause()
        assert screen.draft().problems() == {}
        screen.query_one("#inputs", SelectionList).select("lora-reverse@1")
        await pilot.pause()
        assert "inputs" in screen.draft().problems()
        assert screen.query_one("#run", Button).disabled


def test_an_extract_draft_checks_its_own_fields() -> None:
    ok = Draft("extract", "b", ("x",), rank="8", name="n")
    assert ok.problems() == {} and ok.yaml() == ""
    assert ok.command() == "graft extract x --base b --rank 8 --out ./n"
    assert Draft("extract", None, ("x",), rank="8", name="n").problems() == {
        "base": "extract needs the base the fine-tune came from"
    }
    assert Draft("extract", "b", ("x",), rank="0", name="n").problems() == {
        "rank": "must be a whole number ≥ 1"
    }
    unfinished = Draft("extract", "b", (), name="n", out_dir="/o")
    assert unfinished.command() == "graft extract REF --base b --rank R --out /o --name n"


async def test_the_union_switch_writes_tokenizer_source_and_the_merge_runs(
    store_path: Path,
) -> None:
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open_builder(app, pilot, on="tiny-llama-sft@1")
        await _pick_method(screen, pilot, "task_arithmetic")
        screen.query_one("#union", Checkbox).value = True
        await _type(pilot, _field(screen, "name"), "widened")
        assert screen.draft().problems() == {}
        assert screen.draft().document()["tokenizer_source"] == "union"
        assert "tokenizer_source: union" in screen.preview
        screen.query_one("#inputs", SelectionList).select("lora-copy@1")
        await pilot.pause()
        assert screen.draft().problems()["inputs"] == "pick only full models, or only LoRA adapters"
        screen.query_one("#inputs", SelectionList).deselect("tiny-llama-sft@1")
        await pilot.pause()
        assert screen.draft().problems()["inputs"] == (
            "a tokenizer union merges full models, not adapters"
        )
        screen.query_one("#inputs", SelectionList).deselect("lora-copy@1")
        screen.query_one("#inputs", SelectionList).select("tiny-llama-sft@1")
        await pilot.pause()
        await pilot.press("ctrl+r")
        await _settle(app, pilot)
        await _settle(app, pilot)
        assert app.screen is not screen
    rows = {r.ref: r for r in list_artifacts(Store.open(store_path))}
    assert rows["widened@1"].method == "task_arithmetic"
    config = json.loads((store_path.parent / "widened" / "config.json").read_text())
    assert config["vocab_size"] == 384  # the same tokenizers: the union adds nothing
