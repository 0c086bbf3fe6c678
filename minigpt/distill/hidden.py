"""Hidden-state matching: a student block's output pulled toward a teacher
block's, as a forward/backward pair like every layer.

Cosine (same width C): per position n, a = student hidden (C,), b = teacher's,

    L = (1/N) sum_n (1 - cos_n),   cos_n = a.b / (|a| |b|),   |a| = sqrt(sum a^2 + eps)
    dL/da_n = -(1/N) (b / (|a| |b|) - cos_n a / |a|^2)

(eps = 1e-12 keeps an all-zero row finite; the gradient is exact for the
|a| so defined.) Cosine ignores the scale of a, which LayerNorm after it
ignores too.

MSE through a learned projection W (C_s, C_t), for a narrower student:

    L = (1 / (N C_t)) sum_n |a_n W - b_n|^2
    dL/da = (2 / (N C_t)) (a W - b) W^T,   dL/dW = (2 / (N C_t)) a^T (a W - b)

Shapes: student (..., C_s), teacher (..., C_t) -> scalar.
"""
from __future__ import annotations

import numpy as np

from .errors import DistillError

EPS = 1e-12


def _rows(a, b, same_width):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape[:-1] != b.shape[:-1] or (same_width and a.shape != b.shape):
        raise DistillError(f"student hidden states {a.shape} and teacher's {b.shape} do not match"
                           + (" (cosine needs equal widths; use a projection)" if same_width else ""))
    return a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])  # (N, C_s), (N, C_t)


def cosine_forward(student, teacher):
    """(loss, cache): mean over positions of 1 - cos(student, teacher)."""
    a, b = _rows(student, teacher, same_width=True)
    na = np.sqrt((a * a).sum(-1, keepdims=True) + EPS)  # (N, 1)
    nb = np.sqrt((b * b).sum(-1, keepdims=True) + EPS)  # (N, 1)
    cos = (a * b).sum(-1, keepdims=True) / (na * nb)  # (N, 1)
    return float((1.0 - cos).mean()), (a, b, na, nb, cos, np.shape(student))


def cosine_backward(dloss, cache):
    """dL/d(student hidden), shaped like it."""
    a, b, na, nb, cos, shape = cache
    da = -(b / (na * nb) - cos * a / (na * na)) * (dloss / a.shape[0])  # (N, C)
    return da.reshape(shape)


def projected_mse_forward(student, teacher, W):
    """(loss, cache): mean squared error of student @ W against teacher, per entry."""
    a, b = _rows(student, teacher, same_width=False)
    W = np.asarray(W, dtype=np.float64)
    if W.shape != (a.shape[1], b.shape[1]):
        raise DistillError(f"projection W has shape {W.shape}, want {(a.shape[1], b.shape[1])}")
    r = a @ W - b  # (N, C_t)
    return float((r * r).mean()), (a, W, r, np.shape(student))


def projected_mse_backward(dloss, cache):
    """(dL/d(student hidden), dL/dW)."""
    a, W, r, shape = cache
    dr = r * (2.0 * dloss / r.size)  # (N, C_t)
    return (dr @ W.T).reshape(shape), a.T @ dr


def init_projection(c_student, c_teacher, seed=0):
    """W (C_s, C_t): the identity on the first min(C_s, C_t) dimensions (what
    a width slice of the teacher starts from) plus a little noise."""
    rng = np.random.default_rng(seed)
    W = np.eye(c_student, c_teacher) + rng.normal(0.0, 0.02, (c_student, c_teacher))
    return W
