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


def default_pairs(teacher_layers: int, student_layers: int) -> dict[int, int]:
    """{student block: teacher block} whose outputs are matched: student block
    i stands for teacher blocks floor(i L_t / L_s) .. floor((i+1) L_t / L_s) - 1
    (the blocks a teacher initialisation skips), so it matches the last of them."""
    return {i: (i + 1) * teacher_layers // student_layers - 1 for i in range(student_layers)}


def parse_pairs(spec: str, student_layers: int, teacher_layers: int) -> dict[int, int]:
    """"all" (default_pairs) or "S:T,S:T" -> {student block: teacher block}."""
    if spec == "all":
        return default_pairs(teacher_layers, student_layers)
    pairs = {}
    for item in spec.split(","):
        try:
            s, t = (int(v) for v in item.split(":"))
        except ValueError:
            raise DistillError(f"--hidden wants 'all' or student:teacher block pairs such as 0:1,1:3; "
                               f"got {spec!r}") from None
        if not (0 <= s < student_layers and 0 <= t < teacher_layers):
            raise DistillError(f"--hidden pair {item}: the student has blocks 0..{student_layers - 1}, "
                               f"the teacher 0..{teacher_layers - 1}")
        pairs[s] = t
    return pairs


class HiddenMatch:
    """The hidden-state term of a distillation loss and its projections.

    L_hidden = weight * sum over pairs (i, j) of the loss between student
    block i's output and teacher block j's: cosine when the widths are equal
    (kind "auto"), else MSE through a projection W_i (C_s, C_t). The
    projections are trained alongside the student: loss() stores their
    gradients, update(lr) takes an AdamW step on them (no weight decay);
    minigpt.distill.distill calls it after each of the loop's steps at the
    loop's learning rate. They belong to the loss, not to the student, so no
    checkpoint holds them (a resumed run starts them afresh).
    """

    def __init__(self, pairs: dict, c_student: int, c_teacher: int, weight=1.0, kind="auto", seed=0):
        from ..optim import AdamW

        if kind == "auto":
            kind = "cosine" if c_student == c_teacher else "mse"
        if kind not in ("cosine", "mse"):
            raise DistillError(f"unknown hidden-state loss {kind!r}; choose cosine or mse")
        if kind == "cosine" and c_student != c_teacher:
            raise DistillError(f"cosine matching needs equal widths, got {c_student} and {c_teacher} (use mse)")
        if not (weight >= 0 and np.isfinite(weight)):
            raise DistillError(f"the hidden-state weight must be >= 0, got {weight}")
        self.pairs, self.kind, self.weight = dict(pairs), kind, float(weight)
        self.W = ({f"proj.{i}": init_projection(c_student, c_teacher, seed + i) for i in self.pairs}
                  if kind == "mse" else {})
        self.grads = {}
        self._opt = AdamW(self.W, weight_decay=0.0) if self.W else None

    def loss(self, student_acts: dict, teacher_acts: dict):
        """(loss, {"h.{i}": dL/d(student block i's output)}); stores dL/dW."""
        total, dh = 0.0, {}
        for i, j in self.pairs.items():
            a, b = student_acts[f"h.{i}"], teacher_acts[f"h.{j}"]
            if self.kind == "cosine":
                value, cache = cosine_forward(a, b)
                da = cosine_backward(self.weight, cache)
            else:
                value, cache = projected_mse_forward(a, b, self.W[f"proj.{i}"])
                da, self.grads[f"proj.{i}"] = projected_mse_backward(self.weight, cache)
            total += self.weight * value
            dh[f"h.{i}"] = da.astype(a.dtype, copy=False)
        return total, dh

    def update(self, lr: float):
        """One AdamW step on the projections with the gradients of the last loss()."""
        if self._opt is not None and self.grads:
            self._opt.step(self.grads, lr)
