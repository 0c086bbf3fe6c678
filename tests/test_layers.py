"""Math tests for every layer in minigpt.layers.

Forward: each op against its docstring formula on small inputs that can be
checked by hand or by a naive loop. Backward: against centered finite
differences (minigpt.gradcheck) in float64.

Tolerances. Forward comparisons in float64 use rtol 1e-12: both sides do the
same few dozen flops in a different order, so they differ by a few ulp
(~1e-16 each). Gradient checks use a relative error < 1e-6: with h = 1e-5 the
centered difference has truncation error ~h^2 |f'''| ~ 1e-10 and rounding
error ~eps |f| / h ~ 1e-11, both far below 1e-6, while a wrong derivative
(a missing term, a transposed factor) gives errors of order 1e-2..1.
"""
import math

import numpy as np
import pytest

from minigpt.gradcheck import check_op, numerical_gradient, relative_error
from minigpt.layers import (
    causal_attention_backward,
    causal_attention_forward,
    cross_entropy_backward,
    cross_entropy_forward,
    dropout_backward,
    dropout_forward,
    embedding_backward,
    embedding_forward,
    gelu_backward,
    gelu_forward,
    layernorm_backward,
    layernorm_forward,
    linear_backward,
    linear_forward,
    lm_head_backward,
    lm_head_forward,
    log_softmax,
    multihead_attention_backward,
    multihead_attention_forward,
    residual_backward,
    residual_forward,
    softmax,
)
from minigpt.layers.layernorm import LN_EPS

FD_TOL = 1e-6  # see module docstring
RTOL = 1e-12  # float64 forward, same formula in another order


def randn(rng, *shape):
    return rng.standard_normal(shape)


def assert_gradcheck(fd_errors, op, errors):
    """All float inputs pass; record the worst error for the report."""
    checked = [e for e in errors if e is not None]
    assert checked, "nothing was checked"
    fd_errors.record(op, max(checked))
    assert max(checked) < FD_TOL, errors


# --------------------------------------------------------------- gradcheck
def test_numerical_gradient_handles_non_contiguous_input():
    # x.T is a view with swapped strides; perturbing a reshaped copy of it
    # would leave f unchanged and report a zero gradient
    x = randn(np.random.default_rng(0), 3, 4).T  # (4, 3), not C-contiguous
    num = numerical_gradient(lambda: float(np.sum(x**3)), x)
    # atol: rounding of f (~1e-15 |f|) divided by 2h = 2e-5
    np.testing.assert_allclose(num, 3 * x**2, rtol=1e-8, atol=1e-8)


def test_relative_error_is_zero_for_equal_and_one_for_opposite():
    a = np.array([1.0, -2.0, 3.0])
    assert relative_error(a, a) == 0.0
    assert relative_error(a, -a) == pytest.approx(1.0)
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    # only the chosen entries count
    assert relative_error(a, np.array([1.0, 5.0, 3.0]), indices=[0, 2]) == 0.0


def test_check_op_catches_a_wrong_backward():
    x = randn(np.random.default_rng(1), 3, 4)
    wrong = check_op(gelu_forward, lambda d, c: d * 0.5, [x])  # not gelu'
    assert wrong[0] > 1e-2


# --------------------------------------------------------------- embedding
def test_embedding_forward_gathers_and_adds_positions():
    wte = np.arange(15.0).reshape(5, 3)  # row v = [3v, 3v+1, 3v+2]
    wpe = 100.0 * np.arange(1, 7)[:, None] * np.ones((1, 3))  # row t = 100(t+1)
    idx = np.array([[1, 4, 1], [0, 2, 3]])
    out, _ = embedding_forward(idx, wte, wpe)
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[0, 0], [103.0, 104.0, 105.0])  # wte[1] + wpe[0]
    np.testing.assert_array_equal(out[0, 1], [212.0, 213.0, 214.0])  # wte[4] + wpe[1]
    np.testing.assert_array_equal(out[1, 2], [309.0, 310.0, 311.0])  # wte[3] + wpe[2]
    for b in range(2):
        for t in range(3):
            np.testing.assert_array_equal(out[b, t], wte[idx[b, t]] + wpe[t])


def test_embedding_forward_pos_offset():
    rng = np.random.default_rng(2)
    wte, wpe = randn(rng, 5, 3), randn(rng, 8, 3)
    idx = np.array([[4, 0]])
    out, _ = embedding_forward(idx, wte, wpe, pos_offset=5)
    np.testing.assert_array_equal(out[0, 0], wte[4] + wpe[5])
    np.testing.assert_array_equal(out[0, 1], wte[0] + wpe[6])


def test_embedding_backward_scatter_adds_repeated_ids():
    rng = np.random.default_rng(3)
    wte, wpe = randn(rng, 4, 2), randn(rng, 5, 2)
    idx = np.array([[2, 2, 2], [2, 0, 2]])  # token 2 five times, token 0 once
    out, cache = embedding_forward(idx, wte, wpe)
    dout = randn(rng, *out.shape)
    dwte, dwpe = embedding_backward(dout, cache)
    np.testing.assert_allclose(dwte[2], dout[idx == 2].sum(axis=0), rtol=RTOL)
    np.testing.assert_allclose(dwte[0], dout[1, 1], rtol=RTOL)
    np.testing.assert_array_equal(dwte[[1, 3]], 0.0)  # never picked
    np.testing.assert_allclose(dwpe[:3], dout.sum(axis=0), rtol=RTOL)
    np.testing.assert_array_equal(dwpe[3:], 0.0)  # positions not used


@pytest.mark.parametrize(
    "B, T, V, C, T_max, offset",
    [
        (1, 1, 3, 1, 1, 0),  # T=1, batch 1, width 1
        (2, 5, 3, 4, 7, 2),  # V=3 < B*T: ids repeat; offset into wpe
        (3, 4, 7, 2, 4, 0),  # T == T_max
    ],
)
def test_embedding_gradcheck(fd_errors, B, T, V, C, T_max, offset):
    rng = np.random.default_rng(4)
    idx = rng.integers(0, V, size=(B, T))
    wte, wpe = randn(rng, V, C), randn(rng, T_max, C)
    # check_op pairs the i-th gradient with the i-th input; the embedding's
    # backward returns (dwte, dwpe), so the integer ids are closed over
    errors = check_op(
        lambda wte, wpe: embedding_forward(idx, wte, wpe, offset),
        embedding_backward,
        [wte, wpe],
    )
    assert_gradcheck(fd_errors, "embedding", errors)


# ------------------------------------------------------------------ linear
def test_linear_forward_hand_values():
    x = np.array([[1.0, 2.0]])
    w = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])  # (in=2, out=3)
    b = np.array([0.5, 0.0, 0.0])
    out, _ = linear_forward(x, w, b)
    np.testing.assert_array_equal(out, [[1.5, 2.0, 0.0]])


def test_linear_forward_matches_loops():
    rng = np.random.default_rng(5)
    x, w, b = randn(rng, 2, 3, 4), randn(rng, 4, 5), randn(rng, 5)
    out, _ = linear_forward(x, w, b)
    ref = np.zeros((2, 3, 5))
    for n in np.ndindex(2, 3):
        for j in range(5):
            ref[n][j] = sum(x[n][i] * w[i, j] for i in range(4)) + b[j]
    np.testing.assert_allclose(out, ref, rtol=RTOL)


@pytest.mark.parametrize(
    "x_shape, n_out",
    [((1, 1, 1), 1), ((2, 3, 4), 5), ((5, 4), 1), ((1, 1, 4), 7), ((3, 2, 1), 6)],
)
def test_linear_gradcheck(fd_errors, x_shape, n_out):
    rng = np.random.default_rng(6)
    x = randn(rng, *x_shape)
    w, b = randn(rng, x_shape[-1], n_out), randn(rng, n_out)
    assert_gradcheck(fd_errors, "linear", check_op(linear_forward, linear_backward, [x, w, b]))


# --------------------------------------------------------------- layernorm
def test_layernorm_hand_values():
    x = np.array([[1.0, 2.0, 3.0]])  # mean 2, biased variance 2/3
    out, _ = layernorm_forward(x, np.ones(3), np.zeros(3))
    s = math.sqrt(2.0 / 3.0 + LN_EPS)
    np.testing.assert_allclose(out, [[-1.0 / s, 0.0, 1.0 / s]], rtol=RTOL, atol=1e-15)


def test_layernorm_normalises_then_applies_affine():
    rng = np.random.default_rng(7)
    x = 3.0 + 2.0 * randn(rng, 4, 5, 6)
    xhat, _ = layernorm_forward(x, np.ones(6), np.zeros(6))
    # before the affine: mean 0, and variance var/(var+eps), i.e. 1 up to eps/var
    var = x.var(axis=-1)
    np.testing.assert_allclose(xhat.mean(axis=-1), 0.0, atol=1e-14)
    np.testing.assert_allclose(xhat.var(axis=-1), var / (var + LN_EPS), rtol=1e-12)
    np.testing.assert_allclose(xhat.var(axis=-1), 1.0, atol=LN_EPS / var.min())
    # the affine acts per channel
    gamma, beta = randn(rng, 6), randn(rng, 6)
    out, _ = layernorm_forward(x, gamma, beta)
    np.testing.assert_allclose(out, xhat * gamma + beta, rtol=RTOL)


def test_layernorm_eps_keeps_constant_rows_finite():
    out, cache = layernorm_forward(np.full((2, 4), 7.0), np.ones(4), np.full(4, 0.5))
    np.testing.assert_array_equal(out, 0.5)  # xhat = 0, so out = beta
    dx, _, _ = layernorm_backward(np.ones((2, 4)), cache)
    assert np.all(np.isfinite(dx))


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 2), (2, 3, 5), (4, 7), (1, 3)])
def test_layernorm_gradcheck(fd_errors, shape):
    rng = np.random.default_rng(8)
    x = randn(rng, *shape)
    C = shape[-1]
    gamma, beta = 1.0 + 0.5 * randn(rng, C), randn(rng, C)  # not the trivial 1, 0
    errors = check_op(layernorm_forward, layernorm_backward, [x, gamma, beta])
    assert_gradcheck(fd_errors, "layernorm (x, gamma, beta)", errors)


def test_layernorm_gamma_beta_grads_formula():
    rng = np.random.default_rng(9)
    x, gamma, beta = randn(rng, 2, 3, 4), randn(rng, 4), randn(rng, 4)
    out, cache = layernorm_forward(x, gamma, beta)
    xhat, _ = layernorm_forward(x, np.ones(4), np.zeros(4))
    dout = randn(rng, *out.shape)
    _, dgamma, dbeta = layernorm_backward(dout, cache)
    np.testing.assert_allclose(dgamma, (dout * xhat).sum(axis=(0, 1)), rtol=RTOL)
    np.testing.assert_allclose(dbeta, dout.sum(axis=(0, 1)), rtol=RTOL)


# -------------------------------------------------------------------- GELU
def gelu_tanh_ref(x):
    return 0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def gelu_erf(x):
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_gelu_hand_values():
    out, _ = gelu_forward(np.array([0.0, 1.0, -1.0, 10.0, -10.0]))
    assert out[0] == 0.0
    assert out[1] == pytest.approx(0.8411919906082768, rel=1e-14)  # 0.5(1 + tanh(sqrt(2/pi) 1.044715))
    assert out[2] == pytest.approx(-0.1588080093917232, rel=1e-12)  # gelu(x) - gelu(-x) = x
    assert out[3] == 10.0  # tanh saturates to exactly 1
    assert abs(out[4]) < 1e-30


def test_gelu_matches_tanh_formula_and_erf_gelu():
    x = np.linspace(-6.0, 6.0, 2001)
    out, _ = gelu_forward(x)
    # atol: for x << 0, 1 + tanh(u) cancels, leaving an absolute error of a
    # few ulp of |x| (~1e-15) on an output of size 1e-10
    np.testing.assert_allclose(out, [gelu_tanh_ref(v) for v in x], rtol=1e-13, atol=1e-15)
    # odd part is exactly x/2: gelu(x) - gelu(-x) = x
    np.testing.assert_allclose(out - out[::-1], x, atol=1e-14)
    # the tanh form approximates the exact erf GELU to within about 4.7e-4
    # (largest near |x| ~ 2.7); it must be close, yet not the erf form itself
    diff = np.abs(out - np.array([gelu_erf(v) for v in x]))
    assert diff.max() < 5e-4
    assert diff.max() > 1e-4


@pytest.mark.parametrize("shape, scale", [((1,), 1.0), ((2, 3, 4), 1.0), ((5, 3), 4.0)])
def test_gelu_gradcheck(fd_errors, shape, scale):
    x = scale * randn(np.random.default_rng(10), *shape)
    assert_gradcheck(fd_errors, "gelu", check_op(gelu_forward, gelu_backward, [x]))


# ----------------------------------------------------------------- dropout
def test_dropout_identity_when_off():
    rng = np.random.default_rng(11)
    x = randn(rng, 3, 4)
    out, cache = dropout_forward(x, 0.0, rng, training=True)
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(dropout_backward(x, cache), x)
    out, cache = dropout_forward(x, 0.5, rng, training=False)  # eval mode
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(dropout_backward(x, cache), x)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_mask_values_and_scaling(p):
    x = np.ones((200, 1000))
    out, _ = dropout_forward(x, p, np.random.default_rng(12))
    kept = out != 0
    # every unit is either dropped or scaled by exactly 1/(1-p)
    np.testing.assert_allclose(out[kept], 1.0 / (1.0 - p), rtol=1e-15)
    # n = 2e5 Bernoulli draws: the dropped fraction has std sqrt(p(1-p)/n) and
    # the mean of out has std sqrt(p/(1-p)/n); 5 sigma makes a false alarm
    # a ~1e-6 event
    n = x.size
    assert abs((~kept).mean() - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert abs(out.mean() - 1.0) < 5 * math.sqrt(p / (1 - p) / n)


def test_dropout_backward_uses_the_forward_mask():
    rng = np.random.default_rng(13)
    x = 1.0 + np.abs(randn(rng, 4, 50))  # nonzero, so out == 0 marks a drop
    p = 0.3
    out, cache = dropout_forward(x, p, rng)
    dout = randn(rng, *x.shape)
    dx = dropout_backward(dout, cache)
    dropped = out == 0
    assert dropped.any() and (~dropped).any()
    np.testing.assert_array_equal(dx[dropped], 0.0)
    np.testing.assert_allclose(dx[~dropped], dout[~dropped] / (1 - p), rtol=1e-15)


@pytest.mark.parametrize("shape, p", [((1,), 0.5), ((2, 3, 4), 0.25), ((3, 7), 0.6)])
def test_dropout_gradcheck(fd_errors, shape, p):
    x = randn(np.random.default_rng(14), *shape)
    # a fresh generator with a fixed seed per call: every forward of the
    # finite difference draws the same mask as the analytic one
    errors = check_op(
        lambda x: dropout_forward(x, p, np.random.default_rng(99)), dropout_backward, [x]
    )
    assert_gradcheck(fd_errors, "dropout", errors)


# ---------------------------------------------------------------- residual
def test_residual_forward_backward():
    rng = np.random.default_rng(15)
    x, f = randn(rng, 2, 3), randn(rng, 2, 3)
    out, cache = residual_forward(x, f)
    np.testing.assert_array_equal(out, x + f)
    dout = randn(rng, 2, 3)
    dx, df = residual_backward(dout, cache)
    np.testing.assert_array_equal(dx, dout)
    np.testing.assert_array_equal(df, dout)


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 4)])
def test_residual_gradcheck(fd_errors, shape):
    rng = np.random.default_rng(16)
    x, f = randn(rng, *shape), randn(rng, *shape)
    assert_gradcheck(fd_errors, "residual", check_op(residual_forward, residual_backward, [x, f]))


# ----------------------------------------------------------------- lm head
def test_lm_head_forward_is_tied_to_wte():
    x = np.array([[[1.0, 2.0]]])  # (B=1, T=1, C=2)
    wte = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, -1.0]])  # (V=3, C=2)
    logits, _ = lm_head_forward(x, wte)
    np.testing.assert_array_equal(logits, [[[1.0, 2.0, 1.0]]])  # <x, wte[v]> per token


@pytest.mark.parametrize("B, T, C, V", [(1, 1, 1, 1), (2, 3, 4, 5), (1, 4, 3, 2)])
def test_lm_head_gradcheck(fd_errors, B, T, C, V):
    rng = np.random.default_rng(17)
    x, wte = randn(rng, B, T, C), randn(rng, V, C)
    assert_gradcheck(fd_errors, "lm_head", check_op(lm_head_forward, lm_head_backward, [x, wte]))


# ----------------------------------------------------- softmax / cross-entropy
def test_softmax_rows_sum_to_one():
    rng = np.random.default_rng(18)
    z = 10.0 * randn(rng, 3, 4, 7)
    p = softmax(z)
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(p, np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(softmax(z + 123.0), p, rtol=1e-12)  # shift invariant
    np.testing.assert_allclose(log_softmax(z), np.log(p), rtol=1e-12, atol=1e-12)
    big = softmax(np.array([[1e4, 1e4, -1e4]]))
    np.testing.assert_array_equal(big, [[0.5, 0.5, 0.0]])


def test_cross_entropy_is_mean_negative_log_prob():
    rng = np.random.default_rng(19)
    logits = randn(rng, 2, 3, 5)
    targets = rng.integers(0, 5, size=(2, 3))
    loss, _ = cross_entropy_forward(logits, targets)
    ref = []
    for b, t in np.ndindex(2, 3):
        e = [math.exp(z) for z in logits[b, t]]
        ref.append(-math.log(e[targets[b, t]] / sum(e)))
    assert loss == pytest.approx(np.mean(ref), rel=1e-13)
    # uniform logits: every token has p = 1/V, so the loss is ln V
    loss, _ = cross_entropy_forward(np.zeros((4, 7)), np.arange(4))
    assert loss == pytest.approx(math.log(7), rel=1e-15)


@pytest.mark.parametrize("dtype, atol", [("float64", 1e-11), ("float32", 2e-3)])
def test_cross_entropy_large_logits(dtype, atol):
    # row 0: two tied maxima, target one of them -> loss ln 2
    # row 1: target is 1e4 below the max: loss = 1e4 + ln(1 + e^-1e4 + e^-2e4),
    #        and e^-1e4 is far below one ulp of 1e4, so exactly 1e4
    # naive exp(1e4) would overflow to inf and give nan
    logits = np.array([[1e4, 1e4, -1e4], [1e4, 0.0, -1e4]], dtype=dtype)
    targets = np.array([0, 1])
    loss, cache = cross_entropy_forward(logits, targets)
    # atol: one ulp of 1e4 is 1.8e-12 in float64, 9.8e-4 in float32
    assert abs(float(loss) - (math.log(2.0) + 1e4) / 2) < atol
    dlogits = cross_entropy_backward(1.0, cache)
    # dL/dz = (softmax - onehot) / N, N = 2
    expected = np.array([[0.5 - 1.0, 0.5, 0.0], [1.0, -1.0, 0.0]]) / 2
    assert np.all(np.isfinite(dlogits))
    np.testing.assert_allclose(dlogits, expected, atol=1e-7)


def test_cross_entropy_backward_is_p_minus_onehot():
    rng = np.random.default_rng(20)
    logits = randn(rng, 6, 4)
    targets = rng.integers(0, 4, size=6)
    _, cache = cross_entropy_forward(logits, targets)
    d = cross_entropy_backward(2.5, cache)
    expected = softmax(logits)
    expected[np.arange(6), targets] -= 1.0
    np.testing.assert_allclose(d, 2.5 * expected / 6, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "shape", [(1, 1, 2), (2, 3, 5), (4, 7), (1, 1, 1), (3, 1, 11)]
)
def test_cross_entropy_gradcheck(fd_errors, shape):
    rng = np.random.default_rng(21)
    logits = 3.0 * randn(rng, *shape)
    targets = rng.integers(0, shape[-1], size=shape[:-1])
    errors = check_op(cross_entropy_forward, cross_entropy_backward, [logits, targets])
    assert_gradcheck(fd_errors, "cross_entropy", errors)


# ---------------------------------------------------------------- attention
def naive_causal_attention(q, k, v):
    """softmax(q k^T / sqrt(D) + mask) v with explicit loops; query i sits at
    absolute position i + (T_k - T_q) and sees keys j up to it."""
    B, H, T_q, D = q.shape
    T_k = k.shape[2]
    out = np.zeros((B, H, T_q, D))
    for b, h, i in np.ndindex(B, H, T_q):
        visible = range(i + (T_k - T_q) + 1)
        s = [sum(q[b, h, i, d] * k[b, h, j, d] for d in range(D)) / math.sqrt(D) for j in visible]
        m = max(s)
        e = [math.exp(x - m) for x in s]
        for j, ej in zip(visible, e):
            out[b, h, i] += ej / sum(e) * v[b, h, j]
    return out


def test_attention_hand_values():
    # D = 1, T = 2: position 0 sees only itself; position 1 sees two keys with
    # equal scores, so it averages the values
    q = np.ones((1, 1, 2, 1))
    k = np.ones((1, 1, 2, 1))
    v = np.array([[[[2.0], [4.0]]]])
    out, _ = causal_attention_forward(q, k, v)
    np.testing.assert_allclose(out[0, 0, :, 0], [2.0, 3.0], rtol=1e-15)
    # scores 0 and ln 3 * sqrt(D) -> weights 1/4, 3/4
    q = np.ones((1, 1, 2, 4))
    k = np.zeros((1, 1, 2, 4))
    k[0, 0, 1, :] = math.log(3.0) / 2.0  # q.k = 4 * ln3 / 2, divided by sqrt(4)
    v = np.zeros((1, 1, 2, 4))
    v[0, 0, 0], v[0, 0, 1] = 8.0, 4.0
    out, _ = causal_attention_forward(q, k, v)
    np.testing.assert_allclose(out[0, 0, 1], 0.25 * 8.0 + 0.75 * 4.0, rtol=1e-14)


@pytest.mark.parametrize("B, H, T, D", [(1, 1, 1, 1), (2, 3, 5, 4), (1, 2, 7, 1), (2, 1, 4, 3)])
def test_attention_matches_naive_loops(B, H, T, D):
    rng = np.random.default_rng(22)
    q, k, v = (randn(rng, B, H, T, D) for _ in range(3))
    out, _ = causal_attention_forward(q, k, v)
    np.testing.assert_allclose(out, naive_causal_attention(q, k, v), rtol=RTOL, atol=1e-14)


def test_attention_is_causal():
    rng = np.random.default_rng(23)
    B, H, T, D = 2, 2, 6, 3
    q, k, v = (randn(rng, B, H, T, D) for _ in range(3))
    out, _ = causal_attention_forward(q, k, v)
    for t in range(T - 1):
        q2, k2, v2 = q.copy(), k.copy(), v.copy()
        for a in (q2, k2, v2):
            a[:, :, t + 1 :] = randn(rng, B, H, T - t - 1, D)  # change the future
        out2, _ = causal_attention_forward(q2, k2, v2)
        # masked scores are exactly -inf, so exp gives exactly 0: bit-equal
        np.testing.assert_array_equal(out2[:, :, : t + 1], out[:, :, : t + 1])
        assert not np.allclose(out2[:, :, t + 1 :], out[:, :, t + 1 :])


@pytest.mark.parametrize("T_q, T_k", [(1, 5), (3, 6), (6, 6)])
def test_attention_fewer_queries_equals_last_rows(T_q, T_k):
    # the KV-cache case: the last T_q positions query all T_k keys
    rng = np.random.default_rng(24)
    q, k, v = (randn(rng, 2, 2, T_k, 3) for _ in range(3))
    full, _ = causal_attention_forward(q, k, v)
    part, _ = causal_attention_forward(q[:, :, -T_q:], k, v)
    np.testing.assert_allclose(part, full[:, :, -T_q:], rtol=RTOL, atol=1e-14)
    np.testing.assert_allclose(part, naive_causal_attention(q[:, :, -T_q:], k, v), rtol=RTOL, atol=1e-14)


@pytest.mark.parametrize(
    "B, H, T_q, T_k, D",
    [(1, 1, 1, 1, 1), (2, 3, 5, 5, 4), (1, 2, 7, 7, 1), (2, 1, 4, 4, 3), (1, 2, 3, 6, 2)],
)
def test_attention_gradcheck(fd_errors, B, H, T_q, T_k, D):
    rng = np.random.default_rng(25)
    q, k, v = randn(rng, B, H, T_q, D), randn(rng, B, H, T_k, D), randn(rng, B, H, T_k, D)
    errors = check_op(causal_attention_forward, causal_attention_backward, [q, k, v])
    assert_gradcheck(fd_errors, "causal_attention (q, k, v)", errors)


def split(x, H):
    B, T, C = x.shape
    return x.reshape(B, T, H, C // H).transpose(0, 2, 1, 3)  # (B, H, T, D)


@pytest.mark.parametrize("B, T, C, H", [(1, 1, 3, 1), (2, 5, 6, 3), (1, 4, 4, 4), (3, 2, 8, 2)])
def test_multihead_matches_per_head_reference(B, T, C, H):
    rng = np.random.default_rng(26)
    qkv = randn(rng, B, T, 3 * C)
    out, _ = multihead_attention_forward(qkv, H)
    assert out.shape == (B, T, C)
    q, k, v = split(qkv[..., :C], H), split(qkv[..., C : 2 * C], H), split(qkv[..., 2 * C :], H)
    ref = naive_causal_attention(q, k, v)  # (B, H, T, D)
    D = C // H
    for h in range(H):  # head h fills channels h*D .. (h+1)*D - 1
        np.testing.assert_allclose(out[..., h * D : (h + 1) * D], ref[:, h], rtol=RTOL, atol=1e-14)


@pytest.mark.parametrize("B, T, C, H", [(1, 1, 3, 1), (2, 5, 6, 3), (1, 4, 4, 4), (3, 2, 8, 2)])
def test_multihead_gradcheck(fd_errors, B, T, C, H):
    qkv = randn(np.random.default_rng(27), B, T, 3 * C)
    errors = check_op(multihead_attention_forward, multihead_attention_backward, [qkv, H])
    assert_gradcheck(fd_errors, "multihead_attention", errors)


def test_multihead_kv_cache_equals_full():
    rng = np.random.default_rng(28)
    B, T, C, H = 2, 7, 6, 2
    qkv = randn(rng, B, T, 3 * C)
    full, _ = multihead_attention_forward(qkv, H)
    empty = np.zeros((B, H, 0, C // H))
    first, cache = multihead_attention_forward(qkv[:, :4], H, kv_cache=(empty, empty))
    assert cache[0].shape == (B, H, 4, C // H)
    rest = [first]
    for t in range(4, T):  # then one position at a time
        out, cache = multihead_attention_forward(qkv[:, t : t + 1], H, kv_cache=cache)
        rest.append(out)
    np.testing.assert_allclose(np.concatenate(rest, axis=1), full, rtol=RTOL, atol=1e-14)
