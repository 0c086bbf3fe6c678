"""Fused numba kernels for the model's other ops against their NumPy references."""
import numpy as np
import pytest

from minigpt.gradcheck import check_op
from minigpt.kernels import layernorm as kln
from minigpt.kernels.gelu import gelu_backward, gelu_forward
from minigpt.layers import layernorm as ref_ln
from minigpt.ops import op_table
from minigpt.layers.gelu import gelu_backward as ref_backward
from minigpt.layers.gelu import gelu_forward as ref_forward

# tanh from a polynomial exp, other rounding order: a few ulps of values
# of size ~|x| (the derivative of GELU is bounded by ~1.13)
TOL = {np.float32: 2e-6, np.float64: 1e-14}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (1, 1, 1), (3, 7), (2, 5, 33)])
def test_gelu_matches_reference(shape, dtype):
    rng = np.random.default_rng(0)
    x = (4 * rng.standard_normal(shape)).astype(dtype)
    x.flat[0] = -40.0 if x.size > 1 else x.flat[0]  # tanh saturates: no overflow in exp
    dout = rng.standard_normal(shape).astype(dtype)
    out, cache = gelu_forward(x)
    ref, ref_cache = ref_forward(x)
    assert out.dtype == dtype and out.shape == shape
    scale = 1.0 + np.abs(x)
    assert np.all(np.abs(out - ref) <= TOL[dtype] * scale)
    dx = gelu_backward(dout, cache)
    assert dx.dtype == dtype and dx.shape == shape
    assert np.all(np.abs(dx - ref_backward(dout, ref_cache)) <= TOL[dtype] * scale * (1 + np.abs(dout)))


def test_gelu_zero_and_large_inputs():
    x = np.array([0.0, 1e-8, -1e-8, 50.0, -50.0, 1e4, -1e4])
    out, cache = gelu_forward(x)
    np.testing.assert_allclose(out, ref_forward(x)[0], rtol=1e-14, atol=1e-300)
    assert out[0] == 0.0 and out[3] == 50.0 and out[4] == 0.0
    np.testing.assert_allclose(gelu_backward(np.ones_like(x), cache), [0.5, 0.5, 0.5, 1, 0, 1, 0], atol=1e-8)


def test_gelu_backward_against_finite_differences():
    x = np.random.default_rng(1).standard_normal((3, 4)) * 2
    (err,) = check_op(gelu_forward, gelu_backward, [x])
    assert err < 1e-8


def test_backend_op_tables():
    assert op_table("numba")["gelu"] == (gelu_forward, gelu_backward)
    assert op_table("numpy")["gelu"] == (ref_forward, ref_backward)
    assert op_table("numba")["layernorm"] == (kln.layernorm_forward, kln.layernorm_backward)
    assert op_table("numpy")["layernorm"] == (ref_ln.layernorm_forward, ref_ln.layernorm_backward)


# LayerNorm: one sum order against another over C (forward) and over all
# rows (dgamma, dbeta: up to 2 * 17 * 33 terms here), relative to the sums' size
LN_TOL = {np.float32: 2e-5, np.float64: 1e-13}


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (1, 1, 3), (2, 17, 33), (40, 8)])
def test_layernorm_matches_reference(shape, dtype, parallel, monkeypatch):
    # small calls run the kernels' serial twins; with SMALL_WORK at 0, the parallel kernels
    if parallel:
        monkeypatch.setattr(kln, "SMALL_WORK", 0)
    rng = np.random.default_rng(5)
    C = shape[-1]
    x = (3 * rng.standard_normal(shape) + 2).astype(dtype)
    gamma, beta = (rng.standard_normal(C).astype(dtype) for _ in range(2))
    dout = rng.standard_normal(shape).astype(dtype)
    out, cache = kln.layernorm_forward(x, gamma, beta)
    ref, ref_cache = ref_ln.layernorm_forward(x, gamma, beta)
    assert out.dtype == dtype and out.shape == shape
    np.testing.assert_allclose(out, ref, rtol=LN_TOL[dtype], atol=LN_TOL[dtype] * 10)
    got = kln.layernorm_backward(dout, cache)
    want = ref_ln.layernorm_backward(dout, ref_cache)
    for name, g, w in zip(("dx", "dgamma", "dbeta"), got, want):
        assert g.dtype == dtype and g.shape == w.shape, name
        np.testing.assert_allclose(g, w, rtol=LN_TOL[dtype], atol=LN_TOL[dtype] * np.sqrt(x.size), err_msg=name)
    # the cache keeps the input itself (the residual stream, alive anyway), not a new xhat
    assert np.shares_memory(cache[0], x) and len(cache) == 4


def test_layernorm_constant_rows_and_zero_gradient():
    # a constant row has var = 0: xhat = 0, out = beta, nothing divides by zero
    x = np.full((3, 6), 7.0)
    gamma, beta = np.arange(6.0), np.ones(6)
    out, cache = kln.layernorm_forward(x, gamma, beta)
    np.testing.assert_allclose(out, np.ones((3, 6)))
    dx, dg, db = kln.layernorm_backward(np.zeros((3, 6)), cache)
    assert not (dx.any() or dg.any() or db.any())


@pytest.mark.parametrize("parallel", [False, True])
def test_layernorm_backward_against_finite_differences(parallel, monkeypatch):
    if parallel:  # the parallel kernels, as a large batch runs them
        monkeypatch.setattr(kln, "SMALL_WORK", 0)
    rng = np.random.default_rng(6)
    inputs = [rng.standard_normal((2, 3, 5)), rng.standard_normal(5), rng.standard_normal(5)]
    errors = check_op(kln.layernorm_forward, kln.layernorm_backward, inputs)
    assert max(errors) < 1e-8, errors


def test_small_work_runs_on_one_thread_and_restores_the_count():
    import numba

    from minigpt.kernels.threads import SMALL_WORK, threads_for

    before = numba.get_num_threads()
    with threads_for(SMALL_WORK - 1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
    with threads_for(SMALL_WORK):
        assert numba.get_num_threads() == before
    with pytest.raises(ZeroDivisionError), threads_for(1):
        1 / 0  # the count is restored even when the block raises
    assert numba.get_num_threads() == before


def test_kernel_constants_are_the_references():
    # the kernels repeat the references' constants (they import nothing above them)
    from minigpt.kernels import gelu as kgelu
    from minigpt.layers import gelu as rgelu

    assert (kgelu.GELU_K, kgelu.GELU_A) == (rgelu.GELU_K, rgelu.GELU_A)
    assert kln.LN_EPS == ref_ln.LN_EPS


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 3072), (2, 5, 33)])
def test_gelu_serial_twin_is_the_parallel_kernel(shape, dtype, monkeypatch):
    """Below SMALL_WORK (a decoding step's row) the GELU forward runs its
    kernel's serial twin, with SMALL_WORK at 0 the parallel original: the same
    element-wise code, so the same numbers, and both the reference's op.
    (LayerNorm keeps its parallel kernel: its twin vectorised a row's sums
    differently and moved float32 results by an ulp.)"""
    from minigpt.kernels import gelu as kgelu

    x = (3 * np.random.default_rng(3).standard_normal(shape) + 1).astype(dtype)
    serial = kgelu.gelu_forward(x)[0]
    assert np.all(np.abs(serial - ref_forward(x)[0]) <= TOL[dtype] * (1.0 + np.abs(x)))
    monkeypatch.setattr(kgelu, "SMALL_WORK", 0)
    np.testing.assert_array_equal(kgelu.gelu_forward(x)[0], serial)
