"""Residual connection.

Forward:  out = x + f(x)   (here just the sum of two arrays)
Both inputs receive the upstream gradient unchanged; this is why deep
residual networks train: the gradient reaches early layers through the
identity path no matter what the branches do.
"""


def residual_forward(x, branch):
    return x + branch, None


def residual_backward(dout, cache):
    """out = x + branch, so dx = dout and dbranch = dout."""
    return dout, dout
