"""Delta statistics computed in one streaming pass with numpy: against torch's
dtype conversions, exact SVDs of real training deltas, and a memory bound."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from graft.lineage import deltas as deltas_module
from graft.lineage.floats import float_spans, round_to, to_f32
from graft.lineage.record import ensure_deltas
from graft.registry import Store, add
from tests.training import make_run

F8 = {"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64, **F8}


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(a, b, equal_nan=True))


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_every_bit_pattern_decodes_as_torch_does(dtype):
    width = {1: torch.uint8, 2: torch.int16, 8: torch.int64}[
        torch.empty((), dtype=DTYPES[dtype]).element_size()
    ]
    if width is torch.int64:
        values = torch.randn(10_000, dtype=torch.float64) * 1e3
    else:
        info = torch.iinfo(width)
        values = torch.arange(info.min, info.max + 1, dtype=width).view(DTYPES[dtype])
    assert _same(to_f32(_bits(values), dtype), values.float().numpy())


@pytest.mark.parametrize("dtype", ["BF16", "F16", *sorted(F8)])
def test_rounding_to_a_coarser_dtype_matches_torch(dtype):
    target = DTYPES[dtype]
    g = torch.Generator().manual_seed(0)
    finite = torch.finfo(target).max
    grid = torch.randn(100_000, generator=g).to(target).float()  # representable values
    up = torch.cat([grid[1:], grid[:1]])
    x = torch.cat(
        [
            torch.randn(100_000, generator=g) * torch.logspace(-9, 2, 100_000),
            (grid + up) / 2,  # exact ties (and near ties) between neighbours
            torch.tensor([0.0, -0.0, float("nan"), finite, -finite]),
        ]
    ).clamp(-finite, finite)
    expected = x.to(target).float().numpy()
    assert _same(round_to(x.numpy(), dtype), expected)


def test_spans_cover_the_blob_in_order_and_check_it(store: Store, tmp_path: Path):
    folder = tmp_path / "m"
    folder.mkdir()
    t = torch.randn(1000, 7).to(torch.bfloat16)
    save_file({"w": t}, folder / "model.safetensors")
    [(_, record)] = add(store, folder).manifest.tensors
    with store.blobs.open(record.blob) as blob:
        spans = list(float_spans(blob, "BF16", 7 * 300))
    assert [len(s) for s in spans] == [2100, 2100, 2100, 700]
    assert _same(np.concatenate(spans), t.float().numpy().ravel())


def test_the_sketch_is_exact_for_low_rank_matrices():
    rng = np.random.default_rng(3)
    a = (rng.standard_normal((300, 9)) @ rng.standard_normal((9, 200))).astype(np.float32)
    sketch = deltas_module._Sketch(200)
    for start in range(0, 300, 7):  # rows arrive in uneven blocks
        sketch.add(a[start : start + 7])
    exact = np.linalg.svd(a.astype(np.float64), compute_uv=False)[0] ** 2
    assert sketch.top_singular_value_squared() == pytest.approx(exact, rel=1e-5)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    make_run(out, checkpoints=2, every=20, hidden=128, layers=2)
    return out


def test_statistics_of_a_real_fine_tune_against_numpy(store: Store, run: Path):
    """Every statistic of every tensor of a real fine-tune: exact ones equal numpy's
    on the whole matrices; the stable rank (from the sketch) never under the exact
    one and within 25% of it."""
    base = add(store, run / "base", name="base").manifest
    child = add(store, run / "checkpoint-40", parent="base").manifest
    ensure_deltas(store, [child.id])
    with store.catalog.reading() as con:
        rows = con.execute(
            "SELECT tensor, status, frac_changed, rel_change, max_abs, stable_rank "
            "FROM tensor_deltas WHERE child_id = ?",
            [child.id],
        ).fetchall()
    old, new = (load_file(run / f / "model.safetensors") for f in ("base", "checkpoint-40"))
    assert {r[0] for r in rows} == set(new) and base.id != child.id
    matrices = 0
    for tensor, status, frac, rel, max_abs, stable_rank in rows:
        w, d = old[tensor].double().numpy(), (new[tensor].double() - old[tensor].double()).numpy()
        if not d.any():
            assert status == "identical"
            continue
        assert status == "changed"
        assert frac == pytest.approx(np.count_nonzero(d) / d.size)
        assert rel == pytest.approx(np.linalg.norm(d) / np.linalg.norm(w), rel=1e-5)
        assert max_abs == pytest.approx(np.abs(d).max(), rel=1e-6)
        if d.ndim == 2:
            sigma = np.linalg.svd(d, compute_uv=False)
            exact = (sigma**2).sum() / sigma[0] ** 2
            assert exact * (1 - 1e-4) <= stable_rank <= exact * 1.25, tensor
            matrices += 1
        else:
            assert stable_rank is None
    assert matrices >= 10


def test_recording_a_childs_deltas_streams_and_never_imports_torch(tmp_path: Path):
    """A 64 MB bf16 matrix and its fine-tune: whole-tensor float32 work would
    hold ≥ 3 × 128 MB; spans keep the process near its start-up size."""
    g = torch.Generator().manual_seed(0)
    weight = (torch.randn(8192, 4096, generator=g) * 0.02).to(torch.bfloat16)
    for name, w in (
        ("base", weight),
        ("child", weight + (0.001 * torch.randn(8192, 4096, generator=g)).to(torch.bfloat16)),
    ):
        (tmp_path / name).mkdir()
        save_file({"model.layers.0.mlp.up_proj.weight": w}, tmp_path / name / "model.safetensors")
    del weight
    env = {**os.environ, "GRAFT_STORE": str(tmp_path / "store"), "GRAFT_REPACK": "off"}
    code = (
        "import sys, json, graft; "
        f"graft.register({str(tmp_path / 'base')!r}, name='base'); "
        f"graft.register({str(tmp_path / 'child')!r}, parent='base'); "
        "rows = graft.touched(graft.Store.open(), 'child'); "
        "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]; "
        "print(json.dumps([len(rows), 'torch' in sys.modules, int(peak.split()[1]) / 1024]))"
    )  # VmHWM: this process's own peak (wait4's counts the forking parent's pages)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True)
    n_rows, torch_loaded, peak = json.loads(out.stdout)
    assert n_rows == 1 and torch_loaded is False
    assert peak < 300, f"peak RSS {peak:.0f} MB"
    rows = subprocess.run(
        [Path(sys.executable).parent / "graft", "touched", "child@1", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    [t] = json.loads(rows.stdout)
    assert t["rel_change"] == pytest.approx(0.05, rel=0.05) and not math.isnan(t["stable_rank"])
