"""Which function computes each op that has a compiled kernel, per backend.

The NumPy functions in minigpt.layers are the definition ("numpy" backend);
minigpt.kernels registers faster versions under its backend name in
OP_OVERRIDES. An op a backend does not override falls back to NumPy, so a
kernel is added only where a profile shows time goes. Attention has its own
registry (minigpt.layers.attention.ATTENTION_BACKENDS), which also decides
which backend names exist.
"""
from .attention import get_attention_backend
from .gelu import gelu_backward, gelu_forward
from .layernorm import layernorm_backward, layernorm_forward

REFERENCE_OPS = {"gelu": (gelu_forward, gelu_backward), "layernorm": (layernorm_forward, layernorm_backward)}

OP_OVERRIDES: dict[str, dict] = {}  # backend -> {op name: (forward, backward)}


def get_ops(backend):
    """{op name: (forward, backward)} for backend; unknown names raise ConfigError."""
    get_attention_backend(backend)  # validates the name (and imports the kernels)
    return {**REFERENCE_OPS, **OP_OVERRIDES.get(backend, {})}
