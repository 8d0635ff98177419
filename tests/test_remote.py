"""Team registry: push, fetch and pull through a real S3 server (SeaweedFS) and a folder."""

from __future__ import annotations

import io
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from graft.registry import Store
from graft.registry.keys import hash_bytes
from graft.registry.manifest import _canonical, content_id
from graft.registry.objects import RemoteError
from graft.registry.remotes import get_remote, open_objects
from tests.conftest import SAMPLES, make_model
from tests.procs import GRAFT, graft_env, sha256_files
from tests.seaweed import SECRET_KEY, SeaweedS3
from tests.training import make_run


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    server.start()
    server.shared_bucket = server.bucket("graft-tests")
    yield server
    server.kill()


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only the credentials a test gives; never the machine's ~/.aws or an
    instance-metadata lookup (which would leave this machine)."""
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


def run(store: Path, *args: str | Path, env: dict[str, str] | None = None, code: int = 0):
    done = subprocess.run(
        [str(GRAFT), *map(str, args)],
        env={**graft_env(store), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == code, (args, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert SECRET_KEY not in done.stdout + done.stderr
    return done


def one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graft: error:"), done.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` but the lock files, with its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "locks" not in p.parts
    }


def s3_remote(s3: SeaweedS3, store: Path) -> dict[str, str]:
    """A fresh bucket set up as remote `team` of `store`; the environment to use it."""
    prefix = uuid.uuid4().hex[:12]
    run(
        store,
        "remote",
        "add",
        "team",
        f"s3://{s3.shared_bucket}/{prefix}",
        "--endpoint-url",
        s3.endpoint,
    )
    return s3.env()


def test_two_machines_share_a_registry(s3: SeaweedS3, tmp_path: Path):
    """A registers a base and a fine-tune and pushes the fine-tune; B fetches, sees
    both, asks what the fine-tune touched and where it came from without any
    weights, then pulls and exports files byte-identical to A's."""
    a, b = tmp_path / "a", tmp_path / "b"
    base, sft = SAMPLES / "tiny-llama", SAMPLES / "tiny-llama-sft"
    run(a, "add", base, "--name", "base")
    run(a, "add", sft, "--name", "sft", "--parent", "base", "--method", "sft")
    env = s3_remote(s3, a)
    pushed = json.loads(run(a, "push", "sft", "--json", env=env).stdout)
    assert [p["claim"] for p in pushed["artifacts"]] == ["base@1", "sft@1"]
    assert pushed["blobs_sent"] > 0
    again = json.loads(run(a, "push", "sft", "--json", env=env).stdout)
    assert again["blobs_sent"] == 0 and not any(p["new"] for p in again["artifacts"])

    url = json.loads(run(a, "remote", "list", "--json").stdout)[0]["url"]
    run(b, "remote", "add", "team", url, "--endpoint-url", s3.endpoint)
    fetched = json.loads(run(b, "fetch", "--json", env=env).stdout)
    assert fetched["claims"] == 2 and fetched["new_manifests"] == 2 and not fetched["refused"]
    listing = json.loads(run(b, "ls", "--remote", "team", "--json").stdout)
    assert [(r["name"], r["version"], r["where"]) for r in listing] == [
        ("base", 1, ["team"]),
        ("sft", 1, ["team"]),
    ]
    assert not list((b / "blobs").rglob("*"))  # no weights came

    run(b, "reindex")  # the catalog is rebuilt from what fetch kept
    assert json.loads(run(b, "ls", "--remote", "team", "--json").stdout) == listing
    one_line_error(run(b, "rm", "sft", code=1), "only known from a remote")

    touched_a = json.loads(run(a, "touched", "sft", "--json").stdout)
    touched_b = json.loads(run(b, "touched", "team:sft", "--json").stdout)
    assert {t.pop("parent") for t in touched_b} == {"team:base@1"}
    assert {t.pop("parent") for t in touched_a} == {"base@1"}
    assert touched_b == touched_a and touched_a
    by_method = json.loads(run(b, "touched", "--method", "sft", "--json").stdout)
    assert by_method["artifacts"] == ["team:sft@1"] and by_method["cells"]
    log_b = json.loads(run(b, "log", "sft", "--json").stdout)
    assert [(e["ref"], e["relation"]) for e in log_b] == [("team:base@1", "finetune")]
    sql = run(b, "sql", "SELECT name, remote FROM artifacts ORDER BY name", "--json").stdout
    assert json.loads(sql) == [
        {"name": "team:base", "remote": "team"},
        {"name": "team:sft", "remote": "team"},
    ]

    pulled = json.loads(run(b, "pull", "sft", "--json", env=env).stdout)
    assert pulled["artifacts"] == ["base@1", "sft@1"]
    run(b, "export", "sft", tmp_path / "out")
    assert sha256_files(tmp_path / "out") == sha256_files(sft)
    where = {r["name"]: r["where"] for r in json.loads(run(b, "ls", "--json").stdout)}
    assert where == {"base": ["local", "team"], "sft": ["local", "team"]}
    assert run(b, "verify").returncode == 0

    everything = [*snapshot(a).values(), *snapshot(b).values()]
    assert not any(SECRET_KEY.encode() in data for data in everything)


def test_a_fine_tune_whose_base_is_there_sends_only_what_changed(s3: SeaweedS3, tmp_path: Path):
    """Blobs travel as stored: after a repack, the fine-tune's are deltas against
    the base, and only those go up once the base is on the remote."""
    a, trained = tmp_path / "a", tmp_path / "run"
    make_run(trained, checkpoints=1)
    run(a, "add", trained / "base", "--name", "base")
    run(a, "add", trained / "checkpoint-10", "--name", "sft", "--parent", "base")
    run(a, "repack")
    env = s3_remote(s3, a)
    run(a, "push", "base", env=env)
    second = json.loads(run(a, "push", "sft", "--json", env=env).stdout)
    store = Store.open(a)
    base_keys = {k for f in store.resolve_ref("base").files for k in f.blob_keys()}
    new_keys = {k for f in store.resolve_ref("sft").files for k in f.blob_keys()} - base_keys
    assert second["blobs_sent"] == len(new_keys)
    assert second["bytes_sent"] == sum(store.blobs.size(k) for k in new_keys)
    raw = 0
    for key in new_keys:
        with store.blobs.open(key) as blob:
            raw += blob.size
    assert second["bytes_sent"] < 0.6 * raw  # a real fine-tune: its deltas compress


def test_four_stores_push_one_name_at_once(s3: SeaweedS3, tmp_path: Path):
    """Each of four different artifacts gets its own version; none is lost."""
    stores = [tmp_path / f"s{i}" for i in range(4)]
    env = {}
    for i, store in enumerate(stores):
        run(store, "add", make_model(tmp_path / f"m{i}", seed=i), "--name", "shared")
        if i == 0:
            env = s3_remote(s3, store)
            url = json.loads(run(store, "remote", "list", "--json").stdout)[0]["url"]
        else:
            run(store, "remote", "add", "team", url, "--endpoint-url", s3.endpoint)
    procs = [
        subprocess.Popen(
            [str(GRAFT), "push", "shared"],
            env={**graft_env(store), **env},
            stderr=subprocess.PIPE,
            text=True,
        )
        for store in stores
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    fetched = json.loads(run(stores[0], "fetch", "--json", env=env).stdout)
    assert fetched["claims"] == 4
    listing = json.loads(run(stores[0], "ls", "--remote", "team", "--json").stdout)
    ids = {Store.open(s).resolve_ref("shared").id for s in stores}
    assert sorted(r["version"] for r in listing) == [1, 2, 3, 4]
    assert {r["id"] for r in listing} == ids


def pushed_through_a_folder(tmp_path: Path, folder: Path, name: str) -> tuple[Path, Path]:
    """Stores a and b sharing remote `nfs` (a folder); a has added `folder` as
    `name` and pushed it. Returns (b, the shared folder)."""
    a, b, shared = tmp_path / "a", tmp_path / "b", tmp_path / "shared"
    shared.mkdir()
    run(a, "add", folder, "--name", name)
    for store in (a, b):
        run(store, "remote", "add", "nfs", shared.as_uri())
    run(a, "push", name)
    return b, shared


def test_a_folder_is_a_remote_too(tmp_path: Path):
    b, _ = pushed_through_a_folder(tmp_path, SAMPLES / "lora-copy", "adapter")
    run(b, "pull", "adapter")
    run(b, "export", "adapter", tmp_path / "out")
    assert sha256_files(tmp_path / "out") == sha256_files(SAMPLES / "lora-copy")


def test_exporting_a_remote_only_artifact_pulls_it_first(tmp_path: Path):
    b, _ = pushed_through_a_folder(tmp_path, SAMPLES / "tiny-llama", "base")
    run(b, "fetch")
    done = run(b, "export", "base", tmp_path / "out")
    assert "only on remote 'nfs': pulling it first" in done.stderr
    assert sha256_files(tmp_path / "out") == sha256_files(SAMPLES / "tiny-llama")


def _craft_manifest(doc: dict) -> bytes:
    """A manifest document with a valid checksum and id, whatever it holds."""
    from graft.registry.manifest import FileRecord

    files = tuple(FileRecord(f["path"], f["size"], f["blob"]) for f in doc["files"])
    doc = {**doc, "id": content_id(files)}
    body = {"format": 1, **doc}
    return json.dumps({**body, "checksum": hash_bytes(_canonical(body))}).encode()


def test_a_crafted_manifest_escaping_the_folder_is_refused(tmp_path: Path):
    shared, b = tmp_path / "shared", tmp_path / "b"
    shared.mkdir()
    payload = b"owned\n"
    key = hash_bytes(payload)
    data = _craft_manifest(
        {
            "name": "evil",
            "version": 1,
            "kind": "model",
            "created_at": "2026-01-01T00:00:00+00:00",
            "source": None,
            "files": [
                {"path": "../../escaped.txt", "size": 6, "blob": key, "tensors": [], "metadata": {}}
            ],
            "parents": [],
            "method": None,
            "meta": {},
        }
    )
    artifact_id = json.loads(data)["id"]
    (shared / "blobs" / key[:2]).mkdir(parents=True)
    (shared / "blobs" / key[:2] / key[2:]).write_bytes(payload)
    (shared / "manifests").mkdir()
    (shared / "manifests" / f"{artifact_id}.json").write_bytes(data)
    (shared / "names" / "evil").mkdir(parents=True)
    (shared / "names" / "evil" / "1.json").write_text(json.dumps({"id": artifact_id}))
    run(b, "remote", "add", "team", shared.as_uri())
    before = snapshot(b)
    fetched = run(b, "fetch")
    assert "leaves the artifact's folder" in fetched.stderr
    one_line_error(run(b, "pull", "evil", code=1), "'team' has no artifact 'evil'")
    out = tmp_path / "deep" / "er" / "out"
    one_line_error(run(b, "export", "team:evil", out, code=1))
    assert (
        not (tmp_path / "escaped.txt").exists() and not (tmp_path / "deep" / "escaped.txt").exists()
    )
    after = snapshot(b)
    assert {k for k in after if k.startswith("blobs/") or k.startswith("manifests/")} == {
        k for k in before if k.startswith("blobs/") or k.startswith("manifests/")
    }


def test_a_blob_that_does_not_hash_to_its_key_is_not_kept(tmp_path: Path):
    b, shared = pushed_through_a_folder(tmp_path, SAMPLES / "tiny-llama", "base")
    victim = max(
        (shared / "blobs").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0
    )
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    done = run(b, "pull", "base", code=1)
    one_line_error(done, "damaged", "refused")
    key = victim.parent.name + victim.name
    assert not Store.open(b).blobs.has(key)
    assert json.loads(run(b, "ls", "--json").stdout)[0]["where"] == ["nfs"]


def test_bad_remotes_fail_with_one_line(s3: SeaweedS3, tmp_path: Path):
    store = tmp_path / "s"
    run(store, "add", SAMPLES / "tiny-llama", "--name", "base")
    one_line_error(run(store, "push", "base", code=1), "no remote is set up")
    one_line_error(run(store, "push", "base", "--to", "nope", code=1), "no remote named 'nope'")
    for url, words in (
        ("http://x/y", "s3:// or file://"),
        ("s3://Bad_Bucket/x", "not a bucket name"),
        ("file://relative", "not a file URL"),
    ):
        one_line_error(run(store, "remote", "add", "r", url, code=1), *words)
    one_line_error(
        run(store, "remote", "add", "r", "s3://bkt/x", "--endpoint-url", "http://k:s@h", code=1),
        "holds credentials",
    )
    bucket = s3.shared_bucket
    run(
        store,
        "remote",
        "add",
        "team",
        f"s3://{bucket}/{uuid.uuid4().hex[:12]}",
        "--endpoint-url",
        s3.endpoint,
    )
    run(store, "remote", "add", "gone", "s3://no-such-bucket-here/p", "--endpoint-url", s3.endpoint)
    dead = f"http://127.0.0.1:{_closed_port()}"
    run(store, "remote", "add", "down", f"s3://{bucket}/x", "--endpoint-url", dead)
    before = snapshot(store)
    wrong = {**s3.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    cases = [
        (["push", "base", "--to", "team"], wrong, ["'team'", "AWS_SECRET_ACCESS_KEY"]),
        (["push", "base", "--to", "gone"], s3.env(), ["'gone'", "NoSuchBucket"]),
        (["fetch", "down"], s3.env(), ["'down'", "cannot reach"]),
        (["pull", "base", "--from", "team"], s3.env(), ["'team' has no artifact 'base'"]),
    ]
    for args, env, words in cases:
        done = run(store, *args, env=env, code=1)
        one_line_error(done, *words)
        assert SECRET_KEY not in done.stderr + done.stdout
    after = snapshot(store)
    after.pop("remotes/team/names.json", None)  # the fetch before the pull that failed
    assert after == before


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_remote_list_and_remove(tmp_path: Path):
    store = tmp_path / "s"
    run(store, "remote", "add", "a", "s3://bucket-a/p")
    run(store, "remote", "add", "b", "file:///srv/graft")
    assert [r["name"] for r in json.loads(run(store, "remote", "list", "--json").stdout)] == [
        "a",
        "b",
    ]
    one_line_error(run(store, "remote", "add", "a", "s3://other/p", code=1), "exists", "--force")
    run(store, "remote", "remove", "a")
    assert run(store, "remote", "list").stdout.split() == ["b", "file:///srv/graft"]
    one_line_error(run(store, "remote", "remove", "a", code=1), "no remote named 'a'")
    assert json.loads((store / "remotes.json").read_text()) == {
        "remotes": [{"name": "b", "url": "file:///srv/graft", "endpoint_url": None}]
    }


def test_claims_race_on_a_folder(tmp_path: Path):
    """Eight threads create one key: exactly one succeeds."""
    from concurrent.futures import ThreadPoolExecutor

    from graft.registry.remotes import Remote

    (tmp_path / "r").mkdir()
    objects = open_objects(Remote("r", (tmp_path / "r").as_uri()))
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda i: objects.create("names/x/1.json", str(i).encode()), range(8)))
    assert won.count(True) == 1
    assert [k for k, _ in objects.list("names/")] == ["names/x/1.json"]


def assert_consistent(objects) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Every claim has its manifest, every manifest its blobs, every encoded
    blob its reference; returns how many claims and blobs there are."""
    from graft.registry.codecs import read_footer
    from graft.registry.manifest import parse_manifest

    keys = {k for k, _ in objects.list("")}
    blobs = {k[6:].replace("/", "") for k in keys if k.startswith("blobs/")}
    claims = [k for k in keys if k.startswith("names/")]
    for key in claims:
        assert f"manifests/{json.loads(objects.get(key))['id']}.json" in keys, key
    for key in keys:
        if key.startswith("manifests/"):
            m = parse_manifest(objects.get(key))
            missing = {b for f in m.files for b in f.blob_keys()} - blobs
            assert not missing, (key, missing)
    for blob in blobs:
        data = objects.get(f"blobs/{blob[:2]}/{blob[2:]}")
        try:
            footer = read_footer(len(data), lambda o, n, d=data: d[o : o + n], blob)
        except ValueError:
            footer = None  # raw bytes that only look encoded
        assert footer is None or footer.ref is None or footer.ref in blobs, blob
    return len(claims), len(blobs)


def _fine_tunes(tmp_path: Path, dim: int, n: int = 1) -> tuple[Path, list[Path]]:
    """A base and `n` children that each differ from it slightly, so a repack
    encodes the children's blobs as deltas against the base's."""
    import torch
    from safetensors.torch import load_file, save_file

    base = make_model(tmp_path / "base", dim=dim, layers=4)
    weights = load_file(base / "model.safetensors")
    children = []
    for i in range(n):
        child = tmp_path / f"child-{i}"
        child.mkdir()
        g = torch.Generator().manual_seed(i + 1)
        tensors = {k: v + 0.001 * torch.randn(v.shape, generator=g) for k, v in weights.items()}
        save_file(tensors, child / "model.safetensors", metadata={"format": "pt"})
        (child / "config.json").write_bytes((base / "config.json").read_bytes())
        children.append(child)
    return base, children


def test_kill_9_during_push_leaves_the_remote_consistent(
    s3: SeaweedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Ten pushes killed, each of a new fine-tune: at a random moment, or as soon
    as its first blob is up. After each kill no claim lacks its manifest and no
    manifest a blob; then pushing them again finishes the job."""
    import random
    import time

    a = tmp_path / "a"
    base, children = _fine_tunes(tmp_path, dim=512, n=10)
    run(a, "add", base, "--name", "base")
    for i, child in enumerate(children):
        run(a, "add", child, "--name", f"c{i}", "--parent", "base")
    run(a, "repack")
    env = s3_remote(s3, a)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    objects = open_objects(get_remote(Store.open(a), "team"))
    rng = random.Random(7)
    cut_mid_way = 0
    for i in range(10):
        before = len(list(objects.list("blobs/")))
        proc = subprocess.Popen(
            [str(GRAFT), "push", f"c{i}"],
            env={**graft_env(a), **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if i % 2:
            time.sleep(rng.uniform(0.2, 2.0))
        else:  # the moment the first new blob is up
            while len(list(objects.list("blobs/"))) == before and proc.poll() is None:
                time.sleep(0.01)
        proc.kill()
        finished = proc.wait() == 0
        _, blobs = assert_consistent(objects)
        cut_mid_way += not finished and blobs > before
    assert cut_mid_way >= 3
    run(a, "push", *(f"c{i}" for i in range(10)), env=env)
    assert assert_consistent(objects)[0] == 11
    b = tmp_path / "b"
    url = json.loads(run(a, "remote", "list", "--json").stdout)[0]["url"]
    run(b, "remote", "add", "team", url, "--endpoint-url", s3.endpoint)
    run(b, "pull", "c0", "c9", env=env)
    for i in (0, 9):
        run(b, "export", f"c{i}", tmp_path / f"out-{i}")
        assert sha256_files(tmp_path / f"out-{i}") == sha256_files(children[i])


def test_a_server_killed_mid_push(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The push fails with one line, the remote stays consistent, and once the
    server is back the same push completes."""
    import time

    server = SeaweedS3(tmp_path / "weed")
    server.start()
    try:
        bucket = server.bucket("flaky")
        a = tmp_path / "a"
        base, [child] = _fine_tunes(tmp_path, dim=768)
        run(a, "add", base, "--name", "base")
        run(a, "add", child, "--name", "child", "--parent", "base")
        run(a, "remote", "add", "team", f"s3://{bucket}/r", "--endpoint-url", server.endpoint)
        env = server.env()
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        proc = subprocess.Popen(
            [str(GRAFT), "push", "child"],
            env={**graft_env(a), **env},
            stderr=subprocess.PIPE,
            text=True,
        )
        client = server.client()
        deadline = time.monotonic() + 60
        while not client.list_objects_v2(Bucket=bucket, Prefix="r/blobs/").get("KeyCount"):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        server.kill()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "remote 'team'" in lines[0] and "Traceback" not in err, err
        server.start()
        objects = open_objects(get_remote(Store.open(a), "team"))
        assert assert_consistent(objects)[0] == 0
        pushed = json.loads(run(a, "push", "child", "--json", env=env).stdout)
        assert [p["claim"] for p in pushed["artifacts"]] == ["base@1", "child@1"]
        assert assert_consistent(objects)[0] == 2
    finally:
        server.kill()


def test_removing_a_remote_forgets_what_was_fetched_from_it(tmp_path: Path):
    b, _ = pushed_through_a_folder(tmp_path, SAMPLES / "lora-copy", "adapter")
    run(b, "fetch")
    assert [r["name"] for r in json.loads(run(b, "ls", "--json").stdout)] == ["nfs:adapter"]
    run(b, "remote", "remove", "nfs")
    assert json.loads(run(b, "ls", "--json").stdout) == []
    assert not (b / "remotes" / "nfs").exists()
    assert Store.open(b).manifest_ids() == set()


def test_a_download_cut_mid_body_is_fetched_again(
    s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore retries requests, not a body that breaks while it streams: the
    download starts that object over, and the bytes counted match what is kept."""
    from botocore.exceptions import ResponseStreamingError

    from graft.registry.objects import READ_BYTES, ByteCounter, S3Objects

    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    data = os.urandom(3 * READ_BYTES + 5)
    s3.client().put_object(Bucket=s3.shared_bucket, Key="cut/blob", Body=data)
    objects = S3Objects("team", s3.shared_bucket, "cut", s3.endpoint)
    real_get = objects.client.get_object
    calls = []

    def cut_once(**kwargs):  # type: ignore[no-untyped-def]
        response = real_get(**kwargs)
        calls.append(kwargs["Key"])
        if len(calls) == 1:
            body = response["Body"]

            class Cut:
                def iter_chunks(self, size: int):  # type: ignore[no-untyped-def]
                    yield body.read(size)
                    raise ResponseStreamingError(error="connection reset")

            response["Body"] = Cut()
        return response

    monkeypatch.setattr(objects.client, "get_object", cut_once)
    counter = ByteCounter(len(data), None)
    out = io.BytesIO(b"x" * 10)
    out.seek(10)  # what was there before the download stays
    objects.download("blob", out, counter.add)
    assert out.getvalue() == b"x" * 10 + data
    assert counter.done == len(data) and calls == ["cut/blob", "cut/blob"]

    def always_cut(**kwargs):  # type: ignore[no-untyped-def]
        raise ResponseStreamingError(error="connection reset")

    monkeypatch.setattr(objects.client, "get_object", always_cut)
    with pytest.raises(RemoteError, match=r"remote 'team'.*ResponseStreamingError"):
        objects.download("blob", io.BytesIO(), counter.add)
