"""Checks of the training assignment: AdamW, the schedule and clipping against
their formulas, with hyper-parameters and tensors drawn from the part's seed."""
from __future__ import annotations

import inspect
import math

import numpy as np

from .common import FORWARD_TOL, CheckFailed, compare, fmt


def _params(rng):
    a, b = (int(x) for x in rng.integers(2, 6, 2))
    return {"w": rng.standard_normal((a, b)), "b": rng.standard_normal(b), "e": rng.standard_normal((b, a))}


def _adamw_reference(params, grads_seq, lrs, lr0, b1, b2, eps, wd, variant=""):
    """Parameters (and m, v) after the steps, by the formula; variant plants a known mistake."""
    p = {k: a.copy() for k, a in params.items()}
    m = {k: np.zeros_like(a) for k, a in p.items()}
    v = {k: np.zeros_like(a) for k, a in p.items()}
    for t, (grads, lr) in enumerate(zip(grads_seq, lrs), start=1):
        lr = lr0 if lr is None else lr
        for k in p:
            g = grads[k] + (wd * p[k] if variant == "l2" and p[k].ndim >= 2 else 0)
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            bc1, bc2 = (1.0, 1.0) if variant == "no_bias_correction" else (1 - b1**t, 1 - b2**t)
            upd = (m[k] / bc1) / (np.sqrt(v[k] / bc2) + eps)
            if (p[k].ndim >= 2 or variant == "decay_all") and variant != "l2":
                upd = upd + wd * p[k]
            p[k] = p[k] - lr * upd
    return p, m, v


_ADAMW_HINTS = (("no_bias_correction", "the bias corrections 1 - beta^t look missing"),
                ("decay_all", "weight decay looks applied to the biases too; it is for matrices (ndim >= 2) only"),
                ("l2", "the decay looks added to the gradient (L2, Adam); AdamW decouples it: lr * wd * p"))


def check_adamw(hw, rng):
    params = _params(rng)
    lr0 = float(10 ** rng.uniform(-3, -1.5))
    b1, b2 = float(rng.uniform(0.8, 0.95)), float(rng.uniform(0.95, 0.999))
    eps, wd = float(10 ** rng.uniform(-9, -7)), float(rng.uniform(0.05, 0.3))
    steps = int(rng.integers(3, 6))
    grads_seq = [{k: rng.standard_normal(a.shape) for k, a in params.items()} for _ in range(steps)]
    lrs = [None] + [None if rng.random() < 0.5 else float(10 ** rng.uniform(-3, -2)) for _ in range(steps - 1)]

    # the NumPy path is the student's: a fused (numba) option, where the class has one, stays off
    fused = {"fused": False} if "fused" in inspect.signature(hw.AdamW).parameters else {}

    def run(n):
        p = {k: a.copy() for k, a in params.items()}
        opt = hw.AdamW(p, lr=lr0, betas=(b1, b2), eps=eps, weight_decay=wd, **fused)
        for grads, lr in zip(grads_seq[:n], lrs[:n]):
            opt.step({k: g.copy() for k, g in grads.items()}, lr=lr) if lr is not None else \
                opt.step({k: g.copy() for k, g in grads.items()})
        return p, opt

    def compare_params(what, got, n):
        want, _, _ = _adamw_reference(params, grads_seq[:n], lrs[:n], lr0, b1, b2, eps, wd)
        errs = []
        for k in params:
            hints = [(text, _adamw_reference(params, grads_seq[:n], lrs[:n], lr0, b1, b2, eps, wd, var)[0][k])
                     for var, text in _ADAMW_HINTS]
            errs.append(compare(f"{what}: parameter {k!r} {params[k].shape}", got[k], want[k], FORWARD_TOL, hints))
        return max(errs)

    def one_tensor():
        shape = tuple(int(d) for d in rng.integers(1, 5, rng.integers(1, 3)))
        p, g = rng.standard_normal(shape), rng.standard_normal(shape)
        m, v = 0.1 * rng.standard_normal(shape), rng.random(shape)
        t = int(rng.integers(1, 20))
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        got = [a.copy() for a in (p, g, m, v)]
        ret = hw.adamw_update_reference(*got, b1, b2, bc1, bc2, eps, wd, lr0)
        if ret is not None:
            raise CheckFailed(f"adamw_update_reference returned {type(ret).__name__}; it updates p, m, v in place "
                              f"and returns None")
        m2 = b1 * m + (1 - b1) * g
        v2 = b2 * v + (1 - b2) * g * g
        upd = (m2 / bc1) / (np.sqrt(v2 / bc2) + eps)
        setting = f"tensor {shape}, step {t}, weight decay {wd:.2f}"
        compare(f"m after the update ({setting})", got[2], m2, FORWARD_TOL)
        compare(f"v after the update ({setting})", got[3], v2, FORWARD_TOL,
                [("v looks like it averages g, not g^2", b2 * v + (1 - b2) * g)])
        err = compare(f"p after the update ({setting})", got[0], p - lr0 * (upd + wd * p), FORWARD_TOL,
                      [("the bias corrections look missing: m_hat = m / bc1, v_hat = v / bc2",
                        p - lr0 * (m2 / (np.sqrt(v2) + eps) + wd * p)),
                       ("the decay looks missing: p -= lr (update + wd p)", p - lr0 * upd),
                       ("eps looks inside the square root: sqrt(v_hat) + eps",
                        p - lr0 * ((m2 / bc1) / np.sqrt(v2 / bc2 + eps) + wd * p))])
        return f"relative error {fmt(err)}"

    def first():
        p, _ = run(1)
        err = compare_params(f"after 1 step (lr {lr0:.2g}, betas ({b1:.3f}, {b2:.3f}), weight decay {wd:.2f})", p, 1)
        return f"relative error {fmt(err)}"

    def later():
        p, _ = run(steps)
        err = compare_params(f"after {steps} steps, some with step(grads, lr=...)", p, steps)
        return f"relative error {fmt(err)}"

    def state():
        _, opt = run(steps)
        _, m, v = _adamw_reference(params, grads_seq, lrs, lr0, b1, b2, eps, wd)
        if opt.t != steps:
            raise CheckFailed(f"opt.t is {opt.t} after {steps} steps; it counts the steps (bias correction, "
                              f"checkpoints)")
        for k in params:
            compare(f"opt.m[{k!r}] (first moment) after {steps} steps", opt.m[k], m[k], FORWARD_TOL)
            compare(f"opt.v[{k!r}] (second moment) after {steps} steps", opt.v[k], v[k], FORWARD_TOL)
        return "m, v and t as the formula"

    yield "one tensor's update", one_tensor
    yield "first step", first
    yield "later steps and lr override", later
    yield "state m, v, t", state


def _schedule(step, lr, min_lr, warmup, total):
    if step < warmup:
        return lr * (step + 1) / warmup
    r = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * r))


def check_schedule(hw, rng):
    lr = float(10 ** rng.uniform(-4, -2))
    min_lr = lr * float(rng.uniform(0.01, 0.3))
    warmup = int(rng.integers(2, 20))
    total = warmup + int(rng.integers(5, 60))
    setting = f"lr {lr:.3g}, min_lr {min_lr:.3g}, warmup {warmup}, total {total}"

    def curve(steps, f):
        return np.array([f(s, lr, min_lr, warmup, total) for s in steps], dtype=np.float64)

    def warm():
        steps = np.arange(warmup)
        got = curve(steps, hw.lr_schedule)
        hints = [("off by one: step is 0-based, the first warm-up step has lr * 1 / warmup_steps",
                  lr * steps / warmup)]
        compare(f"warm-up steps 0..{warmup - 1} ({setting})", got, lr * (steps + 1) / warmup, FORWARD_TOL, hints)
        return f"{warmup} steps as lr * (step + 1) / warmup_steps"

    def cosine():
        steps = np.arange(warmup, total + 5)  # beyond the end it stays at min_lr
        got = curve(steps, hw.lr_schedule)
        want = curve(steps, _schedule)
        hints = [("r looks measured from step 0; it is (step - warmup_steps) / (total_steps - warmup_steps)",
                  [min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))) for s in steps]),
                 ("the decay looks like it goes to 0; it ends at min_lr",
                  [lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / (total - warmup)))) for s in steps])]
        compare(f"cosine steps {warmup}..{total + 4} ({setting})", got, want, FORWARD_TOL, hints)
        return f"{len(steps)} steps, ending at min_lr"

    yield "warm-up", warm
    yield "cosine decay", cosine


def check_clipping(hw, rng):
    grads = {f"g{i}": rng.standard_normal(tuple(int(d) for d in rng.integers(1, 6, rng.integers(1, 3))))
             for i in range(int(rng.integers(2, 5)))}
    norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))

    def norm_check():
        g = {k: a.copy() for k, a in grads.items()}
        got = hw.clip_grad_norm(g, 10 * norm)  # nothing clipped
        compare(f"returned norm of {len(g)} gradients (max_norm above it)", got, norm, FORWARD_TOL,
                [("that looks like the largest per-tensor norm; the norm is global: sqrt of the sum over all "
                  "tensors of sum g^2", max(float(np.linalg.norm(a)) for a in grads.values()))])
        for k in g:
            compare(f"gradient {k!r} when the norm is below max_norm (must be unchanged)", g[k], grads[k],
                    FORWARD_TOL)
        return f"norm {norm:.4f}"

    def clipping():
        max_norm = norm * float(rng.uniform(0.1, 0.9))
        g = {k: a.copy() for k, a in grads.items()}
        ret = hw.clip_grad_norm(g, max_norm)
        compare("returned norm (the norm before clipping)", ret, norm, FORWARD_TOL,
                [("that is the norm after clipping; return the one before", max_norm)])
        scale = max_norm / (norm + 1e-6)
        if all(np.array_equal(g[k], grads[k]) for k in g):
            raise CheckFailed(f"the gradients are unchanged with max_norm {max_norm:.3g} < norm {norm:.3g}: "
                              f"scale them in place (g *= max_norm / norm)")
        for k in g:
            per_tensor = grads[k] * min(1.0, max_norm / max(float(np.linalg.norm(grads[k])), 1e-300))
            # 1e-5: the 1e-6 guard in max_norm / (norm + 1e-6) is optional
            compare(f"gradient {k!r} after clipping to max_norm {max_norm:.3g} (norm {norm:.3g})", g[k],
                    grads[k] * scale, 1e-5,
                    [("each tensor looks clipped on its own; one scale max_norm / (global norm) for all", per_tensor)])
        return f"scaled by {scale:.3f} in place"

    yield "norm", norm_check
    yield "clipping", clipping


CHECKS = {"adamw": check_adamw, "schedule": check_schedule, "clipping": check_clipping}
