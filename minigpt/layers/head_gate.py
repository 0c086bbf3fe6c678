"""Head gates: one multiplier per attention head, on its output before c_proj.

Forward:  out[b, t, h*D + d] = g[h] * y[b, t, h*D + d]
Shapes:   y (B, T, H*D) (the heads' outputs, concatenated), g (H,) -> out (B, T, H*D)

g = 1 everywhere is the ungated model; g[h] = 0 switches head h off, which
gives the same output as deleting the head's columns from c_attn and its rows
from c_proj. The gradient dL/dg[h] says how much the loss leans on head h
(the head-importance score that structured pruning ranks heads by).
"""


def head_gate_forward(y, g):
    B, T, HD = y.shape
    H = g.shape[0]
    yh = y.reshape(B, T, H, HD // H)  # (B, T, H, D)
    out = yh * g[:, None]  # (B, T, H, D)
    return out.reshape(B, T, HD), (yh, g)


def head_gate_backward(dout, cache):
    """Returns (dy, dg).

    out[b, t, h, d] = g[h] * y[b, t, h, d], so
    dy[b, t, h, d] = g[h] * dout[b, t, h, d]
    dg[h] = sum over b, t, d of y[b, t, h, d] * dout[b, t, h, d]
    """
    yh, g = cache
    B, T, H, D = yh.shape
    douth = dout.reshape(B, T, H, D)  # (B, T, H, D)
    dy = (douth * g[:, None]).reshape(B, T, H * D)
    dg = (douth * yh).sum(axis=(0, 1, 3))  # (H,)
    return dy, dg
