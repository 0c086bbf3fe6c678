"""GELU, in the tanh approximation GPT-2 uses.

Forward:  gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
"""
import math

import numpy as np

GELU_K = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715


def gelu_forward(x):
    # x * x * x, not x**3: numpy sends float32 powers to libm pow, ~100x slower
    # BEGIN SOLUTION
    u = GELU_K * (x + GELU_A * (x * x * x))
    t = np.tanh(u)
    out = 0.5 * x * (1.0 + t)
    return out, (x, t)
    # END SOLUTION


def gelu_backward(dout, cache):
    """Returns dx.

    out = 0.5 x (1 + t) with t = tanh(u):
    d out / dx = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx,
    du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2).
    """
    # BEGIN SOLUTION
    x, t = cache
    du = GELU_K * (1.0 + 3.0 * GELU_A * x * x)
    local = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
    return dout * local
    # END SOLUTION
