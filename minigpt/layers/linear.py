"""Affine layer in GPT-2's layout: weights stored (in, out).

Forward:  out = x @ W + b
Shapes:   x (..., n_in), W (n_in, n_out), b (n_out,) -> out (..., n_out)
"""


def linear_forward(x, w, b):
    """out = x @ w + b."""
    out = x @ w + b  # (..., n_out)
    return out, (x, w)


def linear_backward(dout, cache):
    """Returns (dx, dw, db).

    out[n, j] = sum_i x[n, i] w[i, j] + b[j], so
    dx[n, i] = sum_j dout[n, j] w[i, j]   ->  dx = dout @ w.T
    dw[i, j] = sum_n x[n, i] dout[n, j]   ->  dw = x.T @ dout (over all leading axes)
    db[j]    = sum_n dout[n, j]
    """
    x, w = cache
    n_in, n_out = w.shape
    dx = dout @ w.T  # (..., n_in)
    N = x.size // n_in if n_in else dout.size // n_out  # rows; either width may be 0 (a layer pruned empty)
    x2 = x.reshape(N, n_in)  # (N, n_in)
    d2 = dout.reshape(N, n_out)  # (N, n_out)
    dw = x2.T @ d2  # (n_in, n_out)
    db = d2.sum(axis=0)  # (n_out,)
    return dx, dw, db
