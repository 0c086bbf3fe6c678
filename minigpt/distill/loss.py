"""The distillation loss: the teacher's soft targets plus the hard labels.

Forward, per position n (t = teacher logits, s = student logits, both (V,)):

    p = softmax(t / T),  q = softmax(s / T)                 (soft targets, student at T)
    L_n = alpha T^2 KL(p || q) + (1 - alpha) CE(s, y_n)
    KL(p || q) = sum_j p_j (log p_j - log q_j)
    L = (1/N) sum_n L_n                                     (mean over all N positions)

Backward w.r.t. s (per position, then divided by N):

    dL_n/ds = alpha T (q - p) + (1 - alpha) (softmax(s) - onehot(y_n))

The soft term's gradient: d KL / d(s/T) = q - p, and d(s/T)/ds = 1/T, so
T^2 KL has gradient T (q - p). For large T, q - p ~ (s - t - mean(s - t)) / (V T),
so T (q - p) ~ (s - t) / V (zero-mean logits): without the T^2 the soft
term's gradient would shrink as 1/T^2 and a temperature sweep would
silently be a learning-rate sweep.

Reverse KL (reverse=True) swaps the roles: KL(q || p) = sum_j q_j (log q_j - log p_j),
with d KL(q || p) / d(s/T)_j = q_j (log q_j - log p_j - KL(q || p)), so

    dL_n/ds = alpha T q * (log q - log p - KL(q || p)) + (1 - alpha) (softmax(s) - onehot(y_n))

Stability: every log-probability comes from log_softmax (the row max
subtracted first), so logits in the hundreds and T from 0.5 to 20 give no
overflow; p_j log p_j is computed as p_j times a finite log p_j, so an
underflowed p_j = 0 contributes 0, never 0 * inf. Computed in float64
whatever the logits' dtype (the arrays are (N, V), cheap next to a forward).

Shapes: student_logits, teacher_logits (..., V), targets (...) ints -> scalar loss.
"""
from __future__ import annotations

import math

import numpy as np

from ..layers.cross_entropy import log_softmax
from .errors import DistillError


def check_distill_args(temperature, alpha):
    """Raise DistillError unless temperature > 0 and alpha in [0, 1] (both finite)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.number)) \
            or not (math.isfinite(temperature) and temperature > 0):
        raise DistillError(f"temperature must be a positive number, got {temperature!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) \
            or not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise DistillError(f"alpha must be in [0, 1], got {alpha!r}")


def distill_forward(student_logits, teacher_logits, targets, temperature=2.0, alpha=0.5, reverse=False):
    """(loss, cache): the formula in the module docstring.

    alpha = 1 needs no targets (pure soft targets); targets may then be None.
    """
    # BEGIN SOLUTION
    check_distill_args(temperature, alpha)
    s_shape = np.shape(student_logits)
    if np.shape(teacher_logits) != s_shape:
        raise DistillError(f"student logits {s_shape} and teacher logits {np.shape(teacher_logits)} differ "
                           f"in shape (a student must share the teacher's vocabulary)")
    V = s_shape[-1]
    s = np.asarray(student_logits, dtype=np.float64).reshape(-1, V)  # (N, V)
    t = np.asarray(teacher_logits, dtype=np.float64).reshape(-1, V)  # (N, V)
    N, T = s.shape[0], float(temperature)
    logq = log_softmax(s / T)  # (N, V) student at T
    logp = log_softmax(t / T)  # (N, V) teacher at T
    p, q = np.exp(logp), np.exp(logq)
    if reverse:
        kl = (q * (logq - logp)).sum(-1)  # (N,) KL(q || p)
    else:
        kl = (p * (logp - logq)).sum(-1)  # (N,) KL(p || q)
    soft = float(kl.mean())
    loss = alpha * T * T * soft
    y, logs = None, None
    if alpha < 1.0:
        if targets is None:
            raise DistillError("alpha < 1 mixes in cross-entropy, which needs the targets")
        y = np.asarray(targets).reshape(-1)  # (N,)
        logs = log_softmax(s)  # (N, V) student at temperature 1
        hard = float(-logs[np.arange(N), y].mean())
        loss += (1.0 - alpha) * hard
    cache = (p, q, logp, logq, kl, logs, y, T, float(alpha), bool(reverse), s_shape,
             np.asarray(student_logits).dtype)
    return float(loss), cache
    # END SOLUTION


def distill_backward(dloss, cache):
    """dL/d(student logits), shaped and typed like the student logits."""
    # BEGIN SOLUTION
    p, q, logp, logq, kl, logs, y, T, alpha, reverse, shape, dtype = cache
    N = p.shape[0]
    if reverse:
        ds = alpha * T * q * (logq - logp - kl[:, None])  # (N, V)
    else:
        ds = alpha * T * (q - p)  # (N, V)
    if alpha < 1.0:
        hard = np.exp(logs)  # softmax(s), (N, V)
        hard[np.arange(N), y] -= 1.0
        ds = ds + (1.0 - alpha) * hard
    ds *= dloss / N
    return ds.reshape(shape).astype(dtype, copy=False)
    # END SOLUTION


def soft_targets(teacher_logits, temperature):
    """softmax(t / T) over the last axis: the teacher's distribution at T."""
    return np.exp(log_softmax(np.asarray(teacher_logits, dtype=np.float64) / float(temperature)))
