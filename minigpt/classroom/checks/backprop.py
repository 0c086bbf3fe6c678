"""Checks of the backprop assignment: forward by formula, backward by centered
differences of the formula's forward, on shapes and values drawn from the
part's seed. Each check yields (sub-check name, function): the function
raises CheckFailed (or anything else) or returns a line of detail."""
from __future__ import annotations

import math

import numpy as np

from .common import GRAD_TOL, FORWARD_TOL, CheckFailed, compare, fmt, numeric_grad, tensor_shape

EPS = 1e-5
K, A = math.sqrt(2.0 / math.pi), 0.044715


def _ln(x, g, b, eps=EPS):
    xhat = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    return g * xhat + b


def check_layernorm(hw, rng):
    shape = tensor_shape(rng, 2) + (int(rng.integers(2, 9)),)  # (B, T, C)
    C = shape[-1]
    x = rng.normal(rng.normal(), 1 + 2 * rng.random(), shape)
    g, b = 1 + 0.5 * rng.standard_normal(C), rng.standard_normal(C)

    def forward():
        out, _ = hw.layernorm_forward(x.copy(), g.copy(), b.copy())
        err = compare("layernorm_forward output vs gamma * (x - mean) / sqrt(var + 1e-5) + beta", out, _ln(x, g, b),
                      FORWARD_TOL, hints=[("the variance looks unbiased (divide by C, as GPT-2 does, not C - 1)",
                                           g * (x - x.mean(-1, keepdims=True))
                                           / np.sqrt(x.var(-1, ddof=1, keepdims=True) + EPS) + b)])
        return f"x {shape}: relative error {fmt(err)}"

    def backward():
        dout = rng.standard_normal(shape)
        _, cache = hw.layernorm_forward(x.copy(), g.copy(), b.copy())
        grads = hw.layernorm_backward(dout.copy(), cache)
        if not isinstance(grads, tuple) or len(grads) != 3:
            raise CheckFailed("layernorm_backward must return the tuple (dx, dgamma, dbeta)")
        dx, dg, db = grads
        xs, gs, bs = x.copy(), g.copy(), b.copy()
        f = lambda: float(np.sum(_ln(xs, gs, bs) * dout))  # noqa: E731
        num = [numeric_grad(f, a) for a in (xs, gs, bs)]
        mu = x.mean(-1, keepdims=True)
        rstd = 1 / np.sqrt(x.var(-1, keepdims=True) + EPS)
        xhat = (x - mu) * rstd
        dxhat = dout * g
        m1, m2 = dxhat.mean(-1, keepdims=True), (dxhat * xhat).mean(-1, keepdims=True)
        hints = [("the mean(dxhat) term (x's path through the mean mu) looks missing", rstd * (dxhat - xhat * m2)),
                 ("the xhat * mean(dxhat * xhat) term (x's path through the variance) looks missing",
                  rstd * (dxhat - m1)),
                 ("only the direct path rstd * dxhat is there: the mean and variance paths are missing",
                  rstd * dxhat),
                 ("gamma looks missing: dxhat = dout * gamma",
                  rstd * (dout - dout.mean(-1, keepdims=True) - xhat * (dout * xhat).mean(-1, keepdims=True)))]
        e1 = compare("dx vs centered differences", dx, num[0], GRAD_TOL, hints)
        e2 = compare("dgamma vs centered differences", dg, num[1], GRAD_TOL, [("that is dbeta", num[2])],
                     shape_hint="sum over every axis but the last")
        e3 = compare("dbeta vs centered differences", db, num[2], GRAD_TOL, [("that is dgamma", num[1])],
                     shape_hint="sum over every axis but the last")
        return f"relative errors dx {fmt(e1)}, dgamma {fmt(e2)}, dbeta {fmt(e3)}"

    yield "forward", forward
    yield "backward", backward


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(K * (x + A * x**3)))


def check_gelu(hw, rng):
    shape = tensor_shape(rng, 3)
    x = 2.5 * rng.standard_normal(shape)

    def forward():
        out, _ = hw.gelu_forward(x.copy())
        erf = np.vectorize(math.erf)
        err = compare("gelu_forward vs 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))", out, _gelu(x),
                      FORWARD_TOL, [("that is the exact erf GELU; GPT-2 uses the tanh approximation",
                                     0.5 * x * (1 + erf(x / math.sqrt(2))))])
        return f"x {shape}: relative error {fmt(err)}"

    def backward():
        dout = rng.standard_normal(shape)
        _, cache = hw.gelu_forward(x.copy())
        dx = hw.gelu_backward(dout.copy(), cache)
        xs = x.copy()
        num = numeric_grad(lambda: float(np.sum(_gelu(xs) * dout)), xs)
        t = np.tanh(K * (x + A * x**3))
        du = K * (1 + 3 * A * x**2)
        hints = [("the 0.5 (1 + t) term of the product rule looks missing", dout * 0.5 * x * (1 - t * t) * du),
                 ("the 0.5 x (1 - t^2) du/dx term of the product rule looks missing", dout * 0.5 * (1 + t)),
                 ("du/dx looks like sqrt(2/pi) only: the derivative of the 0.044715 x^3 term is missing",
                  dout * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * K)),
                 ("dout looks missing: return dout times the local derivative",
                  0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)]
        err = compare("dx vs centered differences", dx, num, GRAD_TOL, hints)
        return f"relative error {fmt(err)}"

    yield "forward", forward
    yield "backward", backward


def _logsoftmax(z):
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def check_cross_entropy(hw, rng):
    B, T = tensor_shape(rng, 2)
    V = int(rng.integers(3, 12))
    z = 3 * rng.standard_normal((B, T, V))
    y = rng.integers(0, V, (B, T))

    def log_softmax():
        big = z + rng.choice([-1, 1]) * 1e4 * (1 + rng.random())  # logits of magnitude 1e4
        err = compare("log_softmax(z) vs z - logsumexp(z)", hw.log_softmax(z.copy()), _logsoftmax(z), FORWARD_TOL)
        with np.errstate(all="ignore"):
            got = hw.log_softmax(big.copy())
        compare("log_softmax of logits near 1e4 (the same up to a shift)", got, _logsoftmax(z), FORWARD_TOL,
                [("exp() overflowed or underflowed: subtract each row's max before exponentiating",
                  np.zeros_like(z))])
        return f"relative error {fmt(err)}, stable at 1e4"

    def forward():
        loss, _ = hw.cross_entropy_forward(z.copy(), y.copy())
        lp = _logsoftmax(z)
        want = -np.take_along_axis(lp, y[..., None], -1).mean()
        N = B * T
        hints = [("that is the sum over positions; the loss is the mean", want * N),
                 ("the sign looks flipped", -want)]
        err = compare(f"loss vs mean of logsumexp(z) - z[y] over {N} positions", loss, want, FORWARD_TOL, hints)
        return f"relative error {fmt(err)}"

    def backward():
        dloss = 0.5 + rng.random()
        _, cache = hw.cross_entropy_forward(z.copy(), y.copy())
        dz = hw.cross_entropy_backward(dloss, cache)
        zs = z.copy()
        num = numeric_grad(lambda: dloss * float(-np.take_along_axis(_logsoftmax(zs), y[..., None], -1).mean()), zs)
        p = np.exp(_logsoftmax(z))
        onehot = np.eye(V)[y]
        N = B * T
        hints = [("the 1/N of the mean looks missing", (p - onehot) * dloss),
                 ("the -onehot(y) term looks missing", p * dloss / N),
                 ("dloss (the upstream gradient) looks ignored", (p - onehot) / N)]
        err = compare(f"dlogits vs centered differences (dloss = {dloss:.3f})", dz, num, GRAD_TOL, hints)
        return f"relative error {fmt(err)}"

    yield "log_softmax", log_softmax
    yield "forward", forward
    yield "backward", backward


def _attn(q, k, v, masked=True):
    Tq, D = q.shape[-2:]
    Tk = k.shape[-2]
    s = q @ k.swapaxes(-1, -2) / math.sqrt(D)
    if masked:
        s = np.where(np.arange(Tk)[None, :] > np.arange(Tq)[:, None] + (Tk - Tq), -np.inf, s)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return p @ v, p


def check_attention(hw, rng):
    B, H = tensor_shape(rng, 2, 1, 3)
    T, D = int(rng.integers(2, 6)), int(rng.integers(1, 5))
    q, k, v = (rng.standard_normal((B, H, T, D)) for _ in range(3))

    def forward():
        out, _ = hw.causal_attention_forward(q.copy(), k.copy(), v.copy())
        want, _ = _attn(q, k, v)
        hints = [("the causal mask looks missing: query i must not see keys j > i", _attn(q, k, v, False)[0]),
                 ("the 1/sqrt(d_k) scale looks missing", _attn(q * math.sqrt(D), k, v)[0])]
        err = compare("out vs softmax(q k^T / sqrt(d_k) + causal mask) v", out, want, FORWARD_TOL, hints)
        Tq = int(rng.integers(1, T))  # a KV cache: the last Tq positions query all T keys
        out2, _ = hw.causal_attention_forward(q[..., -Tq:, :].copy(), k.copy(), v.copy())
        compare(f"out with {Tq} queries over {T} keys (mask offset by T_k - T_q)", out2,
                _attn(q[..., -Tq:, :], k, v)[0], FORWARD_TOL)
        return f"q, k, v {q.shape}: relative error {fmt(err)}"

    def backward():
        dout = rng.standard_normal((B, H, T, D))
        _, cache = hw.causal_attention_forward(q.copy(), k.copy(), v.copy())
        grads = hw.causal_attention_backward(dout.copy(), cache)
        if not isinstance(grads, tuple) or len(grads) != 3:
            raise CheckFailed("causal_attention_backward must return the tuple (dq, dk, dv)")
        qs, ks, vs = q.copy(), k.copy(), v.copy()
        f = lambda: float(np.sum(_attn(qs, ks, vs)[0] * dout))  # noqa: E731
        nq, nk, nv = (numeric_grad(f, a) for a in (qs, ks, vs))
        _, p = _attn(q, k, v)
        sc = 1 / math.sqrt(D)
        dp = dout @ v.swapaxes(-1, -2)
        ds = p * (dp - (dp * p).sum(-1, keepdims=True))
        e_v = compare("dv vs centered differences", grads[2], nv, GRAD_TOL,
                      [("dv looks like P dout; it is P^T dout (P transposed)", p @ dout)])
        rowsum_hint = "the softmax backward's row-sum term looks missing: dS = P * (dP - sum_j dP * P)"
        e_q = compare("dq vs centered differences", grads[0], nq, GRAD_TOL,
                      [("the 1/sqrt(d_k) scale looks missing", ds @ k),
                       (rowsum_hint, (p * dp) @ k * sc),
                       ("dq looks like dS^T K; it is dS K (no transpose)", ds.swapaxes(-1, -2) @ k * sc)])
        e_k = compare("dk vs centered differences", grads[1], nk, GRAD_TOL,
                      [("dk looks like dS Q; it is dS^T Q (dS transposed)", ds @ q * sc),
                       ("the 1/sqrt(d_k) scale looks missing", ds.swapaxes(-1, -2) @ q),
                       (rowsum_hint, (p * dp).swapaxes(-1, -2) @ q * sc)])
        return f"relative errors dq {fmt(e_q)}, dk {fmt(e_k)}, dv {fmt(e_v)}"

    yield "forward", forward
    yield "backward", backward


CHECKS = {"layernorm": check_layernorm, "gelu": check_gelu, "cross_entropy": check_cross_entropy,
          "attention": check_attention}
