"""The model's pieces, each a forward/backward pair of plain functions:
``out, cache = op_forward(...)`` and ``grads = op_backward(dout, cache)``.
"""
from .attention import (
    causal_attention_backward,
    causal_attention_forward,
    multihead_attention_backward,
    multihead_attention_forward,
)
from .cross_entropy import cross_entropy_backward, cross_entropy_forward, log_softmax, softmax
from .dropout import dropout_backward, dropout_forward
from .embedding import embedding_backward, embedding_forward
from .gelu import gelu_backward, gelu_forward
from .layernorm import layernorm_backward, layernorm_forward
from .linear import linear_backward, linear_forward
from .lm_head import lm_head_backward, lm_head_forward
from .residual import residual_backward, residual_forward
