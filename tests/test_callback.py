"""GraftCallback: a real (tiny, CPU) Trainer run registers its checkpoints as a chain."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
)

from graft.lineage import register, touched
from graft.lineage.callback import GraftCallback
from graft.registry import Store
from tests.conftest import SAMPLES

BASE = SAMPLES / "tiny-llama"
TRAINER_STATE = {"optimizer.pt", "scheduler.pt", "training_args.bin", "rng_state.pth"}


def _train(output_dir: Path, callback: GraftCallback, *, steps: int = 6) -> Trainer:
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(BASE)
    texts = [f"the number {i} follows {i - 1} and comes before {i + 1}" for i in range(16)]
    dataset = [tokenizer(t, truncation=True, max_length=32) for t in texts]
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        save_strategy="steps",
        save_steps=2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=AutoModelForCausalLM.from_pretrained(BASE),
        args=args,
        train_dataset=dataset,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    trainer.add_callback(callback)
    trainer.train()
    return trainer


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_checkpoints_chain_from_the_base(store: Store, tmp_path: Path) -> None:
    register(BASE, name="tiny-llama")
    callback = GraftCallback(parent="tiny-llama", method="sft", meta={"run": "t1"})
    _train(tmp_path / "run", callback)

    assert len(callback.registered) == 3
    with store.catalog.reading() as con:
        base_id = store.resolve(con, "tiny-llama@1")
        rows = con.execute(
            "SELECT id, name, kind, method, user_metadata FROM artifacts WHERE kind = 'checkpoint'"
        ).fetchall()
        edges = con.execute("SELECT child_id, parent_id, relation, method FROM edges").fetchall()
    by_id = {r[0]: r for r in rows}
    assert set(by_id) == set(callback.registered)
    names = [by_id[i][1] for i in callback.registered]
    assert names == ["run/checkpoint-2", "run/checkpoint-4", "run/checkpoint-6"]
    chain = [base_id, *callback.registered]
    assert sorted(edges) == sorted(
        (child, parent, "checkpoint", "sft") for parent, child in itertools.pairwise(chain)
    )
    for step, artifact_id in zip((2, 4, 6), callback.registered, strict=True):
        _, _, kind, method, user_metadata = by_id[artifact_id]
        meta = json.loads(user_metadata)
        assert (kind, method) == ("checkpoint", "sft")
        assert meta["global_step"] == str(step)
        assert meta["run"] == "t1"
        assert float(meta["loss"]) > 0

    touches = touched(store, "run/checkpoint-2")
    trained = {n for n, p in AutoModelForCausalLM.from_pretrained(BASE).named_parameters()}
    assert {t.tensor for t in touches} == trained  # a full fine-tune moves every weight
    assert {(t.status, t.parent) for t in touches} == {("changed", "tiny-llama@1")}

    for artifact_id in callback.registered:
        stored = {f.path for f in store.load_manifest(artifact_id).files}
        assert "model.safetensors" in stored
        assert "trainer_state.json" in stored
        assert not stored & TRAINER_STATE
    on_disk = {p.name for p in (tmp_path / "run" / "checkpoint-2").iterdir()}
    assert on_disk >= TRAINER_STATE  # written by the Trainer, left out by graft


def test_registration_errors_warn_and_training_finishes(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    callback = GraftCallback(parent="no-such-model", method="sft")
    with caplog.at_level(logging.WARNING, logger="graft.lineage.callback"):
        trainer = _train(tmp_path / "run", callback, steps=2)

    assert trainer.state.global_step == 2
    assert callback.registered == []
    warnings = [r for r in caplog.records if r.name == "graft.lineage.callback"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "checkpoint-2" in warnings[0].getMessage()
    assert "no-such-model" in warnings[0].getMessage()


def test_each_checkpoint_is_pushed_as_it_is_registered(store: Store, tmp_path: Path) -> None:
    """push_to: every checkpoint (and the base, its ancestor) reaches the remote,
    where another store finds the whole chain."""
    from graft.registry import add_remote, fetch, list_artifacts

    shared = tmp_path / "shared"
    shared.mkdir()
    add_remote(store, "team", shared.as_uri())
    register(BASE, name="tiny-llama")
    callback = GraftCallback(parent="tiny-llama", method="sft", push_to="team")
    _train(tmp_path / "run", callback, steps=4)

    other = Store.open(tmp_path / "other")
    add_remote(other, "team", shared.as_uri())
    assert fetch(other).claims == 3
    rows = {r.name: r for r in list_artifacts(other, remote="team")}
    assert set(rows) == {"tiny-llama", "run/checkpoint-2", "run/checkpoint-4"}
    assert rows["run/checkpoint-4"].parents == ["team:run/checkpoint-2@1"]
    assert {r.id for r in rows.values()} == {
        store.resolve_ref(ref).id for ref in ("tiny-llama", *callback_refs(callback, store))
    }
    assert touched(other, "team:run/checkpoint-2")  # its deltas came with it


def callback_refs(callback: GraftCallback, store: Store) -> list[str]:
    return [store.load_manifest(i).ref for i in callback.registered]
