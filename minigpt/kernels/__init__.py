"""Compiled (numba) kernels. Each agrees with a NumPy reference in minigpt.layers.

Importing this package registers the "numba" attention backend in
minigpt.layers.attention.ATTENTION_BACKENDS. Every kernel is compiled with
cache=True: the first process on a machine pays the compilation (see the
README), later ones load machine code from numba's cache in __pycache__.
"""
from ..layers.attention import ATTENTION_BACKENDS
from .attention import attention_backward, attention_forward

ATTENTION_BACKENDS["numba"] = (attention_forward, attention_backward)

from ..layers.backends import OP_OVERRIDES
from .gelu import gelu_backward, gelu_forward

OP_OVERRIDES["numba"] = {"gelu": (gelu_forward, gelu_backward)}
