"""The add dialog and the help screen of `graft tui`, through Pilot, on a fresh store per test."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from textual.geometry import Region
from textual.widgets import Button, Input, ProgressBar, Static

from graft import lineage, registry
from graft.registry import ArtifactRow, Store
from graft.tui.app import GraftApp
from graft.tui.screens import add_dialog
from graft.tui.screens.add_dialog import AddDialog, path_problem, suggested_methods
from graft.tui.screens.amend_dialog import AmendDialog
from graft.tui.screens.help import HelpScreen
from graft.tui.widgets import ArtifactTree
from tests.conftest import make_model

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_artifacts"
SIZE = (100, 30)
pytestmark = pytest.mark.anyio


@pytest.fixture
def seeded(store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    """The test's own store (conftest sets GRAFT_STORE) holding tiny-llama@1; paths
    typed into the dialog are relative to the repository."""
    lineage.register(SAMPLES / "tiny-llama", store=store, name="tiny-llama")
    monkeypatch.chdir(ROOT)
    return store


def snapshot(store: Store) -> tuple[object, ...]:
    """What an add would change: the listing, the catalog's rows, the stored files."""
    with store.catalog.reading() as con:
        counts = [
            con.execute(f"SELECT count(*) FROM {table}").fetchone()
            for table in ("artifacts", "edges")
        ]
    files = sorted(
        str(p.relative_to(store.root))
        for folder in (store.manifests_dir, store.root / "blobs")
        for p in folder.rglob("*")
        if p.is_file()
    )
    return registry.list_artifacts(store), counts, files


async def _settle(app: GraftApp, pilot: Any) -> None:
    """Let workers finish and their messages (and the ones those cause) be handled."""
    for _ in range(2):
        await app.workers.wait_for_complete()
        await pilot.pause()


async def _open(app: GraftApp, pilot: Any) -> AddDialog:
    await _settle(app, pilot)
    await pilot.press("a")
    await pilot.pause()
    assert isinstance(app.screen, AddDialog)
    return app.screen


async def _type(pilot: Any, dialog: AddDialog, field: str, text: str) -> None:
    dialog.query_one(f"#{field}", Input).focus()
    await pilot.press(*text)
    await pilot.pause()


def _message(dialog: AddDialog) -> str:
    return str(dialog.query_one("#message", Static).render())


async def test_a_opens_the_dialog_with_the_store_refs(seeded: Store) -> None:
    app = GraftApp(seeded.root, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        dialog = await _open(app, pilot)
        assert dialog.query_one("#path", Input).has_focus
        assert dialog.refs == ["tiny-llama@1"]
        assert dialog.query_one("#add", Button).disabled  # no path yet
        assert dialog.check_action("add", ()) is None
        assert "tiny-llama@1" in dialog.query_one("#parent", Input).placeholder
        assert "folder name" in dialog.query_one("#name", Input).placeholder


async def test_add_registers_with_parent_and_method_and_selects_it(
    seeded: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int]] = []
    shown = AddDialog.on_add_dialog_progress

    def record(self: AddDialog, message: AddDialog.Progress) -> None:
        seen.append((message.done, message.total))
        shown(self, message)

    monkeypatch.setattr(AddDialog, "on_add_dialog_progress", record)
    app = GraftApp(seeded.root, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        dialog = await _open(app, pilot)
        bar = dialog.query_one(ProgressBar)
        await _type(pilot, dialog, "path", "sample_artifacts/tiny-llama-sft")
        await _type(pilot, dialog, "name", "my-sft")
        await _type(pilot, dialog, "parent", "tiny-llama@1")
        await _type(pilot, dialog, "method", "sft")
        assert not dialog.query_one("#add", Button).disabled
        await pilot.click("#add")
        await _settle(app, pilot)

        assert not isinstance(app.screen, AddDialog)
        [row] = registry.list_artifacts(seeded, name="my-sft")
        assert row.ref == "my-sft@1" and row.method == "sft"
        assert row.parents == ["tiny-llama@1"]
        detail = registry.show(seeded, "my-sft@1")
        assert detail.manifest.method == "sft"
        assert [p.relation for p in detail.manifest.parents] == ["finetune"]

        tree = app.query_one(ArtifactTree)
        assert tree.current is not None and tree.current.ref == "my-sft@1"
        assert tree.tree_view.has_focus
        assert any("added my-sft@1" in n.message for n in app._notifications)

        assert seen, "no progress was shown"
        done, total = seen[-1]
        assert done == total > 700_000  # model.safetensors alone is 774 KiB
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)
        assert bar.total == total and bar.progress == total


async def test_enter_adds_content_already_registered_and_says_so(seeded: Store) -> None:
    before = snapshot(seeded)
    app = GraftApp(seeded.root, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        dialog = await _open(app, pilot)
        await _type(pilot, dialog, "path", "sample_artifacts/tiny-llama")
        await pilot.press("enter")
        await _settle(app, pilot)
        assert not isinstance(app.screen, AddDialog)
        assert any("already registered as tiny-llama@1" in n.message for n in app._notifications)
        tree = app.query_one(ArtifactTree)
        assert tree.current is not None and tree.current.ref == "tiny-llama@1"
    assert snapshot(seeded)[0] == before[0]


async def test_a_missing_path_is_refused_inline_and_the_store_is_unchanged(
    seeded: Store,
) -> None:
    before = snapshot(seeded)
    app = GraftApp(seeded.root, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        dialog = await _open(app, pilot)
        await _type(pilot, dialog, "path", "sample_artifacts/nope")
        assert "sample_artifacts/nope: no such file or folder" in _message(dialog)
        assert dialog.query_one("#message").has_class("-error")
        assert dialog.query_one("#add", Button).disabled
        assert dialog.check_action("add", ()) is None
        await pilot.press("ctrl+s")
        await pilot.press("enter")
        await _settle(app, pilot)
        assert app.screen is dialog
        assert not dialog.busy
    assert snapshot(seeded) == before


async def test_an_unknown_parent_shows_the_graft_error_and_registers_nothing(
    seeded: Store,
) -> None:
    before = snapshot(seeded)
    app = GraftApp(seeded.root, poll=False)
    async with app.run_test(size=(80, 24)) as pilot:
        dialog = await _open(app, pilot)
        await _type(pilot, dialog, "path", "sample_artifacts/tiny-llama-sft")
        await _type(pilot, dialog, "parent", "nobody@1")
        await pilot.press("ctrl+s")
        await _settle(app, pilot)
        assert app.screen is dialog  # stays open to fix the field
        message = _message(dialog)
        assert "nobody@1" in message and "\n" not in message
        assert dialog.query_one("#message").has_class("-error")
        assert not dialog.busy and not dialog.query_one("#add", Button).disabled
        assert dialog.query_one("#parent").has_focus  # back where the user was, to fix it
        assert not [n for n in app._notifications if n.severity == "error"]
        region = dialog.query_one("#message").region
        assert Region(0, 0, 80, 24).contains_region(region)
        await _type(pilot, dialog, "parent", "tiny-llama@1")  # fixed: the error goes
        assert "nobody@1" not in _message(dialog)
        assert not dialog.query_one("#message").has_class("-error")
    assert snapshot(seeded) == before


async def test_enter_on_an_empty_path_says_what_is_missing(seeded: Store) -> None:
    app = GraftApp(seeded.root, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        dialog = await _open(app, pilot)
        await pilot.press("enter")
        await _settle(app, pilot)
        assert app.screen is dialog and not dialog.busy
        assert _message(dialog) == "type the path of a model or adapter first"
        assert dialog.query_one("#message").has_class("-error")


async def test_esc_closes_without_registering(seeded: Store) -> None:
    before = snapshot(seeded)
    app = GraftApp(seeded.root, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        dialog = await _open(app, pilot)
        await _type(pilot, dialog, "path", "sample_artifacts/tiny-llama-sft")
        await pilot.press("escape")
        await _settle(app, pilot)
        assert not isinstance(app.screen, AddDialog)
        tree = app.query_one(ArtifactTree)
        assert tree.current is not None and tree.current.ref == "tiny-llama@1"
    assert snapshot(seeded) == before


async def test_esc_and_add_are_dimmed_while_registering(
    seeded: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    go = threading.Event()
    real = lineage.register

    def held(*args: Any, **kwargs: Any) -> registry.AddResult:
        go.wait(timeout=10)
        return real(*args, **kwargs)

    monkeypatch.setattr(lineage, "register", held)
    app = GraftApp(seeded.root, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        dialog = await _open(app, pilot)
        await _type(pilot, dialog, "path", "sample_artifacts/tiny-llama-sft")
        await pilot.press("ctrl+s")
        await pilot.pause()
        try:
            assert dialog.busy and dialog.has_class("-busy")
            assert dialog.check_action("cancel", ()) is None
            assert dialog.check_action("add", ()) is None
            assert dialog.query_one("#add", Button).disabled
            assert dialog.query_one("#path", Input).disabled
            assert "cannot be interrupted" in _message(dialog)
            await pilot.press("escape")  # the UI still answers, and ignores it
            await pilot.pause()
            assert app.screen is dialog
        finally:
            go.set()
        await _settle(app, pilot)
        assert not isinstance(app.screen, AddDialog)
    assert [r.ref for r in registry.list_artifacts(seeded)] == [
        "tiny-llama@1",
        "tiny-llama-sft@1",
    ]


async def test_the_dialog_fits_80x24(seeded: Store) -> None:
    app = GraftApp(seeded.root, poll=False)
    async with app.run_test(size=(80, 24)) as pilot:
        dialog = await _open(app, pilot)
        screen = Region(0, 0, 80, 24)
        for selector in ("#path", "#name", "#parent", "#method", "#message", "#add", "#cancel"):
            region = dialog.query_one(selector).region
            assert region.area and screen.contains_region(region), selector


async def test_help_lists_the_app_keys_and_closes(seeded: Store) -> None:
    app = GraftApp(seeded.root, poll=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await _settle(app, pilot)
        for close in ("escape", "q", "question_mark"):
            await pilot.press("question_mark")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            rows = app.screen.rows()
            assert ("a", "Add") in rows and ("r", "Refresh") in rows and ("?", "Help") in rows
            assert ("tab", "next panel; on the tab bar ←/→ switch tabs") in rows
            keys = str(app.screen.query_one("#help-keys", Static).render())
            assert "Add" in keys and "Refresh" in keys
            await pilot.press(close)
            await pilot.pause()
            assert not isinstance(app.screen, HelpScreen)
        assert app.is_running  # q closed the help, not the app


def test_path_problem() -> None:
    assert path_problem("  ") == "enter a path"
    assert path_problem(str(SAMPLES / "tiny-llama")) is None
    assert path_problem("hf:org/name@main") is None  # only the registry can tell
    problem = path_problem("/no/such/dir")
    assert problem is not None and "no such file or folder" in problem


def test_suggested_methods_put_the_store_first() -> None:
    methods = suggested_methods(["ties", "sft", "sft"])
    assert methods[:2] == ["sft", "ties"]
    assert methods.count("sft") == 1 and "dpo" in methods and "lora" in methods


def test_progress_is_throttled(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(i / 1000 for i in range(1, 10_000))  # 1 ms a call
    monkeypatch.setattr(add_dialog, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    dialog = AddDialog(store)
    posted: list[AddDialog.Progress] = []
    monkeypatch.setattr(dialog, "post_message", posted.append)
    report = dialog._progress_poster()
    for done in range(1, 1001):  # one second of callbacks
        report(done, 1000)
    assert 15 <= len(posted) <= 22  # about 20 a second
    assert (posted[-1].done, posted[-1].total) == (1000, 1000)


# An adapter added before its base, and `e`: `graft amend` from the TUI.


async def test_adding_a_declared_base_links_the_adapter_added_before_it(store: Store) -> None:
    lineage.register(SAMPLES / "lora-copy", store=store)  # declares base tiny-llama
    app = GraftApp(store.root, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        await _settle(app, pilot)
        tree = app.query_one(ArtifactTree)
        assert tree.structure()[""] == ["lora-copy@1"]  # an orphan, for now
        dialog = await _open(app, pilot)
        await _type(pilot, dialog, "path", str(SAMPLES / "tiny-llama"))
        await pilot.press("enter")
        await _settle(app, pilot)
        assert tree.structure()[""] == ["tiny-llama@1"]
        assert tree.structure()["tiny-llama@1"] == ["lora-copy@1"]
        assert any(
            "linked lora-copy@1 to it: the base their files declare" in n.message
            for n in app._notifications
        )
    assert registry.list_artifacts(store, name="lora-copy")[0].parents == ["tiny-llama@1"]


async def _amend_dialog(app: GraftApp, pilot: Any, ref: str) -> AmendDialog:
    await _settle(app, pilot)
    assert app.query_one(ArtifactTree).select_ref(ref)
    await pilot.press("e")
    await pilot.pause()
    assert isinstance(app.screen, AmendDialog)
    return app.screen


async def test_e_amends_the_parent_and_method_of_the_selected_artifact(
    seeded: Store, tmp_path: Path
) -> None:
    lineage.register(make_model(tmp_path / "ft"), store=seeded)  # a root: it declares nothing
    before = registry.list_artifacts(seeded)
    app = GraftApp(seeded.root, poll=False)
    async with app.run_test(size=(80, 24)) as pilot:
        dialog = await _amend_dialog(app, pilot, "ft@1")
        assert dialog.query_one("#parent", Input).has_focus
        assert dialog.query_one("#parent", Input).placeholder == "NAME@N; now: none"
        await pilot.press("enter")  # nothing typed
        assert _message(dialog) == "nothing to amend: type a parent, a method or a name"
        await _type(pilot, dialog, "parent", "nope@1")
        await pilot.press("enter")
        await _settle(app, pilot)
        assert _message(dialog).startswith("parent 'nope@1' is not in the store")
        assert isinstance(app.screen, AmendDialog)
        assert registry.list_artifacts(seeded) == before
        dialog.query_one("#parent", Input).value = ""
        await _type(pilot, dialog, "parent", "tiny-llama@1")
        await _type(pilot, dialog, "method", "dpo")
        await pilot.press("enter")
        await _settle(app, pilot)
        assert not isinstance(app.screen, AmendDialog)
        [row] = registry.list_artifacts(seeded, name="ft")
        assert (row.parents, row.method) == (["tiny-llama@1"], "dpo")
        tree = app.query_one(ArtifactTree)
        assert tree.current is not None and tree.current.ref == "ft@1"
        assert tree.structure()["tiny-llama@1"] == ["ft@1"]


async def test_a_merge_is_amended_without_its_parents(seeded: Store) -> None:
    row = ArtifactRow("0" * 32, "soup", 1, "merge", "2026-01-01", 0, 0, "ties", ["a@1", "b@1"])
    app = GraftApp(seeded.root, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        dialog = AmendDialog(seeded, row)
        await app.push_screen(dialog)
        await pilot.pause()
        parent = dialog.query_one("#parent", Input)
        assert parent.disabled and "its parents are its inputs" in parent.placeholder
        assert dialog.query_one("#method", Input).has_focus
