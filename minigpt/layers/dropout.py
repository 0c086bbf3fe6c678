"""Inverted dropout.

Forward:  out = x * m / (1 - p),  m ~ Bernoulli(1 - p) elementwise
The mask (already divided by 1 - p) is kept in the cache, so the backward
uses exactly the units the forward kept. With p = 0 or outside training it
is the identity.
"""


def dropout_forward(x, p, rng, training=True):
    if not training or p == 0.0:
        return x, None
    keep = (rng.random(x.shape) >= p).astype(x.dtype) / (1.0 - p)
    return x * keep, keep


def dropout_backward(dout, cache):
    """out = x * keep, so dx = dout * keep (identity when there was no mask)."""
    keep = cache
    return dout if keep is None else dout * keep
