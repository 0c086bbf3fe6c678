"""Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for
Large Language Models"): prune by weight times input size, no retraining.

For a linear layer y = x W (W stored (in, out)) and calibration inputs
X (N tokens, in), the score of weight W_ij is

    S_ij = |W_ij| . ||X_j||_2,     ||X_j||_2 = sqrt(sum over tokens of X_tj^2)

and each output column j keeps its highest-scoring inputs: the weights
are compared within each output (scope="output"), not across the layer.
A small weight on an input that is always large can matter more than a
large weight on an input that is nearly always 0, which |W| alone misses.
When every input has the same norm, S is |W| times a constant and Wanda is
magnitude pruning per output.

The inputs come from the model's documented accessor, model.activations(idx):
the input of "h.{i}.mlp.c_fc" is acts["h.{i}.mlp.c_fc"] (B, T, C). As in the
paper, the blocks are pruned in order and block i's inputs are taken from
the model with blocks 0..i-1 already pruned (sequential=True); wanda_masks
reads the same inputs block by block (minigpt.blockwise) rather than
through a whole forward a block.
"""
from __future__ import annotations

import numpy as np

from .magnitude import prune_by_scores, resolve_names
from .masks import PruneError, apply


def input_norms(model, idx) -> dict[str, np.ndarray]:
    """{weight name: ||X_j||_2 (in,)} for every float linear weight of the
    model, from one inference forward on the calibration tokens idx (B, T)."""
    acts = model.activations(idx)
    out = {}
    for key, x in acts.items():
        name = key + ".weight"
        if name in model.params:
            x = x.reshape(-1, x.shape[-1]).astype(np.float64)  # (B T, in)
            out[name] = np.sqrt(np.einsum("ti,ti->i", x, x))  # (in,)
    return out


def wanda_scores(params: dict, norms: dict, names) -> dict:
    """S = |W| ||X_j|| for each named weight (row j of W (in, out) is input j)."""
    missing = [n for n in names if n not in norms]
    if missing:
        raise PruneError(f"Wanda needs the inputs of each pruned layer; {missing[0]} has none "
                         f"(embeddings are not linear layers)")
    return {n: np.abs(params[n]) * norms[n][:, None] for n in names}


def wanda_masks(model, idx, fraction, masks=None, names=None, scope="output", sequential=True, of="alive",
                progress=False) -> dict:
    """Wanda masks for model's named weights (default: the blocks' linear
    matrices) from calibration tokens idx (B, T). The model is not changed.
    sequential: each block's inputs come from the model with the blocks
    before it pruned (the paper's order); False: all from the dense model.
    of="all": fraction is a target sparsity of each group (see prune_by_scores).
    progress: a bar over the blocks, shown once the run has taken 2 s.

    The calibration sequences' hidden states are carried block to block
    (minigpt.blockwise, the inputs activations() would give), CHUNK_TOKENS
    tokens at a time, so neither logits nor every block's caches are kept."""
    from ..blockwise import BlockInputs
    from ..progress import tqdm

    names = resolve_names(model.params, names, False)
    wanda_scores(model.params, {}, [n for n in names if not n.startswith("h.")])  # embeddings: refused
    idx = np.asarray(idx)
    rows = max(1, CHUNK_TOKENS // idx.shape[1])
    work = apply(model.params, masks or {})
    runner = BlockInputs(model, [idx[r:r + rows] for r in range(0, len(idx), rows)], work)
    out = dict(masks or {})
    L = model.config.n_layer
    for i in tqdm(range(L), desc="Wanda", unit="block", delay=2.0, disable=not progress):
        block = [n for n in names if n.startswith(f"h.{i}.")]
        if block:
            out = prune_by_scores(wanda_scores(model.params, _block_norms(runner, i, work), block), fraction, out,
                                  scope, of)
            if sequential:  # block i pruned before its output feeds block i + 1
                work = apply(model.params, out)
        if i + 1 < L:
            runner.advance(i, work)
    return out


CHUNK_TOKENS = 8192  # calibration tokens through a block at once (GPT-2 small's MLP: 100 MB an array)


def _block_norms(runner, i, params) -> dict:
    """{weight name: ||X_j||_2 (in,)} for block i's linear layers, summed over the chunks."""
    sq = {}
    for acts in runner.inputs(i, params):
        for key, x in acts.items():
            x = x.reshape(-1, x.shape[-1]).astype(np.float64)  # (B T, in)
            name = f"h.{i}.{key}.weight"
            sq[name] = sq.get(name, 0.0) + np.einsum("ti,ti->i", x, x)
    return {name: np.sqrt(s) for name, s in sq.items()}
