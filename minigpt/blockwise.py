"""Calibration inputs carried through the model one block at a time.

GPTQ and Wanda change the blocks in order, and block i's statistics come
from its linear layers' inputs in the model whose blocks 0..i-1 are
already changed. Reading them with GPT.activations runs the whole model
(every block's caches kept, and logits over the whole vocabulary) once per
block: n_layer full forwards, and at GPT-2 small's scale (vocabulary 50257,
128 sequences of 256 tokens) 6.6 GB of logits alone. Here the calibration
sequences' hidden states after block i-1 are kept instead, (B, T, C) a
batch; block i runs once to hand out its linear layers' inputs and once
more, with its new weights, to move the hidden states on: two block
forwards a block, no logits, and one block's caches for one batch alive at
a time.

The inputs are those GPT.activations gives on the model with blocks
0..i-1 changed: the same layers run in the same order on the same batches.
"""
from __future__ import annotations

import numpy as np

from .ops import op_table
from .layers.block import LINEARS, block_forward
from .layers.embedding import embedding_forward


def _block(params: dict, i: int) -> dict:
    h = f"h.{i}."
    return {k[len(h):]: v for k, v in params.items() if k.startswith(h)}


class BlockInputs:
    """Hidden states of calibration batches, moved on one block at a time.

    runner = BlockInputs(model, batches)        # batches: token ids, each (B, T)
    for i in range(n_layer):
        for acts in runner.inputs(i, params):   # one dict a batch
            acts["attn.c_attn"]                 # (B, T, K) input of h.{i}.attn.c_attn
        ...change block i in params...
        runner.advance(i, params)               # through block i as it is now
    """

    def __init__(self, model, batches, params=None):
        """params: the embeddings to start from (default: model.params')."""
        self.config = model.config
        self.ops = op_table(model.backend)
        P = model.params if params is None else params
        self.hidden = [embedding_forward(np.asarray(b), P["wte.weight"], P["wpe.weight"])[0]
                       for b in batches]  # each (B, T, C)

    def _run(self, i, params, x):
        return block_forward(x, _block(params, i), self.config.head_size, self.ops)

    def inputs(self, i, params):
        """Yield, batch by batch, {linear name in the block: its input (B, T, K)} for block i."""
        for x in self.hidden:
            _, cache = self._run(i, params, x)
            yield {name: cache[name][0] for name in LINEARS}  # a linear cache starts with its input

    def advance(self, i, params):
        """Replace the hidden states by block i's outputs, block i taken from params."""
        self.hidden = [self._run(i, params, x)[0] for x in self.hidden]
