"""N:M semi-structured sparsity: in every group of M consecutive input
weights of an output, keep the N with the largest score (2:4 by default).

For a weight W (in, out), output j's inputs 0..K-1 are split into K/M groups
{gM, ..., gM + M - 1}; in each, the M - N lowest scores are pruned (ties:
the lower input index first, as everywhere in minigpt.prune). The sparsity
is exactly 1 - N/M, and the fixed pattern is what hardware can exploit:
NVIDIA's sparse tensor cores skip the zeros of 2:4 weights, storing 2
values and two 2-bit positions per group of 4.
"""
from __future__ import annotations

import numpy as np

from .magnitude import _merged, resolve_names
from .masks import PruneError, prune_smallest


def parse_nm(text: str) -> tuple[int, int]:
    """'2:4' -> (2, 4), with PruneError for anything that is not N:M, 1 <= N <= M."""
    try:
        n, m = (int(x) for x in str(text).split(":"))
    except ValueError:
        raise PruneError(f"an N:M pattern looks like 2:4, got {text!r}") from None
    check_nm(n, m)
    return n, m


def check_nm(n: int, m: int) -> None:
    if not 1 <= n <= m:
        raise PruneError(f"N:M sparsity needs 1 <= N <= M, got {n}:{m}")


def nm_group_mask(scores: np.ndarray, alive: np.ndarray, n: int, m: int) -> np.ndarray:
    """The N:M alive mask of one (K, out) score array (K divisible by m)."""
    # BEGIN SOLUTION
    K = scores.shape[0]
    rest = scores.shape[1:]

    def groups(a):  # (K, out) -> (m, K/m * out): one column per group of m inputs
        return np.moveaxis(a.reshape(K // m, m, *rest), 1, 0).reshape(m, -1)

    s, a = groups(scores), groups(alive)
    k = np.maximum(0, (m - n) - (m - a.sum(axis=0)))  # prune up to M - N per group, dead ones count
    kept = prune_smallest(s, a, k)  # (m, groups)
    return np.moveaxis(kept.reshape(m, K // m, *rest), 0, 1).reshape(scores.shape)
    # END SOLUTION


def nm_masks(params: dict, n=2, m=4, names=None, masks=None, scores=None) -> dict:
    """N:M masks for the named weights (default: the blocks' linear matrices).

    scores: {name: array} to rank by (default |w|; Wanda's |W| ||X|| gives
    Wanda's N:M variant). Raises PruneError if a weight's input count is not
    a multiple of m.
    """
    check_nm(n, m)
    names = resolve_names(params, names, False)
    out = {}
    for name in names:
        w = params[name]
        if w.shape[0] % m:
            raise PruneError(f"{n}:{m} sparsity groups {m} consecutive inputs, but {name} has "
                             f"{w.shape[0]} inputs, not a multiple of {m}")
        s = np.abs(w) if scores is None else scores[name]
        alive = np.ones(w.shape, bool) if masks is None or name not in masks else masks[name].astype(bool)
        out[name] = nm_group_mask(s, alive, n, m)
    return _merged(masks, out)


def is_nm(mask: np.ndarray, n: int, m: int) -> bool:
    """True if every group of m consecutive inputs of each output keeps at most n."""
    K = mask.shape[0]
    return K % m == 0 and bool((mask.reshape(K // m, m, -1).sum(axis=1) <= n).all())
