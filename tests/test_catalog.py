"""The DuckDB catalog: schema, migrations, references, reindex, rm and gc."""

from __future__ import annotations

import duckdb
import pytest

from graft.registry import AmbiguousRef, ArtifactNotFound, Store, list_artifacts
from graft.registry.migrations import MIGRATIONS
from tests.conftest import SAMPLES, graft_json, make_model

TABLES = ("artifacts", "tensors", "files", "edges")


def _dump(store: Store) -> dict[str, list[tuple]]:
    with store.catalog.reading() as con:
        return {t: sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in TABLES}


def _demo(graft) -> None:
    graft("add", SAMPLES / "tiny-llama")
    graft("add", SAMPLES / "lora-copy", "--parent", "tiny-llama", "--method", "lora")
    graft(
        "add",
        SAMPLES / "tiny-llama-sft",
        "--parent",
        "tiny-llama",
        "--method",
        "sft",
        "--meta",
        "lr=3e-3",
    )


def test_migrations_are_recorded_in_order(store: Store):
    with store.catalog.reading() as con:
        rows = con.execute(
            "SELECT version, name FROM schema_migrations ORDER BY version"
        ).fetchall()
    assert rows == [(i, name) for i, (name, _) in enumerate(MIGRATIONS, start=1)]


def test_catalog_rows_describe_the_artifact(graft, store: Store):
    _demo(graft)
    with store.catalog.reading() as con:
        kind, n, config, adapter_config, meta, st_meta = con.execute(
            "SELECT kind, n_tensors, config->>'model_type', adapter_config, user_metadata->>'lr', "
            "safetensors_metadata->>'format' FROM artifacts WHERE name = 'tiny-llama-sft'"
        ).fetchone()
        assert (kind, n, config, adapter_config, meta, st_meta) == (
            "model",
            39,
            "llama",
            None,
            "3e-3",
            "pt",
        )
        r = con.execute(
            "SELECT adapter_config->>'peft_type', adapter_config->>'r' "
            "FROM artifacts WHERE name = 'lora-copy'"
        ).fetchone()
        assert r == ("LORA", "4")
        # 21 of the fine-tune's tensors are the base's: same blobs, stored once
        shared = con.execute(
            """SELECT count(*) FROM tensors t JOIN tensors b USING (name, blob)
               JOIN artifacts ta ON ta.id = t.artifact_id JOIN artifacts tb ON tb.id = b.artifact_id
               WHERE ta.name = 'tiny-llama-sft' AND tb.name = 'tiny-llama'"""
        ).fetchone()[0]
        assert shared == 39 - 18
        edges = con.execute(
            "SELECT c.name, p.name, e.relation, e.method FROM edges e "
            "JOIN artifacts c ON c.id = e.child_id "
            "JOIN artifacts p ON p.id = e.parent_id ORDER BY 1"
        ).fetchall()
        assert edges == [
            ("lora-copy", "tiny-llama", "adapter", "lora"),
            ("tiny-llama-sft", "tiny-llama", "finetune", "sft"),
        ]
        offset, position = con.execute(
            "SELECT file_offset, position FROM tensors t JOIN artifacts a ON a.id = t.artifact_id "
            "WHERE a.name = 'tiny-llama' AND t.name = 'lm_head.weight'"
        ).fetchone()
    raw = (SAMPLES / "tiny-llama" / "model.safetensors").read_bytes()
    _, lm_head = next(
        (f, t) for f, t in store.resolve_ref("tiny-llama").tensors if t.name == "lm_head.weight"
    )
    assert raw[offset : offset + lm_head.nbytes] == store.blobs.read(lm_head.blob)
    assert position >= 0


def test_refs_name_version_and_id_prefix(graft, store: Store, tmp_path):
    one = graft_json(graft, "add", make_model(tmp_path / "a", seed=1), "--name", "m")
    two = graft_json(graft, "add", make_model(tmp_path / "b", seed=2), "--name", "m")
    assert store.resolve_ref("m").id == two["id"]
    assert store.resolve_ref("m@1").id == one["id"]
    assert store.resolve_ref(one["id"][:8]).id == one["id"]
    assert store.resolve_ref(one["id"][:8].upper()).id == one["id"]
    with pytest.raises(ArtifactNotFound):
        store.resolve_ref("m@3")
    with pytest.raises(ArtifactNotFound):
        store.resolve_ref("nothing")


def test_ambiguous_prefix_lists_the_candidates(graft, store: Store, tmp_path):
    ids = [graft_json(graft, "add", make_model(tmp_path / str(s), seed=s))["id"] for s in range(40)]
    prefix = next(
        a[:1] for a in ids if sum(b.startswith(a[:1]) for b in ids) > 1
    )  # 40 ids over 16 first digits: some digit repeats
    with pytest.raises(AmbiguousRef, match="matches several artifacts"):
        store.resolve_ref(prefix)


def test_reindex_rebuilds_the_same_rows(graft, store: Store):
    _demo(graft)
    before = _dump(store)
    store.catalog.path.unlink()
    assert graft_json(graft, "reindex") == {"indexed": 3, "damaged": []}
    assert _dump(store) == before


def test_reindex_moves_a_broken_catalog_aside(graft, store: Store):
    _demo(graft)
    before = _dump(store)
    store.catalog.path.write_bytes(b"this is not a duckdb file" * 100)
    graft("ls", code=1)
    graft("reindex")
    assert _dump(store) == before
    assert list(store.root.glob("catalog.duckdb.broken-*"))


def test_catalog_heals_from_manifests_at_the_next_write(graft, store: Store, tmp_path):
    """A crash after the manifest is written but before it is indexed loses nothing."""
    _demo(graft)
    with store.catalog.writing() as con:
        con.execute(
            "DELETE FROM tensors; DELETE FROM files; DELETE FROM edges; DELETE FROM artifacts"
        )
    assert list_artifacts(store) == []
    graft("add", make_model(tmp_path / "x"))
    assert len(list_artifacts(store)) == 4


def test_a_reader_migrates_an_older_catalog_first(graft, store: Store):
    """The first read of a process finds the schema behind (a graft upgrade),
    migrates it, and reads the same rows as before."""
    _demo(graft)
    before = _dump(store)
    with duckdb.connect(str(store.catalog.path)) as con:  # as the previous graft left it
        con.execute("ALTER TABLE artifacts DROP COLUMN adapter_type")
        con.execute("ALTER TABLE artifacts DROP COLUMN amended")
        con.execute("DELETE FROM schema_migrations WHERE version = ?", [len(MIGRATIONS)])
    fresh = Store.open(store.root)  # a new process: nothing checked yet
    assert [r.adapter_type for r in list_artifacts(fresh)] == [None, "lora", None]
    assert _dump(fresh) == before


def test_a_reader_rebuilds_a_missing_catalog_from_the_manifests(graft, store: Store):
    _demo(graft)
    before = _dump(store)
    store.catalog.path.unlink()
    assert _dump(Store.open(store.root)) == before


def test_rm_refuses_a_parent_then_gc_frees_only_unreferenced_blobs(graft, store: Store):
    _demo(graft)
    blobs_before = set(store.blobs.keys())
    result = graft("rm", "tiny-llama", code=1)
    assert "parent of lora-copy@1, tiny-llama-sft@1" in result.stderr
    graft("rm", "tiny-llama-sft")
    assert {r.name for r in list_artifacts(store)} == {"tiny-llama", "lora-copy"}
    dry = graft_json(graft, "gc", "--dry-run")
    assert set(store.blobs.keys()) == blobs_before
    freed = graft_json(graft, "gc")
    assert freed["blobs_removed"] == dry["blobs_removed"] == 18 + 1  # 18 trained tensors + header
    graft("verify")
    graft("rm", "tiny-llama", "--force")
    graft("verify")


def test_catalog_is_plain_duckdb(graft, store: Store):
    """Users may open the catalog with DuckDB itself (when no graft command runs)."""
    _demo(graft)
    con = duckdb.connect(str(store.catalog.path), read_only=True)
    assert con.execute("SELECT count(*) FROM artifacts").fetchone() == (3,)
    con.close()


def test_readding_an_unindexed_artifact_indexes_it(graft, store: Store):
    """Killed after its manifest was written, an add that is re-run completes the index."""
    graft("add", SAMPLES / "lora-copy")
    with store.catalog.writing() as con:
        con.execute("DELETE FROM tensors; DELETE FROM files; DELETE FROM artifacts")
    again = graft_json(graft, "add", SAMPLES / "lora-copy")
    assert again["existed"] and again["bytes_new"] == 0
    assert [a["name"] for a in graft_json(graft, "ls")] == ["lora-copy"]
