"""`graft sql` (read-only, sandboxed) and `graft export-catalog --parquet`."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from tests.conftest import SAMPLES, graft_json


@pytest.fixture
def demo(graft):
    graft("demo")
    return graft


def test_sql_over_tables_and_views(demo):
    rows = graft_json(
        demo,
        "sql",
        "SELECT name, count(*) AS n FROM layer_touch GROUP BY name ORDER BY name",
    )
    # layer_touch: one row per (artifact, layer, module) changed
    assert rows == [
        {"name": "demo-soup", "n": 22},  # the demo's TIES merge, against its base
        {"name": "lora-copy", "n": 8},
        {"name": "lora-count", "n": 12},
        {"name": "lora-reverse", "n": 28},
        {"name": "tiny-llama-sft", "n": 18},
    ]
    lineage = graft_json(
        demo,
        "sql",
        "SELECT a.name, p.name AS ancestor, depth FROM artifact_lineage l "
        "JOIN artifacts a ON a.id = l.artifact_id JOIN artifacts p ON p.id = l.ancestor_id "
        "WHERE a.name = 'tiny-llama-sft'",
    )
    assert lineage == [{"name": "tiny-llama-sft", "ancestor": "tiny-llama", "depth": 1}]
    table = demo("sql", "SELECT name, kind FROM artifacts ORDER BY name LIMIT 2").stdout
    assert "lora-copy" in table and "adapter" in table


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("DELETE FROM artifacts", "read-only"),
        ("CREATE TABLE x (a INT)", "read-only"),
        ("COPY artifacts TO 'stolen.csv'", "file system operations are disabled"),
        ("SELECT * FROM read_csv('/etc/passwd')", "file system operations are disabled"),
        ("SELEC 1", "syntax error"),
        ("SELECT * FROM no_such_table", "no_such_table"),
    ],
)
def test_sql_that_writes_or_fails_is_one_line(demo, store, query, problem):
    before = graft_json(demo, "ls")
    result = demo("sql", query, code=1)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graft: error: SQL failed")
    assert problem in lines[0] and "Traceback" not in result.stderr
    assert graft_json(demo, "ls") == before


def test_export_catalog_writes_every_table_as_parquet(demo, tmp_path):
    out = demo("export-catalog", "--parquet", tmp_path / "pq").stdout.split()
    names = sorted(p.rsplit("/", 1)[1] for p in out)
    assert names == sorted(
        f"{t}.parquet"
        for t in ("artifacts", "tensors", "files", "edges", "tensor_deltas", "delta_pairs")
    )
    artifacts = pq.read_table(tmp_path / "pq" / "artifacts.parquet")
    assert sorted(artifacts.column("name").to_pylist()) == [
        "demo-soup",
        "lora-copy",
        "lora-count",
        "lora-reverse",
        "tiny-llama",
        "tiny-llama-sft",
    ]
    deltas = pq.read_table(tmp_path / "pq" / "tensor_deltas.parquet")
    assert deltas.num_rows > 0 and "stable_rank" in deltas.column_names


def test_log_shows_ancestors_and_children(demo, graft, tmp_path):
    graft("add", SAMPLES / "lora-copy")  # already there: nothing new
    ancestors = graft_json(demo, "log", "lora-copy")
    assert [(e["ref"], e["relation"], e["method"], e["via"]) for e in ancestors] == [
        ("tiny-llama@1", "adapter", "lora", "lora-copy@1")
    ]
    children = graft_json(demo, "log", "tiny-llama", "--children")
    assert sorted(e["ref"] for e in children) == [
        *["demo-soup@1"] * 3,  # a child of the base, of the fine-tune and of the adapter
        "lora-copy@1",
        "lora-count@1",
        "lora-reverse@1",
        "tiny-llama-sft@1",
    ]
    text = demo("log", "tiny-llama-sft").stdout
    assert "tiny-llama-sft@1" in text and "tiny-llama@1" in text and "finetune by sft" in text
    demo("log", "nope", code=1)
