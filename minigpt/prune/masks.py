"""Pruning masks: which weights a pruning method may touch, and what it kept.

A mask dict has the keys of the parameters it prunes and their shapes, and
holds **bool** arrays: True = the weight is alive, False = pruned (held at
exactly 0). minigpt.optim.apply_masks reads them as 0/1 (False == 0), so the
same dict drives masked training (see masked_training_hooks) and is what a
checkpoint stores (as "mask.<name>", bool).

Prunable by default: the four linear matrices of every block,
h.{i}.attn.c_attn.weight, h.{i}.attn.c_proj.weight, h.{i}.mlp.c_fc.weight
and h.{i}.mlp.c_proj.weight; the embeddings (wte, wpe) on request; never
a LayerNorm parameter, a bias or a head gate.

Counting rule shared by every method here: pruning a fraction a of n alive
weights prunes exactly round(a n) of them, with Python's round (the float
product a * n, half to even: 0.5 of 5 prunes 2, 0.5 of 7 prunes 4, as
torch.nn.utils.prune does). Ties in a score are broken by position: a
stable sort of the flattened scores, so of two equal scores the one with
the lower flat index (row-major; for a global ranking, the earlier tensor
in parameter order) is pruned first.
"""
from __future__ import annotations

import numpy as np

from ..errors import MinigptError

LINEAR_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
EMBEDDINGS = ("wte.weight", "wpe.weight")


class PruneError(MinigptError, ValueError):
    """A pruning request that cannot be met (a sparsity outside [0, 1),
    N:M on a width M does not divide, every head of a layer removed, ...)."""


def prunable_names(params: dict, embeddings=False) -> list[str]:
    """Names of the prunable float matrices in params, in parameter order:
    each block's four linear weights, plus wte and wpe if embeddings."""
    kinds = LINEAR_WEIGHTS + (EMBEDDINGS if embeddings else ())
    names = []
    for name, p in params.items():
        if not isinstance(p, np.ndarray) or p.ndim != 2 or p.dtype.kind != "f":
            continue  # quantized (integer) weights are not pruned here
        if name in EMBEDDINGS:
            if embeddings:
                names.append(name)
        elif name.startswith("h.") and name.split(".", 2)[2] in kinds:
            names.append(name)
    return names


def check_names(params: dict, names) -> list[str]:
    """names as a list, each a prunable parameter of params (else PruneError)."""
    names = list(names)
    allowed = set(prunable_names(params, embeddings=True))
    bad = [n for n in names if n not in allowed]
    if bad:
        raise PruneError(f"{bad[0]} is not a prunable weight (the linear matrices of each block "
                         f"and the embeddings are; LayerNorm parameters, biases and gates never are)")
    return names


def check_fraction(fraction, what="sparsity") -> float:
    """fraction as a float in [0, 1), else PruneError naming it."""
    try:
        f = float(fraction)
    except (TypeError, ValueError):
        raise PruneError(f"{what} must be a number in [0, 1), got {fraction!r}") from None
    if not 0.0 <= f < 1.0:
        raise PruneError(f"{what} must be in [0, 1) (a fraction of the weights), got {fraction}")
    return f


def count(fraction: float, n: int) -> int:
    """How many of n items a fraction prunes: round(fraction * n), half to even."""
    return int(round(fraction * n))


def ones_like(params: dict, names) -> dict[str, np.ndarray]:
    """All-alive masks (True) for the named parameters."""
    return {n: np.ones(params[n].shape, dtype=bool) for n in names}


def alive_masks(params: dict, names) -> dict[str, np.ndarray]:
    """Masks read off the weights themselves: alive where the weight is nonzero."""
    return {n: params[n] != 0 for n in names}


def apply(params: dict, masks: dict) -> dict:
    """A copy of params (every array copied, so training the copy leaves
    params alone) with every pruned entry set to exactly 0."""
    out = {name: p.copy() for name, p in params.items()}
    for name, m in masks.items():
        np.copyto(out[name], 0, where=~np.asarray(m, dtype=bool))
    return out


def sparsity(masks: dict) -> float:
    """Fraction of the masked weights that are pruned."""
    total = sum(m.size for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / total if total else 0.0


def kind(name: str) -> str:
    """The tensor kind of a parameter name: 'attn.c_attn.weight', ..., 'wte.weight'."""
    return name.split(".", 2)[2] if name.startswith("h.") else name


def alive_by_kind(params: dict, masks: dict | None = None, names=None) -> dict[str, tuple[int, int]]:
    """{tensor kind: (alive, total)} summed over the layers, for the named
    weights (default: every prunable one, embeddings included): alive from
    a weight's mask when masks has one, else its nonzero entries."""
    names = prunable_names(params, embeddings=True) if names is None else names
    masks = masks or {}
    out: dict[str, tuple[int, int]] = {}
    for name in names:
        alive = int(masks[name].sum()) if name in masks else int(np.count_nonzero(params[name]))
        a, t = out.get(kind(name), (0, 0))
        out[kind(name)] = (a + alive, t + params[name].size)
    return out


def masked_training_hooks(masks: dict) -> dict:
    """train(..., **masked_training_hooks(masks)): gradients of pruned weights
    are zeroed before clipping, and after each AdamW step the pruned weights
    and their moments m, v are set to exactly 0 (minigpt.optim.apply_masks)."""
    from ..optim import apply_masks

    return {"before_step": lambda grads: apply_masks(grads, masks),
            "after_step": lambda params, opt: apply_masks(params, masks, opt)}


def prune_counts(alive: np.ndarray, fraction: float, of="alive") -> np.ndarray:
    """How many more entries of each column of alive (n, k) to prune:
    of="alive": round(fraction x the column's alive count);
    of="all": enough that round(fraction x n) of the column are pruned in
    all (0 if that many already are)."""
    # BEGIN SOLUTION
    n_alive = alive.sum(axis=0)  # (k,)
    if of == "alive":
        return np.array([count(fraction, int(a)) for a in n_alive], dtype=np.int64)
    target = count(fraction, alive.shape[0])
    return np.maximum(0, target - (alive.shape[0] - n_alive)).astype(np.int64)
    # END SOLUTION


def prune_smallest(scores: np.ndarray, alive: np.ndarray, k: np.ndarray) -> np.ndarray:
    """New alive mask: in each column, the k[j] alive entries with the
    smallest scores are pruned (stable: of equal scores, the lower row
    first). scores, alive: (n, k) with independent columns; k: (k,) ints.

    Pruned entries sort first (score -inf), so "the next k" are the k
    smallest alive scores whatever the dead entries' scores were.
    """
    # BEGIN SOLUTION
    s = np.where(alive, scores.astype(np.float64), -np.inf)  # (n, k)
    n_dead = (~alive).sum(axis=0)  # (k,)
    order = np.argsort(s, axis=0, kind="stable")  # (n, k): row indices, smallest first
    pruned_sorted = np.arange(s.shape[0])[:, None] < (n_dead + np.asarray(k))[None, :]  # (n, k)
    pruned = np.empty_like(alive)
    np.put_along_axis(pruned, order, pruned_sorted, axis=0)
    return ~pruned
    # END SOLUTION
