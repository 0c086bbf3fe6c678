"""Checks of the distillation assignment: the KD loss by its formula, its
gradient by centered differences, at a temperature, alpha and shapes drawn
from the part's seed."""
from __future__ import annotations

import numpy as np

from .common import FORWARD_TOL, GRAD_TOL, compare, fmt, numeric_grad, tensor_shape


def _lsm(z):
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _kd(s, t, y, T, alpha, reverse=False, t2=True, hard=True):
    V = s.shape[-1]
    s2, t2_ = s.reshape(-1, V), t.reshape(-1, V)
    logq, logp = _lsm(s2 / T), _lsm(t2_ / T)
    p, q = np.exp(logp), np.exp(logq)
    kl = (q * (logq - logp)).sum(-1) if reverse else (p * (logp - logq)).sum(-1)
    loss = alpha * (T * T if t2 else 1.0) * kl.mean()
    if hard and alpha < 1:
        loss += (1 - alpha) * -_lsm(s2)[np.arange(len(s2)), y.reshape(-1)].mean()
    return float(loss)


def check_kd(hw, rng):
    B, Tn = tensor_shape(rng, 2)
    V = int(rng.integers(3, 10))
    s, t = rng.standard_normal((B, Tn, V)), 2 * rng.standard_normal((B, Tn, V))
    y = rng.integers(0, V, (B, Tn))
    T, alpha = float(rng.uniform(1.5, 6)), float(rng.uniform(0.2, 0.8))
    setting = f"T = {T:.2f}, alpha = {alpha:.2f}, logits {s.shape}"

    def forward():
        loss, _ = hw.distill_forward(s.copy(), t.copy(), y.copy(), temperature=T, alpha=alpha)
        want = _kd(s, t, y, T, alpha)
        hints = [("the T^2 factor on the KL term looks missing", _kd(s, t, y, T, alpha, t2=False)),
                 ("the KL looks reversed: KL(p || q) = sum p (log p - log q), p the teacher's",
                  _kd(s, t, y, T, alpha, reverse=True)),
                 ("the (1 - alpha) cross-entropy term looks missing", _kd(s, t, y, T, alpha, hard=False))]
        err = compare(f"KD loss ({setting}) vs alpha T^2 KL(p || q) + (1 - alpha) CE", loss, want, FORWARD_TOL, hints)
        pure, _ = hw.distill_forward(s.copy(), t.copy(), None, temperature=T, alpha=1.0)
        compare("KD loss with alpha = 1 and targets None (soft targets only)", pure, _kd(s, t, y, T, 1.0), FORWARD_TOL)
        return f"relative error {fmt(err)}"

    def grad(reverse):
        dloss = 0.5 + rng.random()
        _, cache = hw.distill_forward(s.copy(), t.copy(), y.copy(), temperature=T, alpha=alpha, reverse=reverse)
        ds = hw.distill_backward(dloss, cache)
        ss = s.copy()
        num = numeric_grad(lambda: dloss * _kd(ss, t, y, T, alpha, reverse), ss)
        hints = [("the soft term's gradient looks missing its factor T: T^2 KL has gradient T (q - p)",
                  num - dloss * alpha * (T - 1) * _soft_grad(s, t, T, reverse)),
                 ("the soft term's gradient looks multiplied by T^2; T^2 KL has gradient T (q - p)",
                  num + dloss * alpha * (T - 1) * T * _soft_grad(s, t, T, reverse))]
        err = compare(f"dL/d(student logits) vs centered differences ({setting}, dloss {dloss:.3f}"
                      + (", reverse KL)" if reverse else ")"), ds, num, GRAD_TOL, hints)
        return err

    def backward():
        return f"relative error {fmt(grad(False))}"

    def reverse():
        loss, _ = hw.distill_forward(s.copy(), t.copy(), y.copy(), temperature=T, alpha=alpha, reverse=True)
        compare(f"reverse KD loss ({setting}) vs alpha T^2 KL(q || p) + (1 - alpha) CE", loss,
                _kd(s, t, y, T, alpha, reverse=True), FORWARD_TOL,
                [("that is the forward KL(p || q)", _kd(s, t, y, T, alpha)),
                 ("the T^2 factor on the KL term looks missing", _kd(s, t, y, T, alpha, reverse=True, t2=False))])
        return f"forward and gradient, relative error {fmt(grad(True))}"

    yield "forward", forward
    yield "backward", backward
    yield "reverse KL", reverse


def _soft_grad(s, t, T, reverse):
    """d KL / d(s/T) / N, shaped like s: the soft term's gradient before the T factor and alpha."""
    V = s.shape[-1]
    logq, logp = _lsm(s.reshape(-1, V) / T), _lsm(t.reshape(-1, V) / T)
    p, q = np.exp(logp), np.exp(logq)
    if reverse:
        kl = (q * (logq - logp)).sum(-1, keepdims=True)
        g = q * (logq - logp - kl)
    else:
        g = q - p
    return (g / len(g)).reshape(s.shape)


CHECKS = {"kd_loss": check_kd}
