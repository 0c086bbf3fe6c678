"""Centered finite differences, the yardstick for every hand-written backward.

For a scalar function f and an input entry x_i:
    df/dx_i ~ (f(x + h e_i) - f(x - h e_i)) / (2 h)      (error O(h^2))
Compared with the analytic gradient g by the relative error of the whole
checked tensor,
    ||g - n|| / (||g|| + ||n||)      (L2 norms over the checked entries)
A per-entry ratio would be meaningless where the true derivative is exactly
zero (e.g. the key bias of attention: adding b to every key shifts each
score row by a constant, which softmax ignores): there both g and n are
rounding noise and their ratio is anything. The norm form weighs entries by
their size and stays near machine precision times the conditioning. Use float64: in float32
the rounding error of f (about 1e-7 |f| / h) swamps the derivative.
"""
from __future__ import annotations

import numpy as np


def numerical_gradient(f, x, h=1e-5, indices=None):
    """Centered-difference gradient of scalar f() w.r.t. array x (perturbed in place).

    indices: iterable of flat indices to check (default: all of them).
    Returns an array like x holding the estimates (zeros where unchecked).
    """
    grad = np.zeros(x.shape, dtype=np.float64)
    gflat = grad.reshape(-1)  # grad is fresh and contiguous, so this is a view
    if indices is None:
        indices = range(x.size)
    for i in indices:
        # index x by position, not through x.reshape(-1): for a non-contiguous
        # x (e.g. w.T) reshape returns a copy and the perturbation would be lost
        pos = np.unravel_index(int(i), x.shape)
        old = x[pos]
        x[pos] = old + h
        fp = f()
        x[pos] = old - h
        fm = f()
        x[pos] = old
        gflat[i] = (fp - fm) / (2 * h)
    return grad


def relative_error(analytic, numeric, indices=None) -> float:
    """||a - n|| / (||a|| + ||n||) over the given flat indices (all by default); 0 if both vanish."""
    a = np.asarray(analytic, dtype=np.float64).reshape(-1)
    n = np.asarray(numeric, dtype=np.float64).reshape(-1)
    if indices is not None:
        idx = np.fromiter(indices, dtype=np.int64)
        a, n = a[idx], n[idx]
    denom = np.linalg.norm(a) + np.linalg.norm(n)
    return float(np.linalg.norm(a - n) / denom) if denom > 0 else 0.0


def check_op(forward, backward, inputs, seed=0, h=1e-5):
    """Gradient-check a forward/backward pair.

    forward(*inputs) -> (out, cache); backward(dout, cache) -> grad or tuple
    of grads, one per input (None for inputs that get no gradient, e.g.
    integer ids). The scalar checked is L = sum(out * w) for a fixed random
    w, so dL/dout = w. Returns the max relative error per input position.
    """
    rng = np.random.default_rng(seed)
    out, cache = forward(*inputs)
    w = rng.standard_normal(np.shape(out))
    grads = backward(w, cache)
    if not isinstance(grads, tuple):
        grads = (grads,)
    errors = []
    for x, g in zip(inputs, grads):
        if g is None or not (isinstance(x, np.ndarray) and x.dtype.kind == "f"):
            errors.append(None)
            continue
        num = numerical_gradient(lambda: float(np.sum(forward(*inputs)[0] * w)), x, h)
        errors.append(relative_error(g, num))
    return errors
