"""Sensitivity scan: how much the loss minds each matrix being pruned, and
per-matrix sparsities chosen from it (as in Han et al. 2015 and MIT 6.5940's
pruning lab).

1. Scan: for each prunable matrix on its own (all others dense), prune it by
   magnitude to each sparsity s of a grid and measure the loss:
       rise_w(s) = L(params with only w pruned to s) - L(params).
2. Allocate: given a threshold t, each matrix gets the largest sparsity
   whose rise stays within t, reading rise_w between grid points by linear
   interpolation (made non-decreasing first: a dip in a noisy curve must
   not let a matrix through at a sparsity it failed below).
3. Budget: rises of different matrices roughly add up, so one matrix's t
   is not the model's rise. sensitivity_masks finds, by bisection, the
   largest t whose combined masks raise the loss by at most the budget
   D, measured on the whole model with every matrix pruned at once.

Sensitive matrices keep more weights and robust ones lose more, where
uniform pruning gives every matrix the same sparsity and global magnitude
pruning one threshold on |w|. Scan on data the final report does not use
(minigpt prune scans on training windows and reports validation loss).
"""
from __future__ import annotations

import numpy as np

from .magnitude import magnitude_masks, resolve_names
from .masks import PruneError, apply, count

SCAN_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def sensitivity_scan(params: dict, loss_fn, sparsities=SCAN_SPARSITIES, names=None) -> dict[str, np.ndarray]:
    """{name: losses (len(sparsities),)}: loss_fn(params) with only that
    matrix pruned by magnitude to each sparsity (names: default the
    blocks' linear matrices)."""
    names = resolve_names(params, names, False)
    out = {}
    for name in names:
        losses = []
        for s in sparsities:
            masks = magnitude_masks(params, s, [name])
            losses.append(loss_fn(apply(params, masks)))
        out[name] = np.array(losses)
    return out


def allocate(scan: dict, sparsities, dense_loss: float, threshold: float) -> dict[str, float]:
    """{name: the largest sparsity with rise <= threshold}, interpolating the
    non-decreasing envelope of each curve linearly; 0 if even the first grid
    point, read from rise(0) = 0, allows none."""
    xs = np.concatenate([[0.0], np.asarray(sparsities, dtype=np.float64)])
    out = {}
    for name, losses in scan.items():
        ys = np.maximum.accumulate(np.concatenate([[0.0], np.asarray(losses) - dense_loss]))  # (n + 1,)
        over = np.flatnonzero(ys > threshold)
        if over.size == 0:
            out[name] = float(xs[-1])
            continue
        j = over[0]  # ys[j - 1] <= threshold < ys[j]
        x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
        out[name] = float(x0 + (x1 - x0) * (threshold - y0) / (y1 - y0))
    return out


def masks_for(params: dict, per_tensor: dict[str, float]) -> dict:
    """Magnitude masks pruning each named matrix to its own sparsity."""
    masks = {}
    for name, s in per_tensor.items():
        masks.update(magnitude_masks(params, min(s, np.nextafter(1.0, 0)), [name]))
    return masks


def total_sparsity(params: dict, per_tensor: dict[str, float]) -> float:
    """The fraction of all the named matrices' weights these sparsities prune."""
    n = sum(params[k].size for k in per_tensor)
    return sum(count(s, params[k].size) for k, s in per_tensor.items()) / n if n else 0.0


def sensitivity_masks(params: dict, loss_fn, max_increase: float, scan: dict, sparsities=SCAN_SPARSITIES,
                      dense_loss=None, steps=10):
    """(masks, per-tensor sparsities, measured rise): the largest per-matrix
    threshold t whose combined masks raise loss_fn by at most max_increase
    over the dense params.

    Rises of n matrices roughly add up, so t = D / n is a natural first
    guess; it is halved until it fits, then t is bisected (geometrically,
    `steps` times) between the largest t that fit and the smallest that
    did not. Every candidate is measured, never assumed.
    """
    if not max_increase > 0:
        raise PruneError(f"the loss budget must be positive, got {max_increase}")
    dense = loss_fn(params) if dense_loss is None else dense_loss
    none = {name: 0.0 for name in scan}
    best = (masks_for(params, none), none, 0.0)  # dense: within any budget

    def attempt(t):
        per = allocate(scan, sparsities, dense, t)
        masks = masks_for(params, per)
        return masks, per, loss_fn(apply(params, masks)) - dense

    top = max(max(float(np.max(v)) - dense for v in scan.values()), max_increase)  # beyond it nothing changes
    lo, hi = None, 2 * top
    t = max_increase / (2 * len(scan))
    for _ in range(steps):  # find a threshold that fits
        result = attempt(t)
        if result[2] <= max_increase:
            lo, best = t, result
            break
        hi, t = t, t / 2
    if lo is None:
        return best
    for _ in range(steps):
        t = float(np.sqrt(lo * hi))
        result = attempt(t)
        if result[2] <= max_increase:
            lo, best = t, result
        else:
            hi = t
    return best
