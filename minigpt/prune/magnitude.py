"""Unstructured pruning by a score: magnitude (per tensor, per output,
global) and random, the baseline every method must beat.

Each function returns new masks (bool, True = alive; see minigpt.prune.masks)
and leaves the parameters alone; masks.apply(params, masks) zeroes them.
With masks given, the fraction applies to the weights still alive:
pruning 0.5 and then 0.5 again leaves 25% of the weights.

Magnitude pruning scores a weight by |w| and prunes the smallest:
    per tensor:  in each tensor, the round(a n_alive) smallest |w|
    per output:  in each output column j of W (in, out), the round(a n_alive_j)
                 smallest |W_ij| (the grouping Wanda compares in)
    global:      one threshold over all the named tensors together: the
                 round(a N_alive) smallest |w| of their union, so layers
                 with small weights lose more of them
Counting and ties: round half to even of a n; a stable sort breaks ties by
flat index, the lower pruned first.
"""
from __future__ import annotations

import numpy as np

from .masks import (
    PruneError,
    check_fraction,
    check_names,
    ones_like,
    prunable_names,
    prune_counts,
    prune_smallest,
)

SCOPES = ("tensor", "output", "global")


def prune_by_scores(scores: dict, fraction, masks: dict | None = None, scope="tensor", of="alive") -> dict:
    """Masks pruning the lowest-scored weights.

    scores: {name: array} (same shapes as the weights); masks: the current
    masks (None: all alive); scope: "tensor", "output" (each column of a
    2-D score separately) or "global" (all the named tensors together);
    of="alive": prune that fraction of each group's alive weights;
    of="all": prune until that fraction of each group is pruned (a target
    sparsity, as a schedule gives; nothing is ever revived).
    """
    # BEGIN SOLUTION
    a = check_fraction(fraction)
    if of not in ("alive", "all"):
        raise PruneError(f"of must be 'alive' or 'all', got {of!r}")
    if scope not in SCOPES:
        raise PruneError(f"scope must be one of {SCOPES}, got {scope!r}")
    names = list(scores)
    alive = {n: (masks[n].astype(bool) if masks is not None and n in masks
                 else np.ones(scores[n].shape, dtype=bool)) for n in names}
    for n in names:
        if alive[n].shape != scores[n].shape:
            raise PruneError(f"mask for {n} has shape {alive[n].shape}, the weight {scores[n].shape}")
    if scope == "global":
        flat_s = np.concatenate([scores[n].reshape(-1) for n in names])[:, None]  # (N, 1)
        flat_a = np.concatenate([alive[n].reshape(-1) for n in names])[:, None]
        kept = prune_smallest(flat_s, flat_a, prune_counts(flat_a, a, of))[:, 0]
        out, start = {}, 0
        for n in names:
            size = scores[n].size
            out[n] = kept[start:start + size].reshape(scores[n].shape)
            start += size
        return _merged(masks, out)
    out = {}
    for n in names:
        shape = scores[n].shape
        # (rows, groups): one group for "tensor", each output column of (in, out) for "output"
        groups = (-1, 1) if scope == "tensor" or len(shape) == 1 else (shape[0], -1)
        s, m = scores[n].reshape(groups), alive[n].reshape(groups)
        out[n] = prune_smallest(s, m, prune_counts(m, a, of)).reshape(shape)
    return _merged(masks, out)
    # END SOLUTION


def _merged(old: dict | None, new: dict) -> dict:
    """The old masks of the tensors not scored this time, then the new ones."""
    return {**{k: v.astype(bool) for k, v in (old or {}).items() if k not in new}, **new}


def resolve_names(params, names, embeddings) -> list[str]:
    """names checked as prunable weights of params; None: the default set
    (the blocks' linear matrices, plus wte and wpe if embeddings)."""
    return prunable_names(params, embeddings) if names is None else check_names(params, names)


def magnitude_masks(params: dict, fraction, names=None, masks=None, scope="tensor", embeddings=False,
                    of="alive") -> dict:
    """Prune the fraction of alive weights with the smallest |w| (see the
    module docstring for the scopes; of="all" makes fraction a target
    sparsity instead). names: which weights (default: the blocks' linear
    matrices, plus wte/wpe if embeddings)."""
    names = resolve_names(params, names, embeddings)
    return prune_by_scores({n: np.abs(params[n]) for n in names}, fraction, masks, scope, of)


def global_masks(params: dict, fraction, names=None, masks=None, embeddings=False) -> dict:
    """magnitude_masks with one threshold across all the named weights."""
    return magnitude_masks(params, fraction, names, masks, "global", embeddings)


def random_masks(params: dict, fraction, names=None, masks=None, seed=0, embeddings=False, of="alive") -> dict:
    """Prune exactly round(a n_alive) alive weights of each tensor (of="all":
    up to round(a n) pruned), chosen uniformly at random (scores drawn
    i.i.d. uniform, the smallest pruned)."""
    names = resolve_names(params, names, embeddings)
    rng = np.random.default_rng(seed)
    return prune_by_scores({n: rng.random(params[n].shape) for n in names}, fraction, masks, "tensor", of)


def full_masks(params: dict, names=None, embeddings=False) -> dict:
    """All-alive masks for the prunable weights (a starting point)."""
    return ones_like(params, resolve_names(params, names, embeddings))
