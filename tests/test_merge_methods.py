"""Merge-method formulas against plain float64 numpy implementations of the spec.

The references below are written from MERGE_SEMANTICS.md with loops and sorting, a different
code path from the torch code; random masks are rebuilt from the same keyed draws.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from graft.merge import chunks, methods
from graft.merge.errors import MergeConfigError, MergeInputError
from graft.merge.methods import (
    METHODS,
    Method,
    TensorJob,
    get_method,
    keep_mask,
    keyed_uniform,
)

SHAPES = [(5, 7), (11,)]
FAMILY = [
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
]
CONSENSUS = {"ties", "dare_ties", "breadcrumbs_ties", "della"}
SPARSIFIER = {
    "task_arithmetic": None,
    "ties": "magnitude",
    "dare_linear": "random",
    "dare_ties": "random",
    "breadcrumbs": "outliers",
    "breadcrumbs_ties": "outliers",
    "della": "magprune",
    "della_linear": "magprune",
}


# ---------------------------------------------------------------- plain references


def draws(seed: int, name: str, index: int, shape: tuple[int, ...]) -> np.ndarray:
    return keyed_uniform(seed, name, index, shape).numpy().astype(np.float64)


def ref_sparsify(kind, delta, values, uniform):
    """The kept (unweighted) task vector, before rescaling."""
    density = values.get("density", 1.0)
    if kind is None or density >= 1:
        return delta.copy()
    flat = delta.reshape(-1)
    n = flat.size
    keep = np.zeros(n, dtype=bool)
    if kind == "magnitude":
        k = max(1, math.floor(density * n))
        order = sorted(range(n), key=lambda e: -abs(flat[e]))
        for e in order[:k]:
            keep[e] = True
    elif kind == "random":
        keep = uniform.reshape(-1) < density
    elif kind == "outliers":
        t = math.floor(density * n)
        g = math.floor(values["gamma"] * n)
        b = max(0, n - t - g)
        order = sorted(range(n), key=lambda e: abs(flat[e]))
        for e in order[b : b + t]:
            keep[e] = True
    elif kind == "magprune":
        eps = values["epsilon"]
        rows = delta.reshape(delta.shape[0], -1) if delta.ndim >= 2 else delta.reshape(1, -1)
        prob = np.zeros(rows.shape)
        n_row = rows.shape[1]
        for r in range(rows.shape[0]):
            order = sorted(range(n_row), key=lambda c, r=r: abs(rows[r, c]))
            for rank, c in enumerate(order):
                prob[r, c] = density if n_row == 1 else density - eps + 2 * eps * rank / (n_row - 1)
        keep = uniform.reshape(-1) < prob.reshape(-1)
    return np.where(keep, flat, 0.0).reshape(delta.shape)


def ref_family(method, base, xs, input_values, params, seed, name):
    kind = SPARSIFIER[method]
    weights = [v["weight"] for v in input_values]
    us = []
    for i, (x, values) in enumerate(zip(xs, input_values, strict=True)):
        delta = x - base
        kept = ref_sparsify(kind, delta, values, draws(seed, name, i, x.shape))
        if params.get("rescale") and kind is not None and values.get("density", 1.0) < 1:
            before, after = np.abs(delta).sum(), np.abs(kept).sum()
            if before >= 1e-7 and after >= 1e-7:
                kept = kept * before / after
        us.append(weights[i] * kept)
    flat_us = [u.reshape(-1) for u in us]
    out = np.zeros(base.size)
    for e in range(base.size):
        if method in CONSENSUS:
            sign = 1.0 if sum(u[e] for u in flat_us) >= 0 else -1.0
            num = sum(u[e] for u in flat_us if u[e] != 0 and np.sign(u[e]) == sign)
            div = sum(w for w, u in zip(weights, flat_us, strict=True) if u[e] * sign > 0)
        else:
            num = sum(u[e] for u in flat_us)
            div = sum(weights)
        if abs(div) < 1e-8:
            div = 1.0
        out[e] = num / div if params["normalize"] else num
    return base + params["lambda"] * out.reshape(base.shape)


def ref_slerp(a, b, t):
    fa, fb = a.reshape(-1), b.reshape(-1)
    na, nb = np.linalg.norm(fa), np.linalg.norm(fb)
    na = 1.0 if na <= 1e-8 else na
    nb = 1.0 if nb <= 1e-8 else nb
    c = float(np.clip(np.dot(fa / na, fb / nb), -1, 1))
    if abs(c) > 0.9995:
        return (1 - t) * a + t * b
    theta = math.acos(c)
    return (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)


def ref_model_stock(base, xs, filter_wise):
    k = len(xs)
    rows_of = (
        (lambda m: m.reshape(m.shape[0], -1) if m.ndim >= 2 else m.reshape(1, -1))
        if filter_wise
        else (lambda m: m.reshape(1, -1))
    )
    deltas = [rows_of(x - base) for x in xs]
    mean = sum(xs) / k
    out = np.zeros_like(rows_of(base))
    for r in range(out.shape[0]):
        cosines = []
        for i in range(k):
            for j in range(i + 1, k):
                di, dj = deltas[i][r], deltas[j][r]
                denom = max(np.linalg.norm(di) * np.linalg.norm(dj), 1e-6)
                cosines.append(min(1.0, max(-1.0, float(di @ dj) / denom)))
        c = sum(cosines) / len(cosines)
        bottom = 1 + (k - 1) * c
        t = 0.0 if abs(bottom) < 1e-6 else k * c / bottom
        out[r] = t * rows_of(mean)[r] + (1 - t) * rows_of(base)[r]
    return out.reshape(base.shape)


# ---------------------------------------------------------------- helpers


def tensors(shape, count, seed=0):
    """A float32 base and `count` fine-tunes; the references read the same float32 values."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=shape).astype(np.float32)
    xs = [(base + rng.normal(scale=0.1, size=shape)).astype(np.float32) for _ in range(count)]
    return base, xs


def make_job(name, base, xs, input_values, params=None, seed=0):
    return TensorJob(
        name=name,
        base=None if base is None else torch.from_numpy(np.asarray(base, dtype=np.float32)),
        inputs=tuple(torch.from_numpy(np.asarray(x, dtype=np.float32)) for x in xs),
        input_params=tuple(dict(v) for v in input_values),
        params=dict(params or {}),
        seed=seed,
    )


def only_declared(method: Method, values: dict, scope: str | None = None) -> dict:
    """The values `method` declares (in `scope`, when given)."""
    return {
        k: v
        for k, v in values.items()
        if (p := method.param(k)) is not None and scope in (None, p.scope)
    }


def run(method_name, base, xs, input_values, params=None, seed=0, name="model.w"):
    method = get_method(method_name)
    job = make_job(
        name,
        base,
        xs,
        [only_declared(method, v, "input") for v in input_values],
        only_declared(method, params or {}, "global"),
        seed,
    )
    return method.merge(job).numpy().astype(np.float64)


def f64(a):
    return np.asarray(a, dtype=np.float64)


# ---------------------------------------------------------------- against the references


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method", FAMILY)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("rescale", [False, True])
def test_task_vector_family_matches_reference(method, shape, normalize, rescale):
    base, xs = tensors(shape, 3, seed=len(method))
    input_values = [
        {"weight": 0.7, "density": 0.6, "gamma": 0.1, "epsilon": 0.15},
        {"weight": -0.4, "density": 0.35, "gamma": 0.2, "epsilon": 0.1},
        {"weight": 1.3, "density": 0.7, "gamma": 0.0, "epsilon": 0.2},
    ]
    params = {"normalize": normalize, "rescale": rescale, "lambda": 0.9}
    m = get_method(method)
    declared = only_declared(m, params)
    full = {p.name: p.default for p in m.global_params} | declared
    full_inputs = [
        {p.name: p.default for p in m.input_params} | only_declared(m, v) for v in input_values
    ]
    got = run(method, base, xs, input_values, params, seed=7, name=f"layers.0.{method}")
    want = ref_family(
        method, f64(base), [f64(x) for x in xs], full_inputs, full, 7, f"layers.0.{method}"
    )
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("normalize", [False, True])
def test_linear_matches_reference(shape, normalize):
    _, xs = tensors(shape, 3, seed=3)
    weights = [0.5, 2.0, -0.75]
    got = run("linear", None, xs, [{"weight": w} for w in weights], {"normalize": normalize})
    total = sum(w * f64(x) for w, x in zip(weights, xs, strict=True))
    want = total / sum(weights) if normalize else total
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t", [0.25, 0.6, 0.9])
def test_slerp_matches_reference(shape, t):
    base, (other,) = tensors(shape, 1, seed=4)
    other = np.random.default_rng(9).normal(size=shape).astype(np.float32)  # far from parallel
    got = run("slerp", base, [other], [{}], {"t": t})
    np.testing.assert_allclose(got, ref_slerp(f64(base), f64(other), t), atol=1e-5)


@pytest.mark.parametrize("shape", [*SHAPES, (4, 3, 2)])
@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock_matches_reference(shape, filter_wise):
    base, xs = tensors(shape, 3, seed=5)
    got = run("model_stock", base, xs, [{}, {}, {}], {"filter_wise": filter_wise})
    want = ref_model_stock(f64(base), [f64(x) for x in xs], filter_wise)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("scale", [1.0, -2.5])
def test_passthrough_copies_and_scales(scale):
    _, (x,) = tensors((5, 7), 1, seed=6)
    got = run("passthrough", None, [x], [{"scale": scale}])
    np.testing.assert_allclose(got, scale * f64(x), atol=1e-6)
    assert np.array_equal(run("passthrough", None, [x], [{}]), f64(x))


# ---------------------------------------------------------------- sign election edge cases


def test_zero_sum_elects_the_positive_sign():
    base = np.zeros(3)
    xs = [np.array([1.0, 2.0, -2.0]), np.array([-1.0, -1.0, 1.0])]
    got = run("ties", base, xs, [{"weight": 1.0}, {"weight": 1.0}])
    # element 0 sums to 0 → + wins: only input 0 counts; elements 1 and 2 follow the majority
    np.testing.assert_allclose(got, [1.0, 2.0, -2.0])


def test_zero_entries_are_left_out_of_the_divisor():
    base = np.zeros(2)
    xs = [np.array([2.0, 1.0]), np.array([0.0, 1.0])]
    got = run("ties", base, xs, [{"weight": 1.0}, {"weight": 3.0}])
    # element 0: only input 0 is nonzero, so divisor 1 (not 4); element 1: (1 + 3) / 4
    np.testing.assert_allclose(got, [2.0, 1.0])


def test_no_agreeing_input_leaves_the_base():
    base = np.array([5.0, 5.0])
    xs = [np.array([5.0, 6.0]), np.array([5.0, 7.0])]
    got = run("ties", base, xs, [{"weight": 1.0}, {"weight": 1.0}])
    np.testing.assert_allclose(got, [5.0, 6.5])


# ---------------------------------------------------------------- sparsifier edge cases


def test_default_density_changes_nothing():
    base, xs = tensors((5, 7), 3, seed=8)
    values = [{"weight": w} for w in (0.3, 0.5, 0.9)]
    plain = run("task_arithmetic", base, xs, values)
    assert np.array_equal(run("breadcrumbs", base, xs, values), plain)
    dense = [v | {"density": 1.0} for v in values]
    assert np.array_equal(run("dare_linear", base, xs, dense), plain)
    elected = run("ties", base, xs, values, {"normalize": False})
    assert np.array_equal(run("dare_ties", base, xs, dense), elected)
    assert np.array_equal(run("breadcrumbs_ties", base, xs, values), elected)
    assert np.array_equal(run("della", base, xs, dense, {"normalize": False}), elected)


def test_magnitude_keeps_at_least_one_element():
    base = np.zeros(4)
    got = run("ties", base, [np.array([0.1, -3.0, 0.5, 2.0])], [{"weight": 2.0, "density": 0.01}])
    np.testing.assert_array_equal(got, [0.0, -3.0, 0.0, 0.0])


def test_magnitude_ties_keep_exactly_k():
    base = np.zeros(10)
    x = np.array([1.0, -1.0] * 5)
    got = run("ties", base, [x], [{"weight": 1.0, "density": 0.3}])
    assert np.count_nonzero(got) == 3


def test_breadcrumbs_drops_smallest_and_outliers():
    base = np.zeros(10)
    x = np.array([7.0, -3.0, 10.0, 1.0, -5.0, 9.0, 2.0, -8.0, 4.0, 6.0])
    got = run("breadcrumbs", base, [x], [{"weight": 1.0, "density": 0.5, "gamma": 0.2}])
    # t = 5, g = 2, b = 3: drop |x| in {1, 2, 3} and {9, 10}, keep 4..8
    np.testing.assert_array_equal(got, np.where(np.isin(np.abs(x), [4, 5, 6, 7, 8]), x, 0))


def test_rescale_restores_the_l1_norm_unless_tiny():
    base = np.zeros(200)
    x = np.random.default_rng(1).normal(size=200)
    got = run("dare_linear", base, [x], [{"weight": 1.0, "density": 0.5}])
    assert np.abs(got).sum() == pytest.approx(np.abs(x).sum(), rel=1e-5)
    mask = keep_mask(0, "model.w", 0, (200,), 0.5).numpy()
    assert np.array_equal(got != 0, mask)

    tiny = (x * 1e-11).astype(np.float32)  # ‖δ‖₁ ≈ 2e-9 < 1e-7
    got = run("dare_linear", base, [tiny], [{"weight": 1.0, "density": 0.5}])
    np.testing.assert_array_equal(got, np.where(mask, f64(tiny), 0.0))


def test_dare_keep_rate_is_the_density():
    rate = keep_mask(3, "big", 0, (1000, 1000), 0.3).float().mean().item()
    assert abs(rate - 0.3) < 0.003


def test_keyed_words_do_not_depend_on_the_spans():
    whole = methods._KeyedStream(7, "t", 2).words(2_000_003)
    stream = methods._KeyedStream(7, "t", 2)
    parts = [stream.words(count) for count in (3, 1_000_000, 1, 999_999)]
    assert np.array_equal(np.concatenate(parts), whole)
    stream.reset()
    assert np.array_equal(stream.words(10), whole[:10])
    uniform = methods._KeyedStream(7, "t", 2).uniform(2_000_003).numpy()
    assert uniform.dtype == np.float32 and uniform.min() >= 0 and uniform.max() < 1
    np.testing.assert_array_equal(uniform, (whole >> 8).astype(np.float64) / 2**24)


@pytest.mark.parametrize("density", [0.3, 0.1, 0.5, 0.9, 1 / 3, 1 - 2**-26, 2**-30, 1e-9])
def test_the_word_bound_splits_draws_as_the_fp32_comparison_does(density):
    below = methods.words_below(density)
    for word in (below - 1, below, below - 256, below + 255):
        if 0 <= word < 2**32:
            draw = np.float32((word >> 8) * 2.0**-24)
            assert bool(draw < np.float32(density)) == (word < below), word


@pytest.mark.parametrize("density", [0.3, 0.1, 0.5, 1 - 2**-26, 2**-30])
def test_dare_word_threshold_keeps_what_the_fp32_draw_keeps(density):
    shape = (1001, 1049)  # two spans, the second of odd length
    base, (x,) = tensors(shape, 1)
    got = run("dare_linear", base, [x], [{"weight": 1.0, "density": density}], {"rescale": False})
    drawn = keyed_uniform(0, "model.w", 0, shape) < np.float32(density)
    assert np.array_equal(got != base, drawn.numpy())


def test_della_keeps_larger_magnitudes_more_often():
    rows, n_row = 40000, 5
    rng = np.random.default_rng(2)
    magnitudes = rng.permuted(np.tile(np.arange(1.0, n_row + 1), (rows, 1)), axis=1)
    got = run(
        "della_linear",
        np.zeros((rows, n_row)),
        [magnitudes],
        [{"weight": 1.0, "density": 0.5, "epsilon": 0.2}],
        {"rescale": False},
    )
    kept = got != 0
    for rank, expected in enumerate([0.3, 0.4, 0.5, 0.6, 0.7]):
        assert abs(kept[magnitudes == rank + 1].mean() - expected) < 0.01


def test_della_single_column_rows_use_the_density():
    got = run(
        "della_linear",
        np.zeros((20000, 1)),
        [np.ones((20000, 1))],
        [{"weight": 1.0, "density": 0.4, "epsilon": 0.2}],
        {"rescale": False},
    )
    assert abs((got != 0).mean() - 0.4) < 0.015


@pytest.mark.parametrize(("density", "epsilon"), [(0.1, 0.15), (0.9, 0.15), (0.5, 0.5)])
def test_della_rejects_density_epsilon_outside_zero_one(density, epsilon):
    base, xs = tensors((5, 7), 1)
    with pytest.raises(MergeInputError) as info:
        run("della", base, xs, [{"weight": 1.0, "density": density, "epsilon": epsilon}])
    message = str(info.value)
    assert "model.w" in message and f"{density:g}" in message and f"{epsilon:g}" in message
    assert get_method("della").check_combination({"density": density, "epsilon": epsilon})
    assert get_method("della").check_combination({"density": 1.0, "epsilon": 0.5}) is None


# ---------------------------------------------------------------- randomness is keyed


def test_same_seed_same_result_and_other_seed_differs():
    base, xs = tensors((5, 7), 2)
    values = [{"weight": 1.0, "density": 0.5}, {"weight": 0.5, "density": 0.5}]
    first = run("dare_ties", base, xs, values, seed=11)
    assert np.array_equal(first, run("dare_ties", base, xs, values, seed=11))
    assert not np.array_equal(first, run("dare_ties", base, xs, values, seed=12))
    assert not np.array_equal(first, run("dare_ties", base, xs, values, seed=11, name="other"))


def test_masks_do_not_depend_on_thread_count():
    base, xs = tensors((300, 400), 2)
    values = [{"weight": 1.0, "density": 0.4}, {"weight": 0.5, "density": 0.6}]
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            mask = keep_mask(5, "t", 1, (1000, 1000), 0.5)
            merged = run("dare_ties", base, xs, values, {"rescale": False}, seed=5)
            results.append((mask, merged))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0])
    assert np.array_equal(results[0][1], results[1][1])


def test_an_input_mask_ignores_the_other_inputs():
    base, (a, b, c) = tensors((5, 7), 3)
    values = [{"weight": 0.8, "density": 0.5}, {"weight": 0.0, "density": 0.5}]
    with_b = run("dare_linear", base, [a, b], values, seed=3)
    with_c = run("dare_linear", base, [a, c], values, seed=3)
    assert np.array_equal(with_b, with_c)


def test_keep_mask_accepts_per_element_probabilities():
    prob = torch.tensor([0.0, 1.0, 0.5]).repeat(1000)
    mask = keep_mask(0, "p", 0, prob.shape, prob)
    assert not mask[0::3].any() and mask[1::3].all()
    assert 0.4 < mask[2::3].float().mean().item() < 0.6


# ---------------------------------------------------------------- linear, slerp, model_stock


def test_linear_zero_weight_sum_with_normalize_names_the_tensor():
    _, xs = tensors((3,), 2)
    values = [{"weight": 0.5}, {"weight": -0.5}]
    with pytest.raises(MergeInputError, match=r"model\.embed_tokens\.weight"):
        run("linear", None, xs, values, name="model.embed_tokens.weight")
    got = run("linear", None, xs, values, {"normalize": False})
    np.testing.assert_allclose(got, 0.5 * (f64(xs[0]) - f64(xs[1])), atol=1e-6)


def test_slerp_ends_are_exact():
    base, (other,) = tensors((5, 7), 1)
    assert np.array_equal(run("slerp", base, [other], [{}], {"t": 0.0}), f64(base))
    assert np.array_equal(run("slerp", base, [other], [{}], {"t": 1.0}), f64(other))


def test_nearly_parallel_slerp_is_a_lerp():
    rng = np.random.default_rng(4)
    a = rng.normal(size=50)
    side = rng.normal(size=50)
    side -= (side @ a) / (a @ a) * a
    b = 4 * a + 0.1 * side  # cosine ≈ 0.99971, just past the 0.9995 cut-off
    a, b = f64(a.astype(np.float32)), f64(b.astype(np.float32))
    t = 0.3
    got = run("slerp", a, [b], [{}], {"t": t})
    lerp = (1 - t) * a + t * b
    np.testing.assert_allclose(got, lerp, atol=2e-6)
    theta = math.acos(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert math.cos(theta) > 0.9995
    true_slerp = (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)
    assert np.abs(true_slerp - lerp).max() > 1e-4  # so the branch is what the test sees


def test_slerp_with_a_zero_tensor_is_finite():
    base = np.zeros(6)
    other = np.arange(6.0)
    got = run("slerp", base, [other], [{}], {"t": 0.5})
    np.testing.assert_allclose(got, ref_slerp(base, other, 0.5), atol=1e-6)
    assert np.isfinite(got).all()


def test_model_stock_opposite_deltas_keep_the_base():
    base = np.random.default_rng(3).normal(size=(5, 7))
    delta = np.random.default_rng(4).normal(size=(5, 7))
    # cosine −1 → 1 + (k − 1)·c = 0 → t = 0; the mean (base − δ) differs from the base
    got = run("model_stock", base, [base + delta, base - 3 * delta], [{}, {}])
    np.testing.assert_allclose(got, f64(base.astype(np.float32)), atol=1e-7)


def test_model_stock_filter_wise_works_per_row():
    base = np.zeros((3, 4))
    v = np.array([1.0, 2.0, -1.0, 0.5])
    x = np.stack([v, [1.0, 0, 0, 0], v])
    y = np.stack([v, [0, 1.0, 0, 0], -2 * v])
    got = run("model_stock", base, [x, y], [{}, {}], {"filter_wise": True})
    # parallel row: c = 1, t = 1 → mean; orthogonal row: t = 0; opposite row: degenerate → 0
    np.testing.assert_allclose(got, np.stack([v, np.zeros(4), np.zeros(4)]), atol=1e-6)
    whole = run("model_stock", base, [x, y], [{}, {}])
    assert not np.allclose(whole, got)


# ---------------------------------------------------------------- the registry


def test_registry_lists_every_method_with_its_defaults():
    assert set(METHODS) == {
        "linear",
        "task_arithmetic",
        "ties",
        "dare_linear",
        "dare_ties",
        "breadcrumbs",
        "breadcrumbs_ties",
        "della",
        "della_linear",
        "slerp",
        "model_stock",
        "passthrough",
        "nearswap",
        "nuslerp",
        "multislerp",
        "karcher",
        "arcee_fusion",
        "sce",
        "ram",
        "ramplus_tl",
    }

    def defaults(name):
        return {p.name: p.default for p in METHODS[name].params}

    assert defaults("linear") == {"weight": None, "normalize": True}
    assert set(defaults("task_arithmetic")) == {"weight", "lambda", "normalize", "int8_mask"}
    assert defaults("ties")["normalize"] is True and defaults("ties")["density"] == 1.0
    assert defaults("dare_ties")["normalize"] is False and defaults("dare_ties")["rescale"]
    assert defaults("dare_linear")["density"] is None
    assert defaults("breadcrumbs")["gamma"] == 0.01 and not defaults("breadcrumbs")["rescale"]
    assert defaults("della")["normalize"] is True and defaults("della_linear")["normalize"] is False
    assert defaults("della")["epsilon"] == 0.15 and defaults("della")["density"] is None
    assert defaults("slerp") == {"t": None}
    assert defaults("model_stock") == {"filter_wise": False}
    assert defaults("passthrough") == {"scale": 1.0}
    # mergekit 0.1.5's specs: names, defaults, which inputs and base each takes
    assert defaults("nearswap") == {"t": None}
    assert defaults("nuslerp") == {
        "weight": None,
        "nuslerp_row_wise": False,
        "nuslerp_flatten": True,
    }
    assert defaults("multislerp") == {"weight": None, "normalize_weights": True, "eps": 1e-8}
    assert defaults("karcher") == {"max_iter": 10, "tol": 1e-5}
    assert defaults("arcee_fusion") == {}
    assert defaults("sce") == {"select_topk": 1.0, "int8_mask": False}
    assert defaults("ram") == {"epsilon": 1e-5}
    assert defaults("ramplus_tl") == {"r": 0.1, "alpha": 0.2, "epsilon": 1e-5}
    for name in ("arcee_fusion", "sce", "ram", "ramplus_tl"):
        assert METHODS[name].needs_base
    assert METHODS["arcee_fusion"].max_inputs == 1 and METHODS["sce"].max_inputs is None
    assert [
        (m.needs_base, m.uses_base, m.min_inputs, m.max_inputs)
        for m in (
            METHODS["nearswap"],
            METHODS["nuslerp"],
            METHODS["multislerp"],
            METHODS["karcher"],
        )
    ] == [(True, True, 1, 1), (False, True, 2, 2), (False, True, 1, None), (False, False, 1, None)]
    for method in METHODS.values():
        assert method.reference
        for p in method.params:
            assert p.default is None or p.check(p.default) is None, (method.name, p.name)
    assert {p.name for p in METHODS["ties"].input_params} == {"weight", "density"}
    assert get_method("ties").param("density") is not None
    assert get_method("ties").param("gamma") is None


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(MergeConfigError) as info:
        get_method("frankenmerge")
    assert "frankenmerge" in str(info.value)
    assert all(name in info.value.hint for name in METHODS)


@pytest.mark.parametrize(
    ("method", "name", "value", "ok"),
    [
        ("ties", "density", 0.5, True),
        ("ties", "density", 1, True),
        ("ties", "density", 0.0, False),
        ("ties", "density", 1.5, False),
        ("ties", "density", True, False),
        ("ties", "density", "0.5", False),
        ("ties", "density", float("nan"), False),
        ("ties", "weight", -3, True),
        ("ties", "weight", float("inf"), False),
        ("ties", "lambda", -0.5, True),
        ("ties", "normalize", 1, False),
        ("ties", "normalize", False, True),
        ("breadcrumbs", "gamma", 0.0, True),
        ("breadcrumbs", "gamma", 1.0, False),
        ("della", "epsilon", 0.0, True),
        ("della", "epsilon", -0.1, False),
        ("slerp", "t", 0.0, True),
        ("slerp", "t", 1.0, True),
        ("slerp", "t", 1.01, False),
    ],
)
def test_param_check(method, name, value, ok):
    param = get_method(method).param(name)
    assert param is not None
    assert (param.check(value) is None) == ok


def test_param_check_reason_names_the_range():
    density = get_method("ties").param("density")
    assert density is not None and density.check(0) == "must be in (0, 1]"


def test_merge_rejects_unused_missing_and_bad_parameters():
    base, xs = tensors((5, 7), 1)
    with pytest.raises(MergeConfigError, match="density"):
        get_method("task_arithmetic").merge(
            make_job("w", base, xs, [{"weight": 1.0, "density": 0.5}])
        )
    with pytest.raises(MergeConfigError, match=r"density.*'w'"):
        get_method("dare_ties").merge(make_job("w", base, xs, [{"weight": 1.0}]))
    with pytest.raises(MergeConfigError, match="weight"):
        get_method("ties").merge(make_job("w", base, xs, [{}]))
    with pytest.raises(MergeConfigError, match="must be in"):
        get_method("ties").merge(make_job("w", base, xs, [{"weight": 1.0, "density": 2.0}]))


def test_merge_checks_inputs_base_and_shapes():
    base, xs = tensors((5, 7), 2)
    with pytest.raises(MergeConfigError, match="exactly 1"):
        get_method("slerp").merge(make_job("w", base, xs, [{}, {}], {"t": 0.5}))
    with pytest.raises(MergeConfigError, match="at least 2"):
        get_method("model_stock").merge(make_job("w", base, xs[:1], [{}]))
    with pytest.raises(MergeConfigError, match="base"):
        get_method("ties").merge(make_job("w", None, xs, [{"weight": 1.0}] * 2))
    other = np.zeros((5, 8), dtype=np.float32)
    with pytest.raises(MergeInputError, match=r"'lm_head.weight'.*\[5, 8\]"):
        get_method("model_stock").merge(make_job("lm_head.weight", base, [xs[0], other], [{}, {}]))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_empty_tensors_merge_to_empty(method):
    m = get_method(method)
    count = 1 if m.max_inputs == 1 else 2
    values = {"weight": 1.0, "density": 0.5, "epsilon": 0.1}
    base = np.zeros((0, 4)) if m.uses_base else None
    got = run(method, base, [np.zeros((0, 4))] * count, [values] * count, {"t": 0.5})
    assert got.shape == (0, 4)


def test_int8_mask_is_accepted_and_changes_nothing():
    base, xs = tensors((5, 7), 2)
    values = [{"weight": 1.0, "density": 0.5}, {"weight": 0.5}]
    plain = run("ties", base, xs, values)
    assert np.array_equal(plain, run("ties", base, xs, values, {"int8_mask": True}))


def test_merge_does_not_modify_its_inputs():
    base, xs = tensors((5, 7), 2)
    job = make_job("w", base, xs, [{"weight": 1.0, "density": 0.5}] * 2, {"rescale": True})
    copies = [job.base.clone(), *(x.clone() for x in job.inputs)]
    for name in ("ties", "dare_ties", "della_linear", "breadcrumbs"):
        method = get_method(name)
        values = [only_declared(method, v) for v in job.input_params]
        method.merge(TensorJob("w", job.base, job.inputs, tuple(values), {}))
    assert all(torch.equal(a, b) for a, b in zip(copies, [job.base, *job.inputs], strict=True))


def _magnitudes(kind: str, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return {
        "normal": torch.randn(n, generator=g).abs(),
        "few values": torch.randint(0, 5, (n,), generator=g).float(),
        "constant": torch.ones(n),
        "zeros and ties": torch.randint(0, 2, (n,), generator=g).float() * 0.015625,
    }[kind]


@pytest.mark.parametrize("kind", ["normal", "few values", "constant", "zeros and ties"])
def test_radix_selection_equals_kthvalue(kind: str) -> None:
    from graft.merge.selection import kth_largest

    n = 100_003
    values = _magnitudes(kind, n)
    spans = [values[i : i + 997] for i in range(0, n, 997)]  # many uneven spans
    for k in (1, 17, n // 3, n // 2, n - 1, n):
        rank = kth_largest(lambda: iter(spans), k, n)
        expected = torch.kthvalue(values, n - k + 1).values
        assert rank.bits == int(expected.view(torch.int32)), k
        assert rank.above == int((values > expected).sum())
        assert rank.equal == int((values == expected).sum())


def _ranked_with_passes(values: torch.Tensor, k: int, span: int = 1021) -> int:
    """Runs kth_largest on `values` in spans, checks its rank, returns its passes."""
    from graft.merge import selection

    n = values.numel()
    spans = [values[i : i + span] for i in range(0, n, span)]
    passes = []

    def pass_over() -> Iterator[torch.Tensor]:
        passes.append(1)
        return iter(spans)

    rank = selection.kth_largest(pass_over, k, n)
    expected = torch.kthvalue(values, n - k + 1).values
    assert rank.bits == int(expected.view(torch.int32))
    assert rank.above == int((values > expected).sum())
    assert rank.equal == int((values == expected).sum())
    return len(passes)


@pytest.mark.parametrize(
    ("case", "passes"),
    [("smooth", 1), ("mostly zeros", 1), ("first span unlike the rest", 2)],
)
def test_radix_selection_takes_a_second_pass_only_when_its_guess_missed(
    case: str, passes: int
) -> None:
    """The first pass counts the low bits of bin 0 and of a few bins around the
    first span's guess: a smooth tensor, or one mostly of zeros, needs no second
    pass; a first span unlike the rest does, and the result is exact either way."""
    n = 64 * 1021
    values = torch.randn(n, generator=torch.Generator().manual_seed(3)).abs()
    if case == "mostly zeros":
        values[n // 16 :] = 0  # the first span is all non-zero
    elif case == "first span unlike the rest":
        values[:1021] *= 1000
    assert _ranked_with_passes(values, n // 2) == passes


def test_radix_selection_counts_every_bin_of_its_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the guess pinned at each bin around the k-th's (and at bins 0 and 1,
    where the window starts below bin 0), the k-th is found in one pass exactly
    when its bin lies in the window, and is exact every time."""
    from graft.merge import selection

    n = 32 * 1021
    values = torch.randn(n, generator=torch.Generator().manual_seed(4)).abs() + 1.0
    k = n // 3
    target = int(torch.kthvalue(values, n - k + 1).values.view(torch.int32)) >> 16
    for guess in [*range(target - 4, target + 5), 0, 1]:
        monkeypatch.setattr(selection, "_guess_bin", lambda bits, k, n, g=guess: g)
        first = guess - selection.WINDOW // 2
        inside = first <= target < first + selection.WINDOW
        assert _ranked_with_passes(values, k) == (1 if inside else 2), guess


@pytest.mark.parametrize("kind", ["normal", "few values", "constant", "zeros and ties", "finetune"])
def test_sampled_selection_equals_a_sort(kind: str) -> None:
    from graft.merge.selection import kth_smallest

    n = 300_007
    if kind == "finetune":  # |δ| of a bf16 fine-tune: a handful of distinct values
        g = torch.Generator().manual_seed(5)
        base = (torch.randn(n, generator=g) * 0.02).bfloat16()
        tuned = (base.float() + torch.randn(n, generator=g) * 4e-4).bfloat16()
        values = (tuned.float() - base.float()).abs()
    else:
        values = _magnitudes(kind, n)
    bits = values.view(torch.int32).numpy()
    ordered = np.sort(bits)
    for at in (0, 1, 17, n // 10, n // 3, n // 2, n - 100, n - 1):
        assert kth_smallest(bits, at) == ordered[at], at


def test_sampled_selection_survives_a_sample_unlike_the_whole() -> None:
    """Every sampled value is 0, the rest are not: the bracket misses, and the
    fallback still selects exactly."""
    from graft.merge.selection import SAMPLE, kth_smallest

    n = SAMPLE * 4
    values = np.random.default_rng(1).integers(1, 1 << 30, n, dtype=np.int32)
    values[::4] = 0
    ordered = np.sort(values)
    for at in (0, n // 8, n // 2, n - 1):
        assert kth_smallest(values, at) == ordered[at], at


@pytest.mark.parametrize("share", [0.001, 0.3, 1.0])
def test_keep_first_sets_the_first_tied_places_across_blocks(share: float) -> None:
    from graft.merge.methods import _BLOCK, _keep_first

    rng = np.random.default_rng(7)
    n = 5 * _BLOCK + 123
    tied = rng.random(n) < share
    places = np.flatnonzero(tied)
    for count in (1, _BLOCK // 2, len(places) // 2, len(places) - 1, len(places)):
        if not 1 <= count <= len(places):  # (the caller asks for at most all the ties)
            continue
        mask = rng.random(n) < 0.1
        want = mask.copy()
        want[places[:count]] = True
        _keep_first(mask, tied, count)
        assert np.array_equal(mask, want), count


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("kind", ["normal", "few values", "zeros and ties"])
def test_rank_masks_keep_the_k_extreme_values_lowest_index_first(
    kind: str, in_memory: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a stable sort: the k largest (smallest) |δ|, equal ones by index."""
    from graft.merge.methods import _rank_mask

    if not in_memory:  # large tensors stream: radix passes, then a compare per span
        monkeypatch.setattr(methods, "_IN_MEMORY_BELOW", 0)
    n = 10_007
    values = _magnitudes(kind, n) * torch.where(torch.arange(n) % 3 == 0, -1.0, 1.0)
    spans = [values[i : i + 997] for i in range(0, n, 997)]
    for largest in (True, False):
        order = torch.sort(values.abs(), descending=largest, stable=True).indices
        for k in (0, 1, 17, n // 3, n // 2, n - 1):
            masker = _rank_mask(lambda: iter(spans), n, k, largest=largest)
            assert masker is not None
            for _ in range(2):  # a second pass after reset gives the same mask
                masker.reset()
                got = torch.cat([masker(span) for span in spans])  # signed δ
                want = torch.zeros(n, dtype=torch.bool)
                want[order[:k]] = True
                assert torch.equal(got, want), (largest, k)
        assert _rank_mask(lambda: iter(spans), n, n, largest=largest) is None


@pytest.fixture(params=["one span", "many spans"], autouse=True)
def _spans(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs twice: whole tensors in one span, and cut into spans of 7
    elements (whole rows for the per-row formulas): the streaming passes must
    agree with the whole-tensor formulas."""
    if request.param == "many spans":
        monkeypatch.setattr(chunks, "CHUNK", 7)


# ---------------------------------------------------------------- the spherical methods
# Plain float64 references written from the definitions, on whole vectors (graft
# works on the vectors' Gram matrix, span by span).


def ref_nearswap(a, b, t):
    weight = np.clip(t / np.maximum(np.abs(a - b), 1e-6), 0, 1)
    return weight * b + (1 - weight) * a


def ref_slerp_vectors(v0, v1, t):
    """SLERP of two vectors as they are (not normalized), linear where colinear."""
    n0, n1 = max(np.linalg.norm(v0), 1e-7), max(np.linalg.norm(v1), 1e-7)
    cos = np.clip((v0 / n0) @ (v1 / n1), -1, 1)
    if 1 - cos**2 <= 1e-16:
        return (1 - t) * v0 + t * v1
    theta = np.arccos(cos)
    return (np.sin((1 - t) * theta) * v0 + np.sin(t * theta) * v1) / np.sin(theta)


def ref_nuslerp(base, x0, x1, t, along):
    v0, v1 = (x0, x1) if base is None else (x0 - base, x1 - base)
    if along == "whole":
        out = ref_slerp_vectors(v0.ravel(), v1.ravel(), t).reshape(v0.shape)
    elif along == "rows":
        out = np.stack([ref_slerp_vectors(r0, r1, t) for r0, r1 in zip(v0, v1, strict=True)])
    else:
        out = np.stack([ref_slerp_vectors(c0, c1, t) for c0, c1 in zip(v0.T, v1.T, strict=True)]).T
    return out if base is None else out + base


def ref_multislerp(base, xs, weights, eps=1e-8):
    vs = [x.ravel() if base is None else (x - base).ravel() for x in xs]
    w = np.asarray(weights) / np.sum(weights)
    norms = [np.linalg.norm(v) for v in vs]
    units = [v / (n + eps) for v, n in zip(vs, norms, strict=True)]
    mean = sum(wi * u for wi, u in zip(w, units, strict=True))
    mean = mean / np.linalg.norm(mean)
    tangent = sum(wi * (u - (u @ mean) * mean) for wi, u in zip(w, units, strict=True))
    size = np.linalg.norm(tangent) + eps
    out = (mean * np.cos(size) + tangent * np.sin(size) / size) * (np.asarray(norms) @ w)
    out = out.reshape(xs[0].shape)
    return out if base is None else out + base


def ref_karcher(xs, steps=10, tol=1e-5):
    vs = [x.ravel() for x in xs]
    norms = [np.linalg.norm(v) for v in vs]
    units = [v / n for v, n in zip(vs, norms, strict=True)]
    alpha = 1 / len(vs)
    mean = sum(alpha * u for u in units)
    mean /= np.linalg.norm(mean)
    for _ in range(steps):
        tangent = np.zeros_like(mean)
        for u in units:
            dot = np.clip(mean @ u, -1, 1)
            theta = np.arccos(dot)
            if theta >= tol:
                tangent += alpha * theta / np.sin(theta) * (u - dot * mean)
        size = np.linalg.norm(tangent)
        if size < tol:
            break
        mean = np.cos(size) * mean + np.sin(size) * tangent / size
        mean /= np.linalg.norm(mean)
    return (alpha * sum(norms) * mean).reshape(xs[0].shape)


@pytest.mark.parametrize("shape", SHAPES)
def test_nearswap_matches_reference(shape):
    base, (model,) = tensors(shape, 1, seed=12)
    model.flat[::3] = base.flat[::3]  # equal elements: the model's (= the base's) value
    got = run("nearswap", base, [model], [{}], {"t": 0.05})
    np.testing.assert_allclose(got, ref_nearswap(f64(base), f64(model), 0.05), atol=1e-6)


@pytest.mark.parametrize("shape", [(5, 7), (6, 3), (11,)])
@pytest.mark.parametrize("with_base", [True, False])
@pytest.mark.parametrize(
    ("flatten", "row_wise", "along"),
    [(True, False, "whole"), (False, False, "rows"), (False, True, "columns")],
)
def test_nuslerp_matches_reference(shape, with_base, flatten, row_wise, along):
    base, xs = tensors(shape, 2, seed=13)
    params = {"nuslerp_flatten": flatten, "nuslerp_row_wise": row_wise}
    got = run("nuslerp", base if with_base else None, xs, [{"weight": 1}, {"weight": 3}], params)
    along = "whole" if len(shape) == 1 else along
    want = ref_nuslerp(f64(base) if with_base else None, f64(xs[0]), f64(xs[1]), 0.75, along)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_nuslerp_of_colinear_vectors_is_linear_and_cancelling_weights_mean_half():
    a = np.arange(1.0, 13.0).reshape(3, 4)
    got = run("nuslerp", None, [a, 3 * a], [{"weight": 1}, {"weight": -1}])
    np.testing.assert_allclose(got, 2 * a, atol=1e-5)  # t = 0.5 on a straight line


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_base", [True, False])
def test_multislerp_matches_reference(shape, with_base):
    base, xs = tensors(shape, 3, seed=14)
    weights = [0.5, 0.2, 0.3]
    got = run("multislerp", base if with_base else None, xs, [{"weight": w} for w in weights], {})
    want = ref_multislerp(f64(base) if with_base else None, [f64(x) for x in xs], weights)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_multislerp_of_one_input_is_that_input():
    base, (x,) = tensors((5, 7), 1, seed=15)
    assert np.array_equal(run("multislerp", base, [x], [{"weight": 2.0}]), f64(x))


@pytest.mark.parametrize("shape", SHAPES)
def test_karcher_matches_reference(shape):
    _, xs = tensors(shape, 3, seed=16)
    xs = [x * s for x, s in zip(xs, (1.0, 2.0, 0.5), strict=True)]  # unequal norms
    got = run("karcher", None, xs, [{}, {}, {}], {"max_iter": 30, "tol": 1e-9})
    want = ref_karcher([f64(x) for x in xs], steps=30, tol=1e-9)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_karcher_of_two_equal_norms_is_the_geodesic_midpoint():
    rng = np.random.default_rng(17)
    a, b = rng.normal(size=40), rng.normal(size=40)
    b *= np.linalg.norm(a) / np.linalg.norm(b)
    got = run("karcher", None, [a, b], [{}, {}], {"max_iter": 50, "tol": 1e-10})
    middle = (a + b) / np.linalg.norm(a + b) * np.linalg.norm(a)
    np.testing.assert_allclose(got, middle, atol=1e-5)


@pytest.mark.parametrize(
    ("method", "count", "values", "params", "message"),
    [
        ("nuslerp", 3, {"weight": 1}, {}, "nuslerp takes exactly 2 input(s), got 3"),
        ("nearswap", 1, {}, {}, "nearswap needs parameter 't'"),
        ("nearswap", 2, {}, {"t": 0.1}, "nearswap takes exactly 1 input(s), got 2"),
        (
            "karcher",
            2,
            {},
            {"max_iter": 2.5},
            "max_iter = 2.5 for tensor 'model.w': must be a whole",
        ),
        ("multislerp", 2, {}, {}, "multislerp needs parameter 'weight' for input 0"),
    ],
)
def test_spherical_methods_name_the_wrong_parameter_or_count(
    method, count, values, params, message
):
    base, xs = tensors((4, 3), count, seed=18)
    job = make_job("model.w", base, xs, [values] * count, params)
    with pytest.raises(MergeConfigError, match=re.escape(message)):
        get_method(method).merge(job)


# ---------------------------------------------------------------- selective methods


def ref_ram(base, xs, epsilon, r=None, alpha=None):
    deltas = np.stack([x - base for x in xs]).reshape(len(xs), -1)
    changed = np.abs(deltas) > epsilon
    count = changed.sum(0)
    kept = deltas * changed
    scales = np.ones(len(xs))
    if r is not None:
        shared = (changed & (count > 1)).sum(1)
        unique = (changed & (count == 1)).sum(1)
        scales = 1 + r * np.clip(shared / np.maximum(unique, epsilon), 0, alpha)
    merged = kept * (count == 1) * scales[:, None] + kept * (count > 1) / np.maximum(count, 1)
    return base + merged.sum(0).reshape(base.shape)


def ref_sce(base, xs, topk):
    deltas = np.stack([x - base for x in xs]).reshape(len(xs), -1)
    if topk < 1:
        var = deltas.var(0)
        k = int(np.count_nonzero(var) * topk)
        keep = np.zeros(var.shape, bool)
        keep[np.argsort(-var, kind="stable")[:k]] = True
        deltas = deltas * keep
    means = (deltas**2).mean(1)
    weights = means / means.sum() if abs(means.sum()) >= 1e-6 else np.full(len(xs), 1 / len(xs))
    majority = np.where(deltas.sum(0) >= 0, 1.0, -1.0)
    kept = weights[:, None] * (np.sign(deltas) == majority)
    merged = (deltas * kept).sum(0) / np.maximum(kept.sum(0), 1e-6)
    return base + merged.reshape(base.shape)


def ref_arcee_fusion(base, model):
    rows_a = base.reshape(-1, base.shape[-1])
    rows_b = model.reshape(-1, base.shape[-1])

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p, q = softmax(rows_b) + 1e-8, softmax(rows_a) + 1e-8
    importance = (np.abs(rows_b - rows_a) * (p * np.log(p / q)).sum(-1, keepdims=True)).ravel()
    ordered = np.sort(importance)
    q1, median, q3 = (
        ordered[int(np.float32(f) * np.float32(len(ordered) - 1))] for f in (0.25, 0.5, 0.75)
    )
    keep = importance >= median + 1.5 * (q3 - q1)
    return base + ((model - base).ravel() * keep).reshape(base.shape)


def sparse_changes(shape, count, seed):
    """Fine-tunes that each change a random half of the elements: RAM's overlaps."""
    rng = np.random.default_rng(seed)
    base, xs = tensors(shape, count, seed=seed)
    for x in xs:
        untouched = rng.random(shape) < 0.5
        x[untouched] = base[untouched]
    return base, xs


@pytest.mark.parametrize("shape", SHAPES)
def test_ram_and_ramplus_match_reference(shape):
    base, xs = sparse_changes(shape, 3, seed=19)
    got = run("ram", base, xs, [{}] * 3, {"epsilon": 1e-4})
    np.testing.assert_allclose(got, ref_ram(f64(base), [f64(x) for x in xs], 1e-4), atol=1e-6)
    params = {"epsilon": 1e-4, "r": 0.5, "alpha": 0.3}
    got = run("ramplus_tl", base, xs, [{}] * 3, params)
    want = ref_ram(f64(base), [f64(x) for x in xs], 1e-4, r=0.5, alpha=0.3)
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("topk", [1.0, 0.5, 0.0])
def test_sce_matches_reference(shape, topk):
    base, xs = tensors(shape, 3, seed=20)
    got = run("sce", base, xs, [{}] * 3, {"select_topk": topk})
    want = ref_sce(f64(base), [f64(x) for x in xs], topk)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("shape", [(16, 8), (400,), (3, 5, 4)])
def test_arcee_fusion_matches_reference(shape):
    base, (model,) = tensors(shape, 1, seed=21)
    got = run("arcee_fusion", base, [model], [{}])
    want = ref_arcee_fusion(f64(base), f64(model))
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert 0 < np.count_nonzero(got != f64(base)) < base.size  # some changes kept, not all
