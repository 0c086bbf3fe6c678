"""Token + learned position embedding.

Forward:  out[b, t] = wte[idx[b, t]] + wpe[t0 + t]
Shapes:   idx (B, T) int, wte (V, C), wpe (T_max, C) -> out (B, T, C)
"""
import numpy as np


def embedding_forward(idx, wte, wpe, pos_offset=0):
    """out = wte[idx] + wpe[pos_offset : pos_offset + T]."""
    B, T = idx.shape
    pos = np.arange(pos_offset, pos_offset + T)
    out = wte[idx] + wpe[pos][None, :, :]  # (B, T, C)
    cache = (idx, pos, wte.shape, wpe.shape)
    return out, cache


def embedding_backward(dout, cache):
    """Returns (dwte, dwpe).

    The forward gathered row idx[b, t] of wte, so that row receives
    dout[b, t]; rows picked several times add up (np.add.at does the
    scatter-add, unlike fancy-index assignment which would overwrite).
    wpe[t] was added to every batch row, so dwpe[t] sums over the batch.
    """
    idx, pos, wte_shape, wpe_shape = cache
    C = dout.shape[-1]
    dwte = np.zeros(wte_shape, dtype=dout.dtype)
    np.add.at(dwte, idx.reshape(-1), dout.reshape(-1, C))
    dwpe = np.zeros(wpe_shape, dtype=dout.dtype)
    dwpe[pos] = dout.sum(axis=0)  # (T, C)
    return dwte, dwpe
