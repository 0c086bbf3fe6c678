"""The numba attention kernel against the NumPy reference that defines it."""
import numpy as np
import pytest

from minigpt.gradcheck import check_op
from numba import njit

from minigpt.kernels.attention import (BLOCK, _forward_kernel, _keys_along_rows, _layout, _row_max,
                                       attention_backward, attention_backward_qkv, attention_forward,
                                       attention_forward_qkv)
from minigpt.kernels.fastexp import fexp_array
from minigpt.layers.attention import causal_attention_backward, causal_attention_forward, merge_heads
from minigpt.layers.attention import multihead_attention_backward, multihead_attention_forward, split_heads
from minigpt.ops import op_table

# Both sides round differently (blocked online softmax, polynomial exp, other
# summation order): the difference is a few ulps of values of size ~1 times
# the number of terms summed, so allow ~1e3 eps of each dtype.
TOL = {np.float32: 2e-4, np.float64: 1e-12}

# (B, H, T_q, T_k, D): T=1, one head, head size 1, batch 1, T not a multiple
# of BLOCK (and longer than one block), and T_q < T_k (KV-cache decoding).
SHAPES = [
    (1, 1, 1, 1, 1),
    (2, 3, 7, 7, 5),
    (1, 1, BLOCK + 37, BLOCK + 37, 4),
    (2, 1, 1, 17, 8),
    (1, 2, 5, 2 * BLOCK + 3, 3),
    (3, 2, 6, 6, 1),
    # key counts past a multiple of LANES / EXP_CHUNK (the padded loops), a
    # full group of head dims, and KV-cache offsets with T_k not a multiple of 16
    (2, 2, 65, 65, 32),
    (1, 2, 3, 130, 6),
    (1, 3, 1, 77, 32),
    # the backward's scratch arrays carved from one buffer (SKEW): sizes that
    # are whole multiples of 1024 elements, from D T_pad (D = 8, T = 128) and
    # from ROWS x the padded key count (D = 2, 1024 keys, T_q < T_k), so an
    # overlap of neighbouring arrays would show
    (2, 2, 128, 128, 8),
    (1, 1, 37, 1024, 2),
]


def _inputs(shape, dtype, seed=0, scale=1.0):
    B, H, T_q, T_k, D = shape
    rng = np.random.default_rng(seed)
    q = (scale * rng.standard_normal((B, H, T_q, D))).astype(dtype)
    k = (scale * rng.standard_normal((B, H, T_k, D))).astype(dtype)
    v = rng.standard_normal((B, H, T_k, D)).astype(dtype)
    dout = rng.standard_normal((B, H, T_q, D)).astype(dtype)
    return q, k, v, dout


def _compare(q, k, v, dout, tol):
    out, cache = attention_forward(q, k, v)
    ref, ref_cache = causal_attention_forward(q, k, v)
    assert out.dtype == q.dtype and out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol)
    grads = attention_backward(dout, cache)
    ref_grads = causal_attention_backward(dout, ref_cache)
    for name, g, r in zip("qkv", grads, ref_grads):
        assert g.dtype == q.dtype and g.shape == r.shape, name
        np.testing.assert_allclose(g, r, rtol=tol, atol=tol, err_msg=f"d{name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(shape, dtype):
    _compare(*_inputs(shape, dtype), TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_scores_move_the_running_max(dtype):
    # Scores of size ~100 whose maximum keeps growing along the keys: every
    # new block raises the running max, so the rescaling path is exercised;
    # a missing rescale would be off by factors of e^100.
    B, H, T, D = 1, 2, 3 * BLOCK + 5, 4
    rng = np.random.default_rng(1)
    q = np.full((B, H, T, D), 3.0) + 0.1 * rng.standard_normal((B, H, T, D))
    k = np.linspace(0, 8, T)[None, None, :, None] * np.ones((B, H, T, D))
    k = k + 0.1 * rng.standard_normal((B, H, T, D))
    v = rng.standard_normal((B, H, T, D))
    dout = rng.standard_normal((B, H, T, D))
    _compare(*(a.astype(dtype) for a in (q, k, v, dout)), TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_max_over_integer_keys(dtype):
    # the row max reads floats as order-preserving integers: negatives, -0.0,
    # huge magnitudes, and counts on both sides of the padded vector loop
    row_max = njit(lambda a, n: _row_max(a, n))
    rng = np.random.default_rng(5)
    for n in (1, 2, 15, 63, 64, 65, 130, 256):
        a = (rng.standard_normal(256) * 10.0 ** rng.integers(-3, 30, 256)).astype(dtype)
        assert row_max(a, n) == a[:n].max()
        assert row_max(-np.abs(a), n) == (-np.abs(a))[:n].max()
    a = np.full(64, 7.0, dtype)
    a[:3] = -0.0, -1.0, -3.0
    assert row_max(a, 3) == 0.0  # keys past n (here larger) are not seen


def test_forward_does_not_depend_on_the_thread_split():
    # every thread takes every n-th (batch, head) task with its own scratch:
    # the result must be the same bits whatever the number of chunks
    q, k, v, _ = _inputs((3, 2, 37, 37, 8), np.float32)
    rows = [a.reshape(6, 37, 8) for a in (q, k, v)]  # (B H, T, D), the kernel's view
    outs = []
    for n_threads in (1, 2, 5, 64):
        out = np.empty_like(rows[0])
        _forward_kernel(*rows, 2, 8, _layout(2, 8, False), np.float32(8 ** -0.5), out, n_threads)
        outs.append(out)
    for out in outs[1:]:
        assert np.array_equal(out, outs[0])


def test_all_zero_inputs():
    # zero scores: each query averages the visible values uniformly
    shape = (2, 2, 9, 9, 4)
    _, _, v, dout = _inputs(shape, np.float64)
    z = np.zeros((2, 2, 9, 4))
    out, cache = attention_forward(z, z, z)
    assert np.all(out == 0.0)
    dq, dk, dv = attention_backward(np.zeros_like(out), cache)
    assert not (dq.any() or dk.any() or dv.any())
    _compare(z, z, v, dout, TOL[np.float64])


def test_kv_cache_rows_equal_the_full_computation():
    # the last T_q rows of a full pass equal a pass with only those queries
    q, k, v, _ = _inputs((2, 2, 11, 11, 4), np.float64)
    full, _ = attention_forward(q, k, v)
    tail, _ = attention_forward(q[:, :, -3:], k, v)
    np.testing.assert_allclose(tail, full[:, :, -3:], rtol=0, atol=1e-14)


@pytest.mark.parametrize("shape", [(1, 2, 4, 6, 3), (2, 1, 5, 5, 2), (1, 1, 1, 1, 1)])
def test_backward_against_finite_differences(shape):
    # float64: the centred difference's O(h^2) error and rounding stay near 1e-9
    q, k, v, _ = _inputs(shape, np.float64, seed=3)
    errors = check_op(attention_forward, attention_backward, [q, k, v])
    assert max(errors) < 1e-7, errors


def test_float_exp_matches_numpy():
    for dtype, tol in ((np.float32, 4e-7), (np.float64, 6e-16)):
        x = np.linspace(-80, 0.5, 10001).astype(dtype)
        np.testing.assert_allclose(fexp_array(x), np.exp(x), rtol=tol, atol=0)
        assert fexp_array(np.array([-1000.0], dtype))[0] == 0.0  # underflow gives 0, not garbage


def test_op_table_uses_the_kernel_for_numba_and_the_reference_for_numpy():
    assert op_table("numba")["attention"] == (attention_forward, attention_backward)
    assert op_table("numpy")["attention"] == (causal_attention_forward, causal_attention_backward)


def test_rejects_bad_shapes():
    q = np.zeros((1, 1, 5, 4))
    with pytest.raises(ValueError):
        attention_forward(q, np.zeros((1, 1, 3, 4)), np.zeros((1, 1, 3, 4)))  # T_q > T_k
    with pytest.raises(ValueError):
        attention_forward(q.astype(np.float32), q, q)  # mixed dtypes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_decoding_steps_read_the_kv_cache_in_place(dtype):
    # one query row a step against a KV cache's transposed store: the same as
    # the reference on plain arrays, through a capacity doubling (80 -> 160),
    # with key counts on both sides of the padded loops
    from minigpt.layers.attention import _extend_kv

    B, H, T, D = 2, 3, 130, 8
    q, k, v, _ = _inputs((B, H, T, T, D), dtype, seed=7)
    cache = _extend_kv((None, None), k[:, :, :40], v[:, :, :40])
    for t in range(40, T):
        cache = _extend_kv(cache, k[:, :, t:t + 1], v[:, :, t:t + 1])
        assert _keys_along_rows(cache[0]) is cache.store.kT  # no copy
        out, _ = attention_forward(q[:, :, t:t + 1], *cache)
        ref, _ = causal_attention_forward(q[:, :, t:t + 1], k[:, :, :t + 1], v[:, :, :t + 1])
        np.testing.assert_allclose(out, ref, rtol=TOL[dtype], atol=TOL[dtype], err_msg=f"t={t}")
    assert cache.store.kT.shape[3] == 160  # room for twice the first 40 positions, doubled once at 80


def test_two_continuations_of_one_cache_stay_apart():
    # the newest state of a store is extended in place; an older one (a second
    # continuation of the same past) gets its own store, so neither sees the other
    from minigpt.layers.attention import _extend_kv

    q, k, v, _ = _inputs((1, 2, 6, 6, 4), np.float64, seed=9)
    past = _extend_kv((None, None), k[:, :, :4], v[:, :, :4])
    first = _extend_kv(past, k[:, :, 4:5], v[:, :, 4:5])
    second = _extend_kv(past, k[:, :, 5:6], v[:, :, 5:6])  # past's store has moved on
    assert second.store is not first.store and first.store is past.store
    np.testing.assert_array_equal(first[0][:, :, 4], k[:, :, 4])
    np.testing.assert_array_equal(second[0][:, :, 4], k[:, :, 5])
    np.testing.assert_array_equal(past[0], k[:, :, :4])  # the older views are unchanged


def test_decoding_step_above_small_work_uses_the_parallel_kernel():
    # B H T_k D >= SMALL_WORK: the threaded decode kernel, not its serial twin
    from minigpt.kernels.threads import SMALL_WORK
    from minigpt.layers.attention import _extend_kv

    B, H, T, D = 4, 8, 2050, 64
    assert B * H * T * D >= SMALL_WORK
    q, k, v, _ = _inputs((B, H, 1, T, D), np.float32, seed=11)
    cache = _extend_kv((None, None), k, v)
    out, _ = attention_forward(q, *cache)
    ref, _ = causal_attention_forward(q, k, v)
    np.testing.assert_allclose(out, ref, rtol=TOL[np.float32], atol=TOL[np.float32])


# ------------------------------------------------ the packed layout, qkv (B, T, 3C)
# (B, H, T, D): T=1, one head, head size 1, T past LANES / EXP_CHUNK and past one BLOCK, odd sizes
PACKED_SHAPES = [(1, 1, 1, 1), (2, 3, 7, 5), (3, 2, 6, 1), (2, 4, 65, 32), (1, 2, BLOCK + 37, 4), (2, 1, 17, 8)]


def _packed_reference(qkv, dout, H):
    """out (B, T, C) and dqkv (B, T, 3C) of the reference core on split heads."""
    C = qkv.shape[2] // 3
    q, k, v = (split_heads(qkv[..., j * C:(j + 1) * C], H) for j in range(3))  # (B, H, T, D)
    out, cache = causal_attention_forward(q, k, v)
    grads = causal_attention_backward(split_heads(dout, H), cache)
    return merge_heads(out), np.concatenate([merge_heads(g) for g in grads], axis=-1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", PACKED_SHAPES)
def test_packed_qkv_matches_the_reference_on_split_heads(shape, dtype):
    # the kernels reading q, k, v straight out of qkv and writing out and dqkv
    # in place give what the reference gives on the split heads (the same
    # arithmetic as the (B, H, T, D) path, so the same tolerance: TOL)
    B, H, T, D = shape
    rng = np.random.default_rng(5)
    qkv = rng.standard_normal((B, T, 3 * H * D)).astype(dtype)
    dout = rng.standard_normal((B, T, H * D)).astype(dtype)
    out, cache = attention_forward_qkv(qkv, H)
    dqkv = attention_backward_qkv(dout, cache)
    ref_out, ref_dqkv = _packed_reference(qkv, dout, H)
    assert out.dtype == dqkv.dtype == dtype and out.shape == ref_out.shape and dqkv.shape == qkv.shape
    np.testing.assert_allclose(out, ref_out, rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_allclose(dqkv, ref_dqkv, rtol=TOL[dtype], atol=TOL[dtype])


def test_packed_qkv_equals_the_split_kernel_bit_for_bit():
    # the same kernels over the same numbers in the same order, only indexed
    # differently: no rounding may differ between the two layouts
    B, H, T, D = 2, 4, 37, 8
    rng = np.random.default_rng(6)
    qkv = rng.standard_normal((B, T, 3 * H * D)).astype(np.float32)
    dout = rng.standard_normal((B, T, H * D)).astype(np.float32)
    C = H * D
    q, k, v = (np.ascontiguousarray(split_heads(qkv[..., j * C:(j + 1) * C], H)) for j in range(3))
    out, cache = attention_forward(q, k, v)
    grads = attention_backward(np.ascontiguousarray(split_heads(dout, H)), cache)
    p_out, p_cache = attention_forward_qkv(qkv, H)
    np.testing.assert_array_equal(p_out, merge_heads(out))
    np.testing.assert_array_equal(attention_backward_qkv(dout, p_cache),
                                  np.concatenate([merge_heads(g) for g in grads], axis=-1))


def test_packed_qkv_against_finite_differences():
    # float64: the centred difference's O(h^2) error and rounding stay near 1e-9
    qkv = np.random.default_rng(8).standard_normal((2, 5, 3 * 2 * 3))
    errors = check_op(attention_forward_qkv, attention_backward_qkv, [qkv, 2])
    assert max(errors) < 1e-7, errors


def test_packed_qkv_rejects_a_width_that_is_not_three_heads():
    with pytest.raises(ValueError):
        attention_forward_qkv(np.zeros((1, 3, 10)), 2)
    with pytest.raises(ValueError):
        attention_forward_qkv(np.zeros((1, 3, 12), dtype=np.float16), 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_multihead_layer_runs_the_numba_kernel_on_qkv_itself(dtype):
    # the layer takes the packed path with the numba table's kernel (its cache
    # says so) and agrees with the layer on the NumPy reference, both ways
    B, H, T, D = 2, 3, 20, 4
    rng = np.random.default_rng(10)
    qkv = rng.standard_normal((B, T, 3 * H * D)).astype(dtype)
    dout = rng.standard_normal((B, T, H * D)).astype(dtype)
    kernel = op_table("numba")["attention"]
    out, cache = multihead_attention_forward(qkv, H, kernel)
    assert cache[-1] is True and cache[2] == kernel.on_qkv
    ref, ref_cache = multihead_attention_forward(qkv, H)
    np.testing.assert_allclose(out, ref, rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_allclose(multihead_attention_backward(dout, cache),
                               multihead_attention_backward(dout, ref_cache), rtol=TOL[dtype], atol=TOL[dtype])
    # a plain pair of the same functions (no .on_qkv) splits the heads, as before
    _, plain = multihead_attention_forward(qkv, H, tuple(kernel))
    assert plain[-1] is False
