"""Quantization: models whose weights are stored as integers.

    qmodel = quantize_model(model, "int8")            # or "int4" (group-wise)
    qmodel.generate(...); qmodel.save("q.npz")        # plain arrays: no pickle
    weight_bytes(qmodel.params)                       # what the weights take

A quantized model is the same GPT with some linear weights replaced by
integer arrays and their scales in the parameter dict (the format is in
minigpt.layers.quantized_linear); its forward runs them through the integer
products of the op table. The quantizers and integer kernels themselves are
in minigpt.kernels.int_matmul_ref / int_matmul.
"""
from .weights import QUANTIZED_SUFFIXES, quantize_model, quantize_params, weight_bytes

__all__ = ["QUANTIZED_SUFFIXES", "quantize_model", "quantize_params", "weight_bytes"]
