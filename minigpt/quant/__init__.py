"""Quantization: models whose weights (and activations) are stored as integers.

    qmodel = quantize_model(model, "int4", group=32)  # "int8" | "int4" | "w8a8" | "q8_0" | "q4_0"
    qmodel.generate(...); qmodel.save("q.npz")        # plain arrays: no pickle
    weight_bytes(qmodel.params), bits_per_weight(qmodel.params)

A quantized model is the same GPT with some linear weights replaced by
integer arrays and their scales in the parameter dict (the format is in
minigpt.layers.quantized_linear); its forward runs them through the integer
products of the op table.

The pieces, each usable on its own:
    quantize_tensor, QTensor, scale_zero_point, fake_quantize   the one quantizer
                                  (minigpt.kernels.quantizer, re-exported here)
    quantize_blocks, dequantize_blocks, bits_per_block_weight   llama.cpp's Q8_0 / Q4_0
    observers: MinMaxObserver, MovingAverageMinMaxObserver, PercentileObserver,
               MSEObserver, calibrate(model, batches, make_observer)
    qat: fake_quant_forward / fake_quant_backward (the straight-through pair),
         qat_transform (a weight_transform for minigpt.train.train), qat_finetune
    calibrated methods (calibration_batches(dataset, n) gives the token batches):
        gptq_model(model, batches, "int4", bits, group)   GPTQ (minigpt.quant.gptq)
        awq_model(model, batches, "int4", bits, group)    AWQ (minigpt.quant.awq)
        smooth_model(model, batches, alpha)               SmoothQuant, then quantize_model(.., "w8a8")
        activation_maxima(model, batches)                 per-channel max |X| of every linear input
"""
from ..kernels.block_formats import bits_per_weight as bits_per_block_weight
from ..kernels.block_formats import dequantize_blocks, quantize_blocks
from ..kernels.quantizer import QTensor, fake_quantize, int_range, quantize_tensor, scale_zero_point
from .observers import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    calibrate,
)
from .awq import awq_model
from .gptq import gptq_model
from .qat import fake_quant_backward, fake_quant_forward, qat_finetune, qat_transform
from .rescale import activation_maxima, calibration_batches
from .kmeans import centroid_gradients, finetune_centroids, kmeans_dequantize, kmeans_model, kmeans_quantize  # noqa: F401
from .huffman import huffman_decode, huffman_encode, huffman_nbytes, sparse_gaps  # noqa: F401
from .deep_compression import deep_compression  # noqa: F401
from .smoothquant import smooth_model
from .weights import (
    KINDS,
    QUANTIZED_SUFFIXES,
    bits_per_weight,
    dequantize_params,
    is_quantized,
    kind_for_bits,
    quantize_model,
    quantize_params,
    quantized_layers,
    weight_bytes,
)

__all__ = [
    "MSEObserver", "MinMaxObserver", "MovingAverageMinMaxObserver", "PercentileObserver", "calibrate",
    "fake_quant_backward", "fake_quant_forward", "qat_finetune", "qat_transform",
    "KINDS", "QUANTIZED_SUFFIXES", "QTensor", "bits_per_block_weight", "bits_per_weight", "dequantize_blocks",
    "dequantize_params", "fake_quantize", "int_range", "is_quantized", "kind_for_bits", "quantize_blocks",
    "quantize_model", "quantize_params", "quantize_tensor", "quantized_layers", "scale_zero_point",
    "weight_bytes", "activation_maxima", "awq_model", "calibration_batches", "gptq_model", "smooth_model",
]
