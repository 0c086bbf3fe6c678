"""AdamW, global-norm gradient clipping and the warm-up + cosine schedule.

AdamW (Loshchilov & Hutter), for each parameter p with gradient g at step t:
    m = b1 m + (1 - b1) g,      v = b2 v + (1 - b2) g^2
    m_hat = m / (1 - b1^t),     v_hat = v / (1 - b2^t)
    p = p - lr * (m_hat / (sqrt(v_hat) + eps) + wd * p)
The weight decay is decoupled (it does not pass through m and v) and applies
only to matrices and embeddings, never to biases or LayerNorm parameters.
This is the same update as torch.optim.AdamW (which computes p *= 1 - lr*wd
first; the two agree because that decay uses the old p as well).
"""
from __future__ import annotations

import math

import numpy as np


def decays(name: str, p: np.ndarray) -> bool:
    """Weight decay applies to 2-D tensors (weights, embeddings) only."""
    return p.ndim >= 2


def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """Scale all gradients in place so their global L2 norm is at most max_norm.

    norm = sqrt(sum over tensors of sum g^2); if norm > max_norm every g is
    multiplied by max_norm / norm. Returns the norm before clipping.
    """
    # BEGIN SOLUTION
    norm = math.sqrt(sum(_sum_squares(g) for g in grads.values()))
    if max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads.values():
            g *= scale
    return norm
    # END SOLUTION


def _sum_squares(g) -> float:
    """sum(g^2) in float64: the numba kernel (one pass, no float64 copy of g) for float arrays."""
    if g.dtype.kind != "f":
        return float(np.sum(np.square(g, dtype=np.float64)))
    from .kernels.adamw import sum_squares

    return sum_squares(g)


def adamw_update_reference(p, g, m, v, b1, b2, bc1, bc2, eps, wd, lr):
    """One AdamW update of p, m, v in place, in NumPy: the definition the
    fused kernel (minigpt.kernels.adamw.adamw_update) is tested against."""
    # BEGIN SOLUTION
    m *= b1
    m += (1.0 - b1) * g
    v *= b2
    v += (1.0 - b2) * (g * g)
    update = (m / bc1) / (np.sqrt(v / bc2) + eps)
    if wd:
        update = update + wd * p
    p -= lr * update
    # END SOLUTION


def lr_schedule(step: int, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for 0-based `step`.

    Linear warm-up:  lr * (step + 1) / warmup_steps         for step < warmup_steps
    Cosine decay:    min_lr + (lr - min_lr) * (1 + cos(pi * r)) / 2,
                     r = (step - warmup_steps) / (total_steps - warmup_steps) in [0, 1]
    """
    # BEGIN SOLUTION
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    r = min(1.0, (step - warmup_steps) / span)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * r))
    # END SOLUTION


def apply_masks(arrays: dict, masks: dict, optimizer=None) -> None:
    """Set to exactly 0, in place, each entry of arrays[k] where masks[k] == 0
    (masks: same keys and shapes as the parameters, 0/1 or bool; a key
    without a mask is left alone), and with an optimizer the same entries
    of its moments (AdamW's m and v), so nothing carries a pruned weight off 0.

    The two hooks of masked training (see minigpt.train):
        before_step=lambda grads: apply_masks(grads, masks)
        after_step=lambda params, opt: apply_masks(params, masks, opt)
    Once a masked entry has p = m = v = 0 and gradient 0, AdamW's update of it
    is lr * (0 / (sqrt(0) + eps) + wd * 0) = 0 exactly, so it stays 0; the
    after-step call also clears moments carried in from an unmasked run.
    """
    for name, mask in masks.items():
        mask = np.asarray(mask)
        if mask.shape != arrays[name].shape:
            raise ValueError(f"mask for {name} has shape {mask.shape}, the array {arrays[name].shape}")
        pruned = mask == 0
        targets = [arrays[name]]
        if optimizer is not None:
            targets += [optimizer.m[name], optimizer.v[name]]
        for a in targets:
            np.copyto(a, 0, where=pruned)  # assignment, not a product: inf * 0 would be nan


class AdamW:
    def __init__(self, params: dict, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, fused=True):
        """fused: update each tensor with the numba kernel (one pass over memory;
        minigpt.kernels.adamw), else with adamw_update_reference. Same numbers."""
        self.params = params
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.fused = fused
        self.m = {k: np.zeros_like(p) for k, p in params.items()}
        self.v = {k: np.zeros_like(p) for k, p in params.items()}
        self.t = 0

    def step(self, grads: dict, lr=None):
        """One update of every parameter, in place."""
        # BEGIN SOLUTION
        lr = self.lr if lr is None else lr
        b1, b2 = self.betas
        self.t += 1
        bc1 = 1.0 - b1**self.t
        bc2 = 1.0 - b2**self.t
        if self.fused:
            from .kernels.adamw import adamw_update
        for name, p in self.params.items():
            args = (p, grads[name], self.m[name], self.v[name], b1, b2, bc1, bc2, self.eps,
                    self.weight_decay if decays(name, p) else 0.0, lr)
            if not (self.fused and adamw_update(*args)):  # the kernel declines odd layouts or dtypes
                adamw_update_reference(*args)
        # END SOLUTION

    def state_arrays(self) -> dict[str, np.ndarray]:
        out = {f"optimizer.m.{k}": a for k, a in self.m.items()}
        out.update({f"optimizer.v.{k}": a for k, a in self.v.items()})
        return out

    def load_state(self, arrays: dict, t: int):
        for k in self.params:
            self.m[k][...] = arrays[f"optimizer.m.{k}"]
            self.v[k][...] = arrays[f"optimizer.v.{k}"]
        self.t = int(t)
