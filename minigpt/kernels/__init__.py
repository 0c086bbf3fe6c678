"""Compiled (numba) kernels. Each agrees with a NumPy reference in minigpt.layers.

Importing this package registers the "numba" attention backend in
minigpt.layers.attention.ATTENTION_BACKENDS. Every kernel is compiled with
cache=True: the first process on a machine pays the compilation (see the
README), later ones load machine code from numba's cache in __pycache__.
"""
import os

# numba's OpenMP workers otherwise spin for a while after every parallel
# loop, and on a 2-core machine that spinning takes the cores from the BLAS
# threads of the matmul that follows (measured on a base training step:
# 2.0 s per step spinning, 0.4 s passive). Set before numba's thread pool starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ..layers.attention import ATTENTION_BACKENDS  # noqa: E402
from .attention import attention_backward, attention_forward  # noqa: E402

ATTENTION_BACKENDS["numba"] = (attention_forward, attention_backward)

from ..layers.backends import OP_OVERRIDES  # noqa: E402
from .gelu import gelu_backward, gelu_forward  # noqa: E402
from .layernorm import layernorm_backward, layernorm_forward  # noqa: E402

OP_OVERRIDES["numba"] = {"gelu": (gelu_forward, gelu_backward), "layernorm": (layernorm_forward, layernorm_backward)}
from .warmup import warm_up  # noqa: E402,F401  (compile a dtype's kernels before a clock starts)
