"""The training step's kernels against their NumPy definitions: the fused AdamW update,
the gradient's squared norm, and the embedding backward's scatter-add."""
import numpy as np
import pytest

from minigpt.kernels.adamw import adamw_update, sum_squares
from minigpt.layers.embedding import scatter_add_rows, scatter_add_rows_reference
from minigpt.optim import AdamW, adamw_update_reference, clip_grad_norm


def _state(rng, shape, dtype):
    p, g = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    m = (0.1 * rng.standard_normal(shape)).astype(dtype)
    v = (0.01 * rng.random(shape)).astype(dtype)
    return p, g, m, v


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("shape", [(7,), (33, 65), (3, 5, 129)])
def test_fused_adamw_matches_the_reference(dtype, wd, shape):
    rng = np.random.default_rng(0)
    ref = _state(rng, shape, dtype)
    fused = tuple(a.copy() for a in ref)
    consts = (0.9, 0.99, 1 - 0.9**3, 1 - 0.99**3, 1e-8, wd, 1e-3)
    adamw_update_reference(*ref, *consts)
    assert adamw_update(*fused, *consts)
    # the kernel does the reference's operations in its order and dtype without
    # fastmath (no contraction into FMA), so each element should round the same;
    # the tolerance allows one ulp of the dtype for a compiler that rounds differently
    tol = {np.float32: 2e-7, np.float64: 1e-15}[dtype]
    for a, b in zip(fused, ref):  # p, g (untouched), m, v
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())


def test_fused_adamw_declines_what_it_cannot_update_in_place():
    rng = np.random.default_rng(1)
    p, g, m, v = _state(rng, (8, 6), np.float32)
    before = p.copy()
    consts = (0.9, 0.99, 0.1, 0.01, 1e-8, 0.0, 1e-3)
    assert not adamw_update(p[:, ::2], g[:, ::2], m[:, ::2], v[:, ::2], *consts)  # strided: a copy would be lost
    assert not adamw_update(p, g.astype(np.float64), m, v, *consts)  # mixed dtypes
    np.testing.assert_array_equal(p, before)


def test_adamw_fused_and_reference_optimizers_agree_over_steps():
    rng = np.random.default_rng(2)
    params = {"w": rng.standard_normal((16, 8)).astype(np.float32), "b": rng.standard_normal(8).astype(np.float32),
              "odd": rng.standard_normal((8, 16)).astype(np.float32).T}  # a transposed view: reference path
    copies = {k: v.copy() for k, v in params.items()}
    a, b = AdamW(params, lr=1e-2, weight_decay=0.1), AdamW(copies, lr=1e-2, weight_decay=0.1, fused=False)
    for _ in range(5):
        grads = {k: rng.standard_normal(p.shape).astype(np.float32) for k, p in params.items()}
        a.step({k: g.copy() for k, g in grads.items()})
        b.step(grads)
    for k in params:  # float32: a few ulps of |p| ~ 1 after five steps
        np.testing.assert_allclose(params[k], copies[k], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(a.m[k], b.m[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_squares_accumulates_in_float64(dtype):
    rng = np.random.default_rng(3)
    g = rng.standard_normal((300, 70)).astype(dtype)
    exact = float(np.sum(np.square(g, dtype=np.float64)))
    # float64 accumulation of 21000 terms in any order: relative error ~1e-16 * sqrt(n)
    assert sum_squares(g) == pytest.approx(exact, rel=1e-12)
    assert sum_squares(g[:, ::3]) == pytest.approx(float(np.sum(np.square(g[:, ::3], dtype=np.float64))), rel=1e-12)


def test_clip_grad_norm_with_the_kernel():
    rng = np.random.default_rng(4)
    grads = {"a": rng.standard_normal((10, 10)).astype(np.float32), "b": np.arange(4, dtype=np.int64)}
    norm = np.sqrt(np.sum(grads["a"].astype(np.float64) ** 2) + 14.0)
    assert clip_grad_norm(grads, 0.0) == pytest.approx(norm, rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scatter_add_rows_matches_np_add_at(dtype):
    rng = np.random.default_rng(5)
    rows = rng.integers(0, 11, 500)  # many repeats, some rows never hit
    rows[:3] = 10
    values = rng.standard_normal((500, 9)).astype(dtype)
    ref = scatter_add_rows_reference(rows, values, 13)
    got = scatter_add_rows(rows, values, 13)
    # the same numbers summed in another order: a few ulps of the dtype per sum of ~45 terms
    tol = {np.float32: 1e-5, np.float64: 1e-13}[dtype]
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())
    assert got.dtype == dtype and not got[11:].any()
    assert not scatter_add_rows(np.zeros(0, dtype=np.int64), np.zeros((0, 9), dtype), 4).any()
