"""Layer normalisation over the last axis.

Forward:  mu = mean(x), var = mean((x - mu)^2)        (biased, as in GPT-2)
          xhat = (x - mu) / sqrt(var + eps)
          out = gamma * xhat + beta
Shapes:   x (..., C), gamma (C,), beta (C,) -> out (..., C)
"""
import numpy as np

LN_EPS = 1e-5


def layernorm_forward(x, gamma, beta, eps=LN_EPS):
    # BEGIN SOLUTION
    mu = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = x - mu  # (..., C)
    var = (xc * xc).mean(axis=-1, keepdims=True)  # (..., 1)
    rstd = 1.0 / np.sqrt(var + eps)  # (..., 1)
    xhat = xc * rstd  # (..., C)
    out = xhat * gamma + beta
    return out, (xhat, rstd, gamma)
    # END SOLUTION


def layernorm_backward(dout, cache):
    """Returns (dx, dgamma, dbeta).

    out = gamma * xhat + beta gives dgamma = sum(dout * xhat), dbeta = sum(dout)
    over every axis but the last, and dxhat = dout * gamma.
    xhat = (x - mu) * rstd depends on x directly and through mu and var.
    With dmu/dx_i = 1/C, dvar/dx_i = 2 (x_i - mu) / C (the mu path of var
    contributes sum(x - mu) = 0) and drstd/dvar = -rstd^3 / 2:
    dx_i = rstd * dxhat_i - rstd * mean(dxhat) - rstd^3 (x_i - mu) mean(dxhat * (x - mu))
         = rstd * (dxhat_i - mean(dxhat) - xhat_i * mean(dxhat * xhat)),
    exact, with no use of sum(xhat^2) = C.
    """
    # BEGIN SOLUTION
    xhat, rstd, gamma = cache
    C = xhat.shape[-1]
    dgamma = (dout * xhat).reshape(-1, C).sum(axis=0)
    dbeta = dout.reshape(-1, C).sum(axis=0)
    dxhat = dout * gamma  # (..., C)
    dx = rstd * (
        dxhat
        - dxhat.mean(axis=-1, keepdims=True)
        - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True)
    )
    return dx, dgamma, dbeta
    # END SOLUTION
