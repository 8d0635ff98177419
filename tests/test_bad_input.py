"""Bad input: one line on stderr naming the file and the defect, exit 1, no
traceback, nothing on stdout, and the store exactly as it was.

Every case runs the installed `graft` console script in a subprocess, with
GRAFT_STORE pointing at a private copy of a small store that already holds one
artifact. The copy is byte-identical to the template (whose `graft ls --json`
is taken once), so "unchanged" means: the same files with the same bytes (lock
files aside) and the same `graft ls --json` after the bad command.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
from safetensors import safe_open  # noqa: E402

GRAFT = Path(sys.executable).parent / "graft"
F32_PAIR = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}  # two floats, 8 bytes


# -- helpers -----------------------------------------------------------------


def write_raw(
    path: Path, header: dict[str, Any] | bytes, data: bytes = b"", header_len: int | None = None
) -> Path:
    """Write a safetensors-shaped file by hand: u64 length, header bytes, data.

    `header_len` overrides the length prefix, to claim more than is there.
    """
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if header_len is None else header_len
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def tensor(
    begin: int, end: int, *, shape: list[Any] | None = None, dtype: str = "F32"
) -> dict[str, Any]:
    """A header entry; the default shape is the F32 vector that fills [begin, end)."""
    if shape is None:
        shape = [(end - begin) // 4]
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def save_valid(path: Path, seed: int = 0) -> Path:
    """A real safetensors file written by the safetensors library."""
    path.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    safetensors_torch.save_file({"w": torch.randn(2, 3, generator=g)}, str(path))
    return path


def graft(*args: str, store: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FORCE_COLOR"}
    env.update(GRAFT_STORE=str(store), NO_COLOR="1", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [str(GRAFT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def snapshot(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `root` except lock files; folders too."""
    snap = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel == "locks" or rel.startswith("locks/"):
            continue
        snap[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return snap


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 1, empty stdout, no traceback, and one `graft: error:` line holding each needle."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), result.stderr
    line = lines[0]
    assert line.startswith("graft: error: "), line  # not "internal error": that is a bug
    for needle in needles:
        shown = needle.replace("\n", "\\n")  # control characters are shown escaped
        assert shown in line, f"{shown!r} not in {line!r}"
    return line


@dataclass(frozen=True)
class Template:
    store: Path
    files: dict[str, str]
    listing: list[dict[str, Any]]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """A store holding one valid artifact, built once and copied per test."""
    work = tmp_path_factory.mktemp("template")
    store = work / "store"
    result = graft("add", str(save_valid(work / "base.safetensors")), store=store, cwd=work)
    assert result.returncode == 0, result.stderr
    listing = graft("ls", "--json", store=store, cwd=work)
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)
    assert [r["name"] for r in rows] == ["base"]
    return Template(store, snapshot(store), rows)


@pytest.fixture
def store(template: Template, tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(template.store, copy)
    assert snapshot(copy) == template.files
    return copy


def assert_store_unchanged(store: Path, template: Template, cwd: Path) -> None:
    assert snapshot(store) == template.files
    listing = graft("ls", "--json", store=store, cwd=cwd)
    assert listing.returncode == 0, listing.stderr
    assert json.loads(listing.stdout) == template.listing


# -- cases: `graft add PATH` with a bad PATH -----------------------------------
# Each builder makes its input under `src` and returns (path to add, name the
# message must contain); each case adds the substrings that name the defect.

Builder = Callable[[Path], tuple[Path, str]]
BAD = "bad.safetensors"
SHARD1, SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
INDEX = "model.safetensors.index.json"


def case(build: Builder, *problem: str, case_id: str) -> Any:
    """One parametrized case: how to make the input, and what the message must say."""
    return pytest.param(build, problem, id=case_id)


def bad(
    header: dict[str, Any] | bytes, data_len: int = 8, header_len: int | None = None
) -> Builder:
    """A single hand-made file with `data_len` zero bytes of data."""
    return lambda src: (write_raw(src / BAD, header, bytes(data_len), header_len), BAD)


def missing(src: Path) -> tuple[Path, str]:
    return src / "nowhere.safetensors", "nowhere.safetensors"


def config_only(src: Path) -> tuple[Path, str]:
    folder = src / "weightless"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    return folder, "weightless"


def text_file(src: Path, name: str = "notes.txt") -> tuple[Path, str]:
    (src / name).write_text("not weights\n")
    return src / name, name


def empty_file(src: Path) -> tuple[Path, str]:
    (src / "empty.safetensors").write_bytes(b"")
    return src / "empty.safetensors", "empty.safetensors"


def truncated(src: Path) -> tuple[Path, str]:
    path = save_valid(src / "cut.safetensors")
    path.write_bytes(path.read_bytes()[:-5])
    return path, "cut.safetensors"


def model_folder(src: Path, shards: dict[str, dict[str, Any]], **texts: str) -> Path:
    """A folder of shards (file name → header of 8-byte tensors) plus text files."""
    folder = src / "model"
    for shard, header in shards.items():
        write_raw(folder / shard, header, bytes(8 * len(header)))
    for name, text in texts.items():
        (folder / name).write_text(text)
    return folder


def index(weight_map: dict[str, Any]) -> dict[str, str]:
    return {INDEX: json.dumps({"metadata": {"total_size": 16}, "weight_map": weight_map})}


def dup_across_shards(src: Path) -> tuple[Path, str]:
    return model_folder(src, {SHARD1: {"w": F32_PAIR}, SHARD2: {"w": F32_PAIR}}), SHARD2


def index_missing_shard(src: Path) -> tuple[Path, str]:
    return model_folder(src, {SHARD1: {"a": F32_PAIR}}, **index({"a": SHARD1, "b": SHARD2})), INDEX


def index_missing_tensor(src: Path) -> tuple[Path, str]:
    shards = {SHARD1: {"a": F32_PAIR}, SHARD2: {"b": F32_PAIR}}
    return model_folder(src, shards, **index({"a": SHARD1, "ghost": SHARD2})), INDEX


def index_text(text: str) -> Builder:
    return lambda src: (model_folder(src, {SHARD1: {"a": F32_PAIR}}, **{INDEX: text}), INDEX)


def index_shard_list(src: Path) -> tuple[Path, str]:
    return model_folder(src, {SHARD1: {"a": F32_PAIR}}, **index({"a": [SHARD1]})), INDEX


def config_not_json(src: Path) -> tuple[Path, str]:
    folder = src / "model"
    save_valid(folder / "model.safetensors")
    (folder / "config.json").write_text("{'model_type': 'llama'}")
    return folder, "config.json"


def adapter_config_not_json(src: Path) -> tuple[Path, str]:
    folder = src / "adapter"
    save_valid(folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text('{"r": 8,')
    return folder, "adapter_config.json"


def pickled(src: Path) -> tuple[Path, str]:
    folder = src / "pickled"
    folder.mkdir()
    torch.save({"w": torch.ones(2, 2)}, folder / "pytorch_model.bin")
    return folder, "pytorch_model.bin"


PAIR = json.dumps(F32_PAIR).encode()
HUGE_INT = b"1" + b"0" * 5000  # past Python's 4300-digit int parsing limit

ADD_CASES = [
    case(missing, "no such file", case_id="missing-path"),
    case(config_only, "no weights", case_id="folder-without-weights"),
    case(text_file, "not a safetensors file", case_id="not-safetensors"),
    case(empty_file, "0 bytes", "too short", case_id="empty-file"),
    case(truncated, "truncated", case_id="truncated"),
    case(bad({"w": F32_PAIR}, header_len=4096), "past the end", case_id="header-past-eof"),
    case(bad(b"{}", 64, header_len=200 * 1024 * 1024), "cap", case_id="header-over-cap"),
    case(bad(b'{"\xff\xfe": 1}'), "not UTF-8", case_id="header-not-utf8"),
    case(bad(b"[%s]" % PAIR), "JSON list", case_id="header-list"),
    case(bad(b"definitely not json"), "not valid JSON", case_id="header-not-json"),
    case(bad({"w": tensor(0, 8, dtype="F31")}), "unknown dtype", "F31", case_id="unknown-dtype"),
    case(bad({"w": tensor(0, 8, shape=[-2])}), "non-negative", "-2", case_id="negative-dim"),
    case(bad({"w": tensor(0, 8, shape=[2.0])}), "non-negative", "2.0", case_id="float-dim"),
    case(bad({"w": tensor(0, 8, shape=[True, 2])}), "non-negative", "True", case_id="bool-dim"),
    case(bad({"w": tensor(0, 8, shape=[2**40, 2**40])}), "needs", "span 8", case_id="overflow"),
    case(bad({"w": tensor(8, 0, shape=[2])}), "reversed", case_id="offsets-reversed"),
    case(bad({"a": tensor(0, 8), "b": tensor(4, 12)}, 12), "'b'", "overlaps", case_id="overlap"),
    case(bad({"a": tensor(0, 8), "b": tensor(12, 20)}, 20), "'b'", "gap of 4", case_id="gap"),
    case(bad({"w": tensor(0, 8)}, 4), "4-byte data buffer", case_id="offsets-past-buffer"),
    case(bad({"w": tensor(0, 8)}, 12), "after the last tensor", case_id="trailing-bytes"),
    case(bad({"w": tensor(0, 8, shape=[3])}), "needs 12 bytes", "span 8", case_id="size-mismatch"),
    case(bad(b'{"w": %s, "w": %s}' % (PAIR, PAIR)), "'w' appears twice", case_id="dup-in-file"),
    case(bad({"__metadata__": {"step": 1}, "w": F32_PAIR}), "__metadata__", case_id="meta-int"),
    case(dup_across_shards, "'w'", SHARD1, "in both", case_id="dup-across-shards"),
    case(index_missing_shard, SHARD2, "is not in", case_id="index-missing-shard"),
    case(index_missing_tensor, "'ghost'", SHARD2, "not in shard", case_id="index-missing-tensor"),
    case(index_text('{"weight_map": '), "not valid JSON", case_id="index-not-json"),
    case(config_not_json, "not valid JSON", case_id="config-not-json"),
    case(adapter_config_not_json, "not valid JSON", case_id="adapter-config-not-json"),
    case(pickled, "--allow-pickle", case_id="pickle-refused"),
    # Hostile names and values.
    case(
        lambda src: (src / "[/oops]", "[/oops]"),
        "no such file",
        case_id="markup-closing-tag-in-path",
    ),
    case(
        lambda src: text_file(src, "[red]notes.txt"),
        "not a safetensors file",
        case_id="markup-tag-in-file-name",
    ),
    case(
        lambda src: text_file(src, "no\ntes.txt"),
        "not a safetensors file",
        case_id="newline-in-file-name",
    ),
    case(
        bad({"w": tensor(0, 8, dtype=["F32"])}),  # type: ignore[arg-type]
        "dtype",
        case_id="dtype-not-a-string",
    ),
    case(
        bad({"w": tensor(0, 8, shape=[10**200, 10**200])}),
        "span 8",
        case_id="astronomic-shape",
    ),
    case(
        bad(b'{"w": {"dtype": "F32", "shape": [%s], "data_offsets": [0, 8]}}' % HUGE_INT),
        "not valid JSON",
        case_id="integer-over-4300-digits",
    ),
    case(
        bad({"__metadata__": [], "w": F32_PAIR}),
        "__metadata__",
        case_id="metadata-empty-list",
    ),
    case(
        index_text("[]"),
        "weight_map",
        case_id="index-is-a-list",
    ),
    case(
        index_shard_list,
        "'a'",
        case_id="index-shard-not-a-string",
    ),
]


@pytest.mark.parametrize(("build", "problem"), ADD_CASES)
def test_bad_input_to_add(
    build: Builder, problem: tuple[str, ...], store: Path, template: Template, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    path, name = build(src)
    result = graft("add", str(path), store=store, cwd=tmp_path)
    assert_one_line_error(result, name, *problem)
    assert_store_unchanged(store, template, tmp_path)


# -- cases: a bad store ----------------------------------------------------------


def test_store_folder_that_is_not_a_store(store: Path, template: Template, tmp_path: Path) -> None:
    foreign = tmp_path / "my-documents"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("chapter one\n")
    before = snapshot(foreign)
    path = save_valid(tmp_path / "ok.safetensors")
    result = graft("--store", str(foreign), "add", str(path), store=store, cwd=tmp_path)
    assert_one_line_error(result, "my-documents", "not a graft store")
    assert snapshot(foreign) == before
    assert snapshot(store) == template.files  # --store wins over GRAFT_STORE


def test_store_that_is_a_file(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "store.txt"
    not_a_folder.write_text("hello\n")
    result = graft("--store", str(not_a_folder), "ls", store=tmp_path / "unused", cwd=tmp_path)
    assert_one_line_error(result, "store.txt", "is a file")
    assert not_a_folder.read_text() == "hello\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.txt"]


# -- cases: unknown references and bad options ---------------------------------


def test_show_unknown_ref(store: Path, template: Template, tmp_path: Path) -> None:
    result = graft("show", "no-such-artifact", store=store, cwd=tmp_path)
    assert_one_line_error(result, "'no-such-artifact'", "no artifact")
    assert_store_unchanged(store, template, tmp_path)


def test_export_unknown_ref(store: Path, template: Template, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = graft("export", "no-such-artifact", str(out), store=store, cwd=tmp_path)
    assert_one_line_error(result, "'no-such-artifact'", "no artifact")
    assert not out.exists()
    assert_store_unchanged(store, template, tmp_path)


def test_add_with_unknown_parent(store: Path, template: Template, tmp_path: Path) -> None:
    path = save_valid(tmp_path / "child.safetensors", seed=1)
    result = graft("add", "--parent", "no-such-thing", str(path), store=store, cwd=tmp_path)
    assert_one_line_error(result, "'no-such-thing'", "not in the store")
    assert_store_unchanged(store, template, tmp_path)


def test_meta_without_equals_is_usage_error(
    store: Path, template: Template, tmp_path: Path
) -> None:
    path = save_valid(tmp_path / "child.safetensors", seed=1)
    result = graft("add", "--meta", "foo", str(path), store=store, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert "'foo' is not KEY=VALUE" in result.stderr
    assert_store_unchanged(store, template, tmp_path)


# -- positive controls -------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: save_valid(p, seed=2), id="safetensors-library"),
        pytest.param(
            lambda p: write_raw(p, {"a": tensor(0, 8), "b": tensor(8, 12, shape=[])}, bytes(12)),
            id="write_raw",
        ),
    ],
)
def test_valid_file_is_added(make: Callable[[Path], Path], store: Path, tmp_path: Path) -> None:
    path = make(tmp_path / "good.safetensors")
    with safe_open(str(path), "pt") as f:  # the library agrees it is valid
        assert list(f.keys())
    result = graft("add", "--json", str(path), store=store, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["name"] == "good"
    listing = graft("ls", "--json", store=store, cwd=tmp_path)
    assert [r["name"] for r in json.loads(listing.stdout)] == ["base", "good"]


def test_allow_pickle_converts(store: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    g = torch.Generator().manual_seed(3)
    state = {"w": torch.randn(3, 4, generator=g), "b": torch.arange(4, dtype=torch.int64)}
    torch.save(state, folder / "pytorch_model.bin")
    result = graft("add", "--allow-pickle", str(folder), store=store, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    result = graft("export", "pickled", str(out), store=store, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    loaded = safetensors_torch.load_file(str(out / "model.safetensors"))
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype
        assert torch.equal(loaded[key], value)
