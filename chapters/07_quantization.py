# %% [markdown]
# # Chapter 7: Quantization
#
# A trained model's weights are float32: 4 bytes each. Quantization stores
# them, and sometimes the activations too, as small integers plus a few
# scales: 1 byte a weight for int8, half a byte for int4. People who use
# quantization tools ask two things above all, and this chapter answers both
# with numbers measured here:
#
# * **what do the formats mean?** The quantizer's formula, what per-tensor,
#   per-channel and group-wise scales change, what llama.cpp's Q8_0 and Q4_0
#   blocks hold byte by byte, and what each costs in validation loss on the
#   trained model;
# * **why isn't int8 faster?** The same matrix product timed side by side in
#   float32, int8 and int4, for a batch and for one decoding row, and what the
#   two cases move per multiply-add.
#
# In order:
#
# 1. the quantizer, affine and symmetric, on a vector you can check by hand;
# 2. the number line: the int8 and int4 grids over the trained model's weights,
#    per tensor and per channel;
# 3. error against bits (2 to 8) for each layout, with min-max and MSE clipping;
# 4. calibration observers for activations;
# 5. the block formats Q8_0 and Q4_0;
# 6. the whole model quantized: loss and bytes for each format, and the same
#    prompt sampled at each precision;
# 7. quantization-aware training with the straight-through estimator, against
#    round-to-nearest;
# 8. GPTQ: rounding that corrects the rounding errors of earlier weights;
# 9. activation outliers and SmoothQuant, for W8A8;
# 10. AWQ, and round-to-nearest, GPTQ and AWQ side by side at 4 and 3 bits;
# 11. speed, measured side by side;
# 12. an errata box on a quantization snippet that circulates in tutorials.
#
# *Numbers quoted in the text come from a full run (`minigpt tour`, which also
# made the book's figures). A fast run (`MINIGPT_FAST=1`, for tests and a
# quick look) uses a model trained for 30 steps, fewer batches and smaller
# matrices, so its numbers differ.*

# %%
import math
import os
import time

import matplotlib.pyplot as plt
import numba
import numpy as np

from minigpt.bench import cpu_model, time_call
from minigpt.kernels import int_matmul as K
from minigpt.kernels.int_matmul_ref import quantize_int4_groupwise, quantize_per_channel
from minigpt.model import GPT
from minigpt.pretrained import fast_mode, trained_model
from minigpt.quant import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    bits_per_block_weight,
    bits_per_weight,
    calibrate,
    dequantize_blocks,
    fake_quant_backward,
    fake_quant_forward,
    int_range,
    qat_finetune,
    quantize_blocks,
    quantize_model,
    quantize_tensor,
    weight_bytes,
)
from minigpt.quant.observers import mse_range
from minigpt.tour import save_figure
from minigpt.train import evaluate, train

FAST = fast_mode()
rng = np.random.default_rng(0)
model, dataset, ckpt = trained_model("tiny")
EVAL_BATCHES = 2 if FAST else 40  # validation windows of 64 characters, 32 a batch, the same for every row


def val_loss(m):
    return evaluate(m, dataset, "val", 32, EVAL_BATCHES)


float_loss = val_loss(model)
print(f"the trained tiny model: {model.num_params():,} parameters, validation loss {float_loss:.4f} "
      f"({float_loss / math.log(2):.3f} bits per character) on {EVAL_BATCHES} batches")

# %% [markdown]
# ## 1. The quantizer
#
# Uniform quantization to $b$ bits maps a real $x$ to an integer $q$ in
# $[q_{\min}, q_{\max}]$ with a **scale** $s$ (the step between neighbouring
# levels) and a **zero point** $z$ (the integer that stands for 0):
#
# $$q = \operatorname{clamp}\!\left(\operatorname{round}\!\left(\frac{x}{s}\right) + z,\ q_{\min},\ q_{\max}\right),
# \qquad \hat x = (q - z)\, s .$$
#
# The scale and zero point come from a range $[\alpha, \beta]$ of the values
# (their min and max, or a clipped range), first widened to include 0,
# $\alpha' = \min(\alpha, 0)$, $\beta' = \max(\beta, 0)$:
#
# * **affine** (asymmetric), $q \in [0, 2^b - 1]$:
#   $\;s = \dfrac{\beta' - \alpha'}{q_{\max} - q_{\min}},\quad z = q_{\min} - \operatorname{round}(\alpha'/s)$;
# * **symmetric**, $q \in [-(2^{b-1}-1),\ 2^{b-1}-1]$: $\;s = \dfrac{\max(|\alpha'|, |\beta'|)}{q_{\max}},\quad z = 0$.
#
# Widening to include 0 makes 0 exactly representable: $q = z$ gives
# $\hat x = 0$ exactly, so zero padding, ReLU zeros and pruned weights stay
# exact. Symmetric quantization leaves $-2^{b-1}$ unused (so the grid is
# symmetric about 0) and wastes half the grid on a one-sided tensor;
# affine spends every level where the values are. Inside the range the
# round trip errs by at most $s/2$; outside it, by exactly the clamp. An
# all-zero tensor would give $s = 0$; the quantizer gives it $s = 1$, any
# valid scale maps it to $q = z$.
#
# minigpt has one quantizer (`minigpt.quant.quantize_tensor`, defined in
# `minigpt/kernels/quantizer.py`); the integer-matmul kernels, the model's
# weights, the observers and fake quantization all call it. On five numbers:

# %%
x = np.array([-0.8, -0.1, 0.0, 0.25, 1.3])
for symmetric in (False, True):
    t = quantize_tensor(x, bits=4, symmetric=symmetric)
    q_min, q_max = t.int_range
    err = np.abs(t.dequantize() - x)
    kind = "symmetric" if symmetric else "affine"
    print(f"4-bit {kind:9}: q in [{q_min}, {q_max}], s = {float(t.scale):.4f}, z = {int(t.zero_point)}")
    print(f"   q = {t.q.astype(int)}, x_hat = {np.round(t.dequantize(), 4)}, "
          f"max error {err.max():.4f} <= s/2 = {float(t.scale) / 2:.4f}")
    assert np.all(err <= t.scale / 2 + 1e-12) and t.dequantize()[2] == 0.0  # zero is exact
affine = quantize_tensor(x, bits=4, symmetric=False)
assert np.isclose(affine.scale, (1.3 - -0.8) / 15) and affine.zero_point == -round(-0.8 / float(affine.scale))

# %% [markdown]
# Three layouts decide which values share one $(s, z)$. For a weight
# $W \in \mathbb{R}^{K \times N}$ stored (in, out) as GPT-2 stores it:
#
# * **per tensor**: one scale for all $K N$ weights;
# * **per channel**: one scale per output channel (column $j$), from $\max_k |W_{kj}|$;
# * **group-wise**: one scale per group of $g$ consecutive inputs of each output,
#   $K/g \times N$ scales.
#
# Finer layouts cost more scales (a float32 scale per group of 32 adds 1 bit
# per weight) and buy a step fitted to each group's own range.

# %% [markdown]
# ## 2. The number line
#
# The first MLP layer of the trained model, `h.0.mlp.c_fc.weight` (64 inputs
# by 256 outputs). Left: all its weights, with the 15 levels of int4
# per-tensor quantization over them (int8's 255 levels are the ticks along
# the bottom). Right: the output channel with the smallest range and the one
# with the largest, each on the per-tensor grid and on its own per-channel
# grid.

# %%
W = model.params["h.0.mlp.c_fc.weight"]  # (K, N) = (64, 256)
t4 = quantize_tensor(W, 4, symmetric=True)
t8 = quantize_tensor(W, 8, symmetric=True)
channel_max = np.abs(W).max(axis=0)  # (N,)
small, large = int(channel_max.argmin()), int(channel_max.argmax())
per_channel4 = quantize_tensor(W, 4, symmetric=True, axis=1)
levels_used = {}
for j in (small, large):
    levels_used[j] = (len(np.unique(t4.q[:, j])), len(np.unique(per_channel4.q[:, j])))
    print(f"channel {j:3d}: max |w| {channel_max[j]:.3f}; int4 levels used: per tensor {levels_used[j][0]:2d}, "
          f"per channel {levels_used[j][1]:2d} (of 15)")
print(f"int4 step: per tensor {float(t4.scale):.4f}; per channel {per_channel4.scale[small]:.4f} "
      f"(channel {small}) to {per_channel4.scale[large]:.4f} (channel {large})")
assert levels_used[small][1] >= levels_used[small][0]  # its own grid spreads the channel over more levels

# %%
fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1.1, 1]})
ax.hist(W.ravel(), bins=120, color="C0", alpha=0.75)
for level in np.arange(-7, 8) * float(t4.scale):
    ax.axvline(level, color="C3", lw=0.8, alpha=0.8)
ymax = ax.get_ylim()[1]
ax.plot(np.arange(-127, 128) * float(t8.scale), np.full(255, -0.03 * ymax), "|", color="k", ms=5, alpha=0.5)
ax.set_ylim(-0.06 * ymax, ymax)
ax.set_xlabel("weight value")
ax.set_ylabel("count")
ax.set_title(f"h.0.mlp.c_fc: {W.size:,} weights; int4 per-tensor levels (red),\nint8 levels (ticks below)",
             fontsize=10)
rows = [(small, "per tensor", float(t4.scale)), (small, "own grid", per_channel4.scale[small]),
        (large, "per tensor", float(t4.scale)), (large, "own grid", per_channel4.scale[large])]
for r, (j, label, s) in enumerate(rows):
    bx.plot(np.arange(-7, 8) * s, np.full(15, r), "|", color="C3", ms=14)
    jitter = rng.uniform(-0.15, 0.15, W.shape[0])
    bx.plot(W[:, j], r + jitter, ".", color="C0", ms=3)
bx.set_yticks(range(4), [f"channel {j}, {label}" for j, label, _ in rows], fontsize=8)
bx.set_xlabel("weight value")
bx.set_title("Smallest and largest output channel:\nthe shared grid wastes levels on the small one", fontsize=10)
bx.invert_yaxis()
fig.tight_layout()
save_figure(fig, "07_quantization_grid")

# %% [markdown]
# ## 3. Error against bits
#
# Each extra bit halves the step, and a uniform rounding error of step $s$
# has mean square $s^2/12$, so the error power drops by a factor of 4:
# about 6 dB per bit. Below, the signal-to-quantization-noise ratio
# $\text{SQNR} = 10 \log_{10} \frac{\sum W^2}{\sum (W - \hat W)^2}$ over all eight
# block matrices of the model, for 2 to 8 bits, per tensor, per channel and
# in groups of 32 inputs (symmetric), each with two ranges:
#
# * **min-max**: the slice's largest magnitude sets the scale, nothing is clipped;
# * **MSE clipping**: the range $a \cdot [\min, \max]$, $a \in (0, 1]$, with the
#   least mean squared error (`minigpt.quant.observers.mse_range`, searched on a
#   grid of $a$). Clipping a few large weights buys a finer step for all the others.

# %%
LINEARS = [k for k in model.params if k.startswith("h.") and k.endswith(".weight")
           and model.params[k].ndim == 2]
BITS = list(range(2, 9))
LAYOUTS = {"per tensor": {}, "per channel": {"axis": 1}, "groups of 32": {"group": 32}}
MSE_GRID = 20 if FAST else 60


def sqnr_db(bits, layout, clip):
    """SQNR over every block matrix, each quantized with its own scales."""
    signal = noise = 0.0
    for name in LINEARS:
        w = model.params[name].astype(np.float64)
        lo = hi = None
        if clip:
            lo, hi, _ = mse_range(w, bits, True, grid=MSE_GRID, **layout)
        t = quantize_tensor(w, bits, True, lo=lo, hi=hi, **layout)
        signal += float((w**2).sum())
        noise += float(((t.dequantize() - w) ** 2).sum())
    return 10 * math.log10(signal / noise)


sqnr = {(name, clip): [sqnr_db(b, layout, clip) for b in BITS]
        for name, layout in LAYOUTS.items() for clip in (False, True)}
print("SQNR (dB) over the 8 block matrices, symmetric; min-max / MSE clipping")
print("bits            " + "".join(f"{b:>14d}" for b in BITS))
for name in LAYOUTS:
    print(f"{name:<16}" + "".join(f"{a:7.1f}/{c:<6.1f}" for a, c in zip(sqnr[name, False], sqnr[name, True])))
slope = (sqnr["per channel", False][-1] - sqnr["per channel", False][-3]) / 2
print(f"per channel, min-max, 6 -> 8 bits: {slope:.2f} dB per bit (20 log10 2 = {20 * math.log10(2):.2f})")
for b in range(len(BITS)):
    for name in LAYOUTS:  # the MSE range includes min-max among its candidates: never worse
        assert sqnr[name, True][b] >= sqnr[name, False][b] - 1e-9
    assert sqnr["per channel", False][b] >= sqnr["per tensor", False][b]
    assert sqnr["groups of 32", False][b] >= sqnr["per channel", False][b]
assert abs(slope - 6.02) < 0.5
clip_gain = {b: sqnr["per tensor", True][i] - sqnr["per tensor", False][i] for i, b in enumerate(BITS)}
assert clip_gain[2] > clip_gain[8]  # clipping pays most where levels are fewest

# %%
fig, ax = plt.subplots(figsize=(6.4, 4.2))
for i, name in enumerate(LAYOUTS):
    ax.plot(BITS, sqnr[name, False], "o-", color=f"C{i}", label=f"{name}, min-max")
    ax.plot(BITS, sqnr[name, True], "s--", color=f"C{i}", alpha=0.7, label=f"{name}, MSE clipping")
ax.plot(BITS, [sqnr["per channel", False][-1] - 6.02 * (8 - b) for b in BITS], ":", color="gray",
        label="6.02 dB per bit")
ax.set_xlabel("bits per weight (codes only)")
ax.set_ylabel("SQNR (dB), higher is better")
ax.set_title("Quantization error of the model's 8 block matrices (symmetric)", fontsize=10)
ax.legend(fontsize=7, ncol=2)
ax.grid(alpha=0.3)
save_figure(fig, "07_quantization_error")

# %% [markdown]
# Per channel beats per tensor at every width here, and groups beat
# channels: each step fits a smaller set of weights. (That is true of the
# worst-case error, $s/2$, always; for the error itself it is only what
# usually happens: a tensor whose values sit exactly on the coarse grid loses
# nothing per tensor and something on a finer one. `tests/test_quant_quantizer.py`
# keeps such a counterexample.) MSE clipping matters most at 2 and 3 bits,
# where min-max spends most of its few levels on rare large weights.
#
# ## 4. Calibrating activations
#
# Weights are known before the model runs; activations are not. A static
# activation scale is fixed in advance from **calibration** batches, through
# an **observer** that watches the tensor and picks a range:
#
# * **min-max**: the extremes seen;
# * **moving average** of each batch's min and max,
#   $\alpha \leftarrow \alpha + c\,(\min x - \alpha)$, so one batch's extreme does not set the range alone;
# * **percentile** $p$: the $(100-p)$-th and $p$-th percentiles, ignoring the rarest values;
# * **MSE**: the clipped range with the least squared error on the calibration data.
#
# `minigpt.quant.calibrate(model, batches, make_observer)` feeds every
# linear layer's input, read through the model's activation accessor
# (`model.activations(idx)`, which gives each linear layer's input by name),
# to one observer per layer. Below, two inputs: the first attention
# projection's (a LayerNorm output) and the second MLP's (a GELU output:
# one-sided, with a long positive tail). Calibrated on training batches,
# tested on validation windows, 8-bit and 4-bit affine per tensor; "per token"
# is the dynamic alternative W8A8 uses below (a symmetric scale per row, from
# that row).

# %%
CAL_BATCHES = 1 if FAST else 8
cal = [dataset.get_batch("train", 16, np.random.default_rng(i))[0] for i in range(CAL_BATCHES)]
held_out = next(dataset.iter_eval_batches("val", 16))[0]
held_acts = model.activations(held_out)
LAYERS = ["h.0.attn.c_attn", "h.1.mlp.c_proj"]
minmax8 = calibrate(model, cal, lambda: MinMaxObserver(bits=8), layers=LAYERS)  # {layer: observer}
for layer, obs in minmax8.items():
    s8, z8 = obs.scale_zero_point()
    print(f"calibrate -> {layer}: min-max range [{float(obs.range()[0]):.3f}, {float(obs.range()[1]):.3f}], "
          f"8-bit affine s = {float(s8):.5f}, z = {int(z8)}")
# the other observers see the same inputs: read them once, then feed each observer
cal_acts = [model.activations(c) for c in cal]
OBSERVERS = {"min-max": MinMaxObserver, "moving average": MovingAverageMinMaxObserver,
             "percentile 99.9": lambda bits, symmetric: PercentileObserver(bits, symmetric, percentile=99.9),
             "MSE": MSEObserver}
act_err = {}
for bits in (8, 4):
    for label, make in OBSERVERS.items():
        for layer in LAYERS:
            obs = make(bits, False)
            for acts in cal_acts:
                obs.update(acts[layer])
            a = held_acts[layer]
            act_err[bits, label, layer] = (float(((obs.quantize(a).dequantize() - a) ** 2).mean()), obs.range())
    for layer in LAYERS:  # dynamic: each token's own symmetric scale
        a = held_acts[layer].reshape(-1, held_acts[layer].shape[-1])  # (tokens, K)
        t = quantize_tensor(a, bits, True, axis=0)
        act_err[bits, "per token (dynamic)", layer] = (float(((t.dequantize() - a) ** 2).mean()), None)
assert np.array_equal(act_err[8, "min-max", LAYERS[0]][1], minmax8[LAYERS[0]].range())
static = ["min-max", "moving average", "percentile 99.9", "MSE"]
for layer in LAYERS:
    a = held_acts[layer]
    print(f"{layer} input {a.shape}: min {a.min():.2f}, max {a.max():.2f}, mean square {float((a**2).mean()):.3f}")
    for label in [*OBSERVERS, "per token (dynamic)"]:
        rng_txt = act_err[8, label, layer][1]
        rng_txt = "" if rng_txt is None else f"range 8-bit [{float(rng_txt[0]):6.2f}, {float(rng_txt[1]):5.2f}]"
        print(f"   {label:<20} squared error: 8-bit {act_err[8, label, layer][0]:.2e}, "
              f"4-bit {act_err[4, label, layer][0]:.2e}   {rng_txt}")
if not FAST:  # what the text below says about the trained model
    for layer in LAYERS:  # at 4 bits clipping (percentile or MSE) beats the full range on held-out data
        assert min(act_err[4, k, layer][0] for k in ("percentile 99.9", "MSE")) < act_err[4, "min-max", layer][0]
    # per token: the best on the LayerNorm output; on the one-sided GELU output at 4 bits, worse than
    # a static affine range (symmetric per-token grids spend half their levels below zero)
    assert act_err[8, "per token (dynamic)", LAYERS[0]][0] < min(act_err[8, k, LAYERS[0]][0] for k in static)
    assert act_err[4, "per token (dynamic)", LAYERS[1]][0] > act_err[4, "MSE", LAYERS[1]][0]
for bits in (8, 4):  # MSE clipping beats min-max on the calibration data itself, by construction
    for layer in LAYERS:
        seen = np.concatenate([acts[layer].reshape(-1) for acts in cal_acts])
        e_mse = float(((MSEObserver(bits).update(seen).quantize(seen).dequantize() - seen) ** 2).mean())
        e_mm = float(((MinMaxObserver(bits).update(seen).quantize(seen).dequantize() - seen) ** 2).mean())
        assert e_mse <= e_mm * (1 + 1e-12)

# %% [markdown]
# At 4 bits, clipping (percentile or MSE) beats the full range on held-out
# data: a few extreme activations no longer stretch a grid of 16 levels. At 8
# bits there are levels to spare, and a tight percentile clips more than it
# gains. Dynamic per-token scales fit each row and win on the LayerNorm
# output, but they are symmetric: on the one-sided GELU output at 4 bits half
# their levels sit below zero, unused, and a static affine range does better.
# The price of dynamic scales is computing them for every token, in the
# forward.
#
# ## 5. Block formats: Q8_0 and Q4_0
#
# llama.cpp stores weights in blocks of 32 along each row (a row per output
# channel), one float16 scale $d$ a block:
#
# * **Q8_0** (34 bytes, 8.5 bits a weight): $d = \max|x|/127$, then 32 int8
#   codes $q = \operatorname{round}(x/d)$; $\hat x = q\,d$.
# * **Q4_0** (18 bytes, 4.5 bits a weight): $d = m / {-8}$ where $m$ is the
#   block's value of largest magnitude, sign kept; codes
#   $u = \min(15, \lfloor x/d + 8.5 \rfloor) \in [0, 15]$, $\hat x = (u - 8)\,d$,
#   two a byte: byte $j$ holds element $j$ in its low nibble and element
#   $j + 16$ in its high nibble.
#
# Dividing by $-8$ puts $m$ exactly on code 0 ($\hat x = -8d = m$) and uses all
# 16 codes, one more than symmetric int4's 15, at the price of a lopsided grid:
# the side away from $m$ stops at $+7d$. minigpt's implementation
# (`minigpt.quant.quantize_blocks`) is byte-for-byte the `gguf` package's
# reference quantizer (`tests/test_crosscheck_quant.py`). One block, decoded:

# %%
row = W[:32, 0].astype(np.float32)  # the first 32 inputs of output 0: one block
block = quantize_blocks(row, "q4_0")
d = float(block[:2].copy().view("<f2")[0])
low, high = (block[2:] & 0x0F).astype(int), (block[2:] >> 4).astype(int)
m = row[np.abs(row).argmax()]
print(f"Q4_0 block: {block.size} bytes = 2 (float16 d = {d:.5f} = {m:.4f} / -8) + 16 (two codes each)")
print("byte 0 =", f"0x{block[2]:02x}: element 0 code {low[0]} -> {(low[0] - 8) * d:+.4f} (was {row[0]:+.4f}),",
      f"element 16 code {high[0]} -> {(high[0] - 8) * d:+.4f} (was {row[16]:+.4f})")
assert np.allclose(dequantize_blocks(block, "q4_0"), (np.concatenate([low, high]).astype(np.float32) - 8) * d)
formats = {
    "int8 per channel": (quantize_tensor(W, 8, True, axis=1).dequantize(), 8 + 32 / W.shape[0]),
    "Q8_0": (dequantize_blocks(quantize_blocks(W.T, "q8_0"), "q8_0").T, bits_per_block_weight("q8_0")),
    "int4 groups of 32": (quantize_tensor(W, 4, True, group=32).dequantize(), 4 + 32 / 32),
    "Q4_0": (dequantize_blocks(quantize_blocks(W.T, "q4_0"), "q4_0").T, bits_per_block_weight("q4_0")),
}
print(f"\n{'format':<18} bits/weight   SQNR on h.0.mlp.c_fc")
format_sqnr = {}
for name, (w_hat, bpw) in formats.items():
    format_sqnr[name] = 10 * math.log10(float((W.astype(np.float64) ** 2).sum() / ((w_hat - W) ** 2).sum()))
    print(f"{name:<18} {bpw:8.2f}   {format_sqnr[name]:6.1f} dB")
assert bits_per_block_weight("q4_0") == 4.5 and bits_per_block_weight("q8_0") == 8.5
assert format_sqnr["Q4_0"] > format_sqnr["int4 groups of 32"]  # the 16th code, on these weights

# %% [markdown]
# Q4_0 stores groups of 32 like minigpt's int4 format but with a float16
# scale, so it is half a bit a weight cheaper than int4 with float32 group
# scales, and its 16th code gives it a little more resolution on the side of
# $m$.
#
# ## 6. The whole model
#
# `minigpt.quant.quantize_model` replaces each block linear's weight with
# integer arrays and scales in the parameter dict (the format is in
# `minigpt/layers/quantized_linear.py`); the forward runs them through the
# op table's integer products, the embeddings (which are also the tied
# output head), LayerNorms and biases stay float. Round to nearest (RTN),
# per row below: validation loss, bits per weight of the block linears
# (scales included), and the bytes of all parameters.
#
# W8A8 also quantizes every activation row entering a linear layer to int8
# on the fly (one symmetric scale per token, from that token: "dynamic"), so
# the product is int8 x int8 with int32 sums.

# %%
SCHEMES = {  # label: (kind, bits, group)
    "W8 per channel": ("int8", 8, None),
    "W8A8 (per-token int8 activations)": ("w8a8", 8, None),
    "Q8_0": ("q8_0", 8, None),
    "W4 per channel": ("int4", 4, None),
    "W4 groups of 32": ("int4", 4, 32),
    "W4 groups of 16": ("int4", 4, 16),
    "Q4_0": ("q4_0", 4, None),
    "W3 groups of 32": ("int4", 3, 32),
    "W2 groups of 32": ("int4", 2, 32),
}
results = {"float32": (float_loss, 32.0, weight_bytes(model.params))}
quantized = {}
for label, (kind, bits, group) in SCHEMES.items():
    quantized[label] = quantize_model(model, kind, group=group, bits=bits)
    p = quantized[label].params
    results[label] = (val_loss(quantized[label]), bits_per_weight(p), weight_bytes(p))
print(f"{'':36}{'val loss':>9}{'change':>9}{'bits/w':>8}{'bytes':>9}")
for label, (loss, bpw, nbytes) in results.items():
    print(f"{label:<36}{loss:9.4f}{loss - float_loss:+9.4f}{bpw:8.2f}{nbytes:9,}")
if not FAST:  # a trained model: each halving of the bits costs more
    assert results["W8 per channel"][0] - float_loss < 0.01
    assert results["W4 groups of 32"][0] < results["W4 per channel"][0] < results["W3 groups of 32"][0]
    assert results["W3 groups of 32"][0] < results["W2 groups of 32"][0]

# %% [markdown]
# At 8 bits the loss barely moves, weights alone or with the activations. At
# 4 bits the layout matters: groups of 32 or 16 beat one scale per channel.
# Below 4 bits round-to-nearest falls apart; the next section trains the
# model to live with its grid instead. (minigpt stores 3- and 2-bit codes in
# the int4 format's nibbles, so they save no bytes over 4 bits here: their
# rows show what the grid costs in loss, not a storage format.)
#
# The bytes column counts the whole model: the embedding matrix (vocabulary
# x width, and the output head too) stays float32 and is a large share of a
# model this small.
#
# ## 7. Quantization-aware training
#
# Round-to-nearest quantizes a model that never saw its grid. QAT
# fine-tunes with the grid in the forward: every step the weights the
# forward sees are fake-quantized, quantized and immediately dequantized,
#
# $$\hat w = \left(\operatorname{clamp}\!\left(\operatorname{round}(w/s) + z,\ q_{\min}, q_{\max}\right) - z\right) s ,$$
#
# while the optimizer updates the float weights underneath. round() has
# derivative 0 almost everywhere, which would stop all learning, so the
# backward uses the **straight-through estimator**: it treats round as the
# identity,
#
# $$\frac{\partial L}{\partial w} = \frac{\partial L}{\partial \hat w} \cdot
# \mathbb{1}\!\left[q_{\min} \le \operatorname{round}(w/s) + z \le q_{\max}\right],$$
#
# passing the gradient where the integer landed inside the range (the
# boundaries included) and blocking it where the clamp cut it off. With
# min-max scales nothing is clamped; a clipped range clamps its outliers.
# The scales are recomputed from the weights every step and are not
# trained. Symmetric 4 bits on the range $[-7, 7]$ ($s = 1$):

# %%
w_demo = np.array([6.5, 7.0, 7.4, 7.5, 9.0])
w_hat_demo, cache_demo = fake_quant_forward(w_demo, bits=4, symmetric=True, lo=-7.0, hi=7.0)
grad_demo = fake_quant_backward(np.ones_like(w_demo), cache_demo)
print("w         ", w_demo)
print("w_hat     ", w_hat_demo, "  (round half to even: 6.5 -> 6, 7.5 -> 8, then clamped to 7)")
print("dL/dw / dL/dw_hat", grad_demo)
assert list(grad_demo) == [1, 1, 1, 0, 0]

# %% [markdown]
# `minigpt.quant.qat_finetune` runs minigpt's training loop with
# `weight_transform=qat_transform(...)` and then stores the weights with the
# same quantizer, so the integer model computes exactly what the last
# forward saw. QAT also trains longer than the original run did, so the
# fair comparison adds a **control**: the float model fine-tuned for the same
# steps at the same learning rate, then quantized with RTN.

# %%
QAT_STEPS = 4 if FAST else 200
base = ckpt.train_config
tq = base.replace(steps=QAT_STEPS, lr=base.lr / 10, min_lr=base.lr / 100, warmup_steps=QAT_STEPS // 10,
                  eval_every=QAT_STEPS, eval_batches=2, checkpoint_every=QAT_STEPS,
                  batch_size=4 if FAST else base.batch_size)


def float_copy():
    return GPT(model.config, params={k: v.copy() for k, v in model.params.items()}, tokenizer=model.tokenizer)


t0 = time.perf_counter()
control = float_copy()
train(control, dataset, tq, progress=False)
control_loss = val_loss(control)
QAT_SCHEMES = ["W4 groups of 32", "W3 groups of 32", "W2 groups of 32"]
qat = {}
for label in QAT_SCHEMES:
    kind, bits, group = SCHEMES[label]
    qmodel, _ = qat_finetune(float_copy(), dataset, tq, kind, bits, group, progress=False)
    quantized[label + ", QAT"] = qmodel
    rtn_control = val_loss(quantize_model(control, kind, group=group, bits=bits))
    qat[label] = (results[label][0], rtn_control, val_loss(qmodel))
    results[label + ", QAT"] = (qat[label][2], bits_per_weight(qmodel.params), weight_bytes(qmodel.params))
qat_seconds = time.perf_counter() - t0
print(f"{QAT_STEPS} steps each at lr {tq.lr:g} -> {tq.min_lr:g} ({qat_seconds:.0f} s for all runs); "
      f"the float control ends at {control_loss:.4f} (from {float_loss:.4f})")
print(f"{'':18}{'RTN':>9}{'control + RTN':>15}{'QAT':>9}")
for label, (rtn, ctrl, q) in qat.items():
    print(f"{label:<18}{rtn:9.4f}{ctrl:15.4f}{q:9.4f}")
if not FAST:
    for label, (rtn, ctrl, q) in qat.items():
        assert q < ctrl and q < rtn  # the grid in the forward, not the extra steps, makes the difference

# %%
order = ["float32", "W8 per channel", "W8A8 (per-token int8 activations)", "Q8_0", "W4 per channel",
         "W4 groups of 32", "W4 groups of 32, QAT", "W4 groups of 16", "Q4_0", "W3 groups of 32",
         "W3 groups of 32, QAT", "W2 groups of 32", "W2 groups of 32, QAT"]
fig, ax = plt.subplots(figsize=(7.5, 5.2))
colors = ["gray" if k == "float32" else ("C2" if k.endswith("QAT") else "C0") for k in order]
losses = [results[k][0] for k in order]
ax.barh(range(len(order)), losses, color=colors)
for i, k in enumerate(order):
    loss, bpw, nbytes = results[k]
    ax.text(loss, i, f" {loss:.4f}", va="center", fontsize=7)
ax.set_yticks(range(len(order)), [f"{k} ({results[k][1]:.1f} b/w, {results[k][2] / 1024:.0f} KiB)"
                                  for k in order], fontsize=7)
ax.invert_yaxis()
lo = min(losses)
ax.set_xlim(lo - 0.1, max(losses) + 0.25)
ax.axvline(float_loss, color="gray", ls=":", lw=1, label=f"float32: {float_loss:.4f}")
ax.axvline(control_loss, color="C2", ls="--", lw=1,
           label=f"float32 trained {QAT_STEPS} more steps (QAT's control): {control_loss:.4f}")
ax.legend(fontsize=7, loc="lower right")
ax.set_xlabel("validation loss (nats per character), lower is better")
ax.set_title("The tiny model quantized: round to nearest (blue) and QAT (green)\n"
             "(b/w = bits per weight of the block linears, scales included; KiB = all parameters)", fontsize=9)
save_figure(fig, "07_quantization_model")

# %% [markdown]
# The same prompt, greedy, at each precision:

# %%
PROMPT = "    def __init__(self, "
samples = {}
for label in ["float32", "W8 per channel", "W4 groups of 32", "W3 groups of 32", "W3 groups of 32, QAT",
              "W2 groups of 32", "W2 groups of 32, QAT"]:
    m = model if label == "float32" else quantized[label]
    samples[label] = m.generate_text(PROMPT, 20 if FAST else 80, temperature=0.0)
    print(f"--- {label} ---\n{samples[label]}")

# %% [markdown]
# ## 8. GPTQ: rounding that corrects itself
#
# Round to nearest treats every weight alone. But a layer's error is what
# its output gets wrong on real inputs: for inputs $X$ ($M \times K$) and
# $W$ stored ($K \times N$, in $\times$ out),
#
# $$E(\hat W) = \lVert XW - X\hat W\rVert_F^2 = \sum_n (w_n - \hat w_n)^\top\, X^\top X\, (w_n - \hat w_n),$$
#
# one quadratic form per output column $n$, with the Hessian $H = 2X^\top X$
# ($K \times K$). When inputs are correlated, the error of one row of $W$
# can be cancelled by moving the rows of the inputs correlated with it.
# GPTQ (Frantar et al. 2023) quantizes one input row $k$ at a time and
# moves the rows not yet quantized by Optimal Brain Surgeon's update; with
# the Cholesky factor of the inverse Hessian, $H^{-1} = U^\top U$ ($U$
# upper triangular), that is
#
# $$e_k = \frac{w_k - \hat w_k}{U_{kk}}, \qquad w_j \leftarrow w_j - U_{kj}\, e_k \quad (j > k).$$
#
# $H$ is damped first, $H + 0.01\,\overline{\operatorname{diag} H}\, I$, so
# that it can be inverted. A group's scales are fixed when the group starts,
# from its rows as they are then. The result is stored exactly like round to
# nearest's: the same bytes, the same kernels. $H$ comes from calibration
# batches of the *training* split, read block by block through
# `model.activations`, each block seeing the earlier blocks already
# quantized (`minigpt.quant.gptq`).

# %%
from minigpt.quant import activation_maxima, awq_model, calibration_batches, gptq_model, smooth_model
from minigpt.quant.smoothquant import smoothing_scales, w8a8_output_error

CALIB = calibration_batches(dataset, 2 if FAST else 8)  # 16 windows of 64 characters a batch
print(f"calibration: {len(CALIB)} batches, {sum(b.size for b in CALIB):,} characters of the training split")
GPTQ_SCHEMES = ["W4 per channel", "W4 groups of 32", "W3 per channel", "W3 groups of 32", "W2 groups of 32"]
SCHEMES["W3 per channel"] = ("int4", 3, None)  # the RTN row section 6 did not need
w3pc = quantize_model(model, "int4", group=None, bits=3)
results["W3 per channel"] = (val_loss(w3pc), bits_per_weight(w3pc.params), weight_bytes(w3pc.params))
gptq = {}
for label in GPTQ_SCHEMES:
    kind, bits, group = SCHEMES[label]
    t0 = time.perf_counter()
    qm, layer_errors = gptq_model(model, CALIB, kind, bits, group)
    gptq[label] = {"rtn": results[label][0], "gptq": val_loss(qm), "layers": layer_errors,
                   "seconds": time.perf_counter() - t0}
print(f"validation loss (float {float_loss:.4f})")
print(f"{'':18}{'RTN':>9}{'GPTQ':>9}   GPTQ took")
for label, r in gptq.items():
    print(f"{label:<18}{r['rtn']:9.4f}{r['gptq']:9.4f}   {r['seconds']:.1f} s")
print("\nW3 groups of 32: each layer's output error ||XW - XW_hat||^2 / M on its calibration inputs")
print(f"{'':18}{'RTN':>9}{'GPTQ':>9}{'ratio':>8}")
for layer, e in gptq["W3 groups of 32"]["layers"].items():
    print(f"{layer:<18}{e['rtn']:9.4f}{e['gptq']:9.4f}{e['gptq'] / e['rtn']:8.2f}")
assert all(e["gptq"] <= e["rtn"] for e in gptq["W3 groups of 32"]["layers"].values())
if not FAST:
    assert all(r["gptq"] < r["rtn"] for r in gptq.values())

# %% [markdown]
# Every layer's output error on the calibration inputs falls by half or
# more, and the validation loss, measured on text GPTQ never saw, follows.
# The fewer the bits, the more there is to win back.
#
# ## 9. Activation outliers and SmoothQuant
#
# W8A8 rounds the activations too, one scale per token,
# $s_t = \max_j |X_{tj}| / 127$. In large language models a few input
# channels carry values tens of times larger than the rest, in every token
# (Dettmers et al. 2022, from about 6.7 billion parameters up); they set
# every token's scale and leave the other channels a handful of levels.
# Our model's per-channel maxima $\max_t |X_{tj}|$ over the calibration
# tokens, for each linear layer's input:

# %%
maxima = activation_maxima(model, CALIB)
print(f"{'':18}{'max':>7}{'median':>8}{'max/median':>12}   (of the channels' max |X_j|)")
for layer, m in maxima.items():
    print(f"{layer:<18}{m.max():7.2f}{np.median(m):8.2f}{m.max() / np.median(m):12.1f}")

# %% [markdown]
# SmoothQuant (Xiao et al. 2023) divides input channel $j$ by
#
# $$s_j = \frac{\max_t |X_{tj}|^{\alpha}}{\max_n |W_{jn}|^{1-\alpha}}$$
#
# and multiplies row $j$ of $W$ by it: $(X\operatorname{diag}(s)^{-1})\,
# (\operatorname{diag}(s)\,W) = XW$ exactly. $1/s$ folds into the LayerNorm
# in front ($\gamma/s$, $\beta/s$), so `attn.c_attn` (after `ln_1`) and
# `mlp.c_fc` (after `ln_2`) are smoothed and the float model does not change.
# At $\alpha = 0.5$ every channel's activation maximum equals its weight row's,
# $\sqrt{\max|X_j|\,\max|W_j|}$. Below: W8A8 with and without smoothing on
# our model, then on one layer with two outlier channels 60 times the
# others, as large models have them.

# %%
smooth_loss, smoothed = {}, {}
for alpha in (0.25, 0.5, 0.75):
    smoothed[alpha], _ = smooth_model(model, CALIB, alpha)
    smooth_loss[alpha] = val_loss(quantize_model(smoothed[alpha], "w8a8"))
smooth_float_loss = val_loss(smoothed[0.5])
w8a8_loss = results["W8A8 (per-token int8 activations)"][0]
print(f"validation loss: float {float_loss:.4f}, smoothed float {smooth_float_loss:.4f} (the same model)")
print(f"W8A8 {w8a8_loss:.4f}; after SmoothQuant " + ", ".join(f"alpha {a}: {v:.4f}" for a, v in smooth_loss.items()))
assert abs(smooth_float_loss - float_loss) < 1e-4

x_out = rng.standard_normal((512, 64))
x_out[:, [5, 40]] *= 60.0  # two outlier channels, in every token
w_out = (rng.standard_normal((64, 48)) / 8.0).astype(np.float32)
layer_x = np.concatenate([model.activations(b)["h.0.mlp.c_fc"].reshape(-1, model.config.n_embd) for b in CALIB])
layer_w = model.params["h.0.mlp.c_fc.weight"]
outlier_error = {}
print(f"\nW8A8 relative output error ||Y_hat - XW|| / ||XW||")
print(f"{'':28}{'no smoothing':>13}" + "".join(f"{'alpha ' + str(a):>11}" for a in (0.25, 0.5, 0.75)))
for name, (xx, ww) in {"two outlier channels": (x_out, w_out), "our h.0.mlp.c_fc": (layer_x, layer_w)}.items():
    outlier_error[name] = [w8a8_output_error(xx, ww)] + [w8a8_output_error(xx, ww, a) for a in (0.25, 0.5, 0.75)]
    print(f"{name:<28}" + "".join(f"{e:13.4f}" if i == 0 else f"{e:11.4f}" for i, e in enumerate(outlier_error[name])))
assert outlier_error["two outlier channels"][2] < outlier_error["two outlier channels"][0] / 2

# %%
fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.4))
ax = axes[0]
ax.plot(maxima["h.1.mlp.c_proj"], color="C2", lw=0.8, label="h.1.mlp.c_proj (after the GELU)")
ax.plot(maxima["h.0.mlp.c_fc"], color="C0", lw=1, label="h.0.mlp.c_fc")
ax.plot(activation_maxima(smoothed[0.5], CALIB, ["h.0.mlp.c_fc"])["h.0.mlp.c_fc"], color="C0", lw=1, ls=":",
        label="h.0.mlp.c_fc, smoothed (alpha 0.5)")
ax.set_yscale("log")
ax.set_xlabel("input channel j")
ax.set_ylabel("max over tokens of |X_j|")
ax.set_title("our model", fontsize=9)
ax.legend(fontsize=7)
ax = axes[1]
ax.plot(np.abs(x_out).max(axis=0), color="C3", lw=1, label="two outlier channels")
s_demo = smoothing_scales(np.abs(x_out).max(axis=0), w_out, 0.5)
ax.plot(np.abs(x_out / s_demo).max(axis=0), color="C3", lw=1, ls=":", label="smoothed (alpha 0.5)")
ax.set_yscale("log")
ax.set_xlabel("input channel j")
ax.set_title(f"a layer like a large model's: W8A8 error {outlier_error['two outlier channels'][0]:.4f}"
             f" -> {outlier_error['two outlier channels'][2]:.4f}", fontsize=9)
ax.legend(fontsize=7)
save_figure(fig, "07_quantization_outliers")

# %% [markdown]
# The inputs SmoothQuant can reach, after a LayerNorm, have no outlier
# channels in our small model (the largest channel maximum is about twice
# the median), so per-token int8 costs almost nothing and there is nothing
# to fix: the loss moves by less than a thousandth either way, which is
# noise at this size. The most uneven input is block 1's second MLP layer's,
# after the GELU (many channels stay near 0, the others reach ten times
# more); no LayerNorm precedes it, so SmoothQuant, as in the paper, leaves
# it alone. With outliers like a large
# model's, the same rescaling cuts the W8A8 error several times. Smoothing
# is a transform, not a format: the smoothed model is stored and run as any
# W8A8 model (`minigpt quantize CKPT --activations --smooth 0.5`).
#
# ## 10. AWQ: protect the weights that meet large activations
#
# AWQ (Lin et al. 2024) also rescales input channels before rounding, but
# for weight-only quantization and by a different rule: rows of $W$ that meet
# large activations matter most, so scale them up before rounding, where the
# grid is then relatively finer for them,
#
# $$s_j = \Big(\operatorname{mean}_t |X_{tj}|\Big)^{\alpha}, \qquad
# \alpha^\ast = \arg\min_{\alpha \in \{0, 0.05, \dots, 1\}}
# \big\lVert XW - (X\operatorname{diag}(s)^{-1})\, Q(\operatorname{diag}(s)\,W) \big\rVert_F^2 ,$$
#
# with $Q$ the format the model is stored in, searched per layer on the
# calibration inputs. $\alpha = 0$ is round to nearest, so the search never
# does worse on those inputs. $1/s$ folds into `ln_1` (for `attn.c_attn`),
# `ln_2` (for `mlp.c_fc`) and the value columns of `c_attn` (for
# `attn.c_proj`: attention output channel $j$ is linear in value column $j$).
# `mlp.c_proj` stays plain round to nearest: the GELU before it lets no
# weight absorb $1/s$.

# %%
METHOD_SCHEMES = ["W4 per channel", "W4 groups of 32", "W3 per channel", "W3 groups of 32"]
awq = {}
for label in METHOD_SCHEMES:
    kind, bits, group = SCHEMES[label]
    qm, report = awq_model(model, CALIB, kind, bits, group)
    awq[label] = {"loss": val_loss(qm), "report": report}
print(f"validation loss (float {float_loss:.4f})")
print(f"{'':18}{'RTN':>9}{'GPTQ':>9}{'AWQ':>9}")
for label in METHOD_SCHEMES:
    print(f"{label:<18}{gptq[label]['rtn']:9.4f}{gptq[label]['gptq']:9.4f}{awq[label]['loss']:9.4f}")
print("\nW3 groups of 32: AWQ's alpha and each layer's output error on its calibration inputs")
print(f"{'':18}{'alpha':>6}{'RTN':>9}{'AWQ':>9}{'ratio':>8}")
for layer, r in awq["W3 groups of 32"]["report"].items():
    print(f"{layer:<18}{r['alpha']:6.2f}{r['rtn']:9.4f}{r['awq']:9.4f}{r['awq'] / r['rtn']:8.2f}")
assert all(r["awq"] <= r["rtn"] for r in awq["W3 groups of 32"]["report"].values())

# %%
fig, ax = plt.subplots(figsize=(7.0, 3.6))
xpos = np.arange(len(METHOD_SCHEMES))
for k, (name, get) in enumerate([("RTN", lambda l: gptq[l]["rtn"]), ("GPTQ", lambda l: gptq[l]["gptq"]),
                                 ("AWQ", lambda l: awq[l]["loss"])]):
    vals = [get(label) - float_loss for label in METHOD_SCHEMES]
    ax.bar(xpos + (k - 1) * 0.27, vals, width=0.27, label=name, color=f"C{k}")
    for xp, v in zip(xpos, vals):
        ax.text(xp + (k - 1) * 0.27, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
ax.set_xticks(xpos, METHOD_SCHEMES, fontsize=8)
ax.set_ylabel("validation loss - float32's (nats)\nlower is better")
ax.set_title("Round to nearest, GPTQ and AWQ on the same grids (same bytes)", fontsize=9)
ax.legend(fontsize=8)
save_figure(fig, "07_quantization_methods")

# %% [markdown]
# On this model GPTQ wins clearly and AWQ barely moves (at 4 bits per
# channel it even ends a little worse than RTN, although every layer's
# calibration error is at most RTN's: a layer's error is only a proxy for
# the loss). AWQ's scales protect input channels whose activations are much
# larger on average than the others', and our model, as the previous
# section showed, has hardly any; in the paper's large models they are what
# makes 4-bit weights work. GPTQ needs no such structure, only correlated
# inputs, which every layer has. From the command line:
# `minigpt quantize CKPT --bits 3 --method gptq` (or `awq`).

# %% [markdown]
# ## 11. Speed, measured side by side
#
# Smaller weights are not automatically faster. The same product
# $y = xW$, $W$ of GPT-2 small's first MLP layer ($768 \times 3072$), in four ways:
#
# * **float32**: NumPy's `@` (BLAS);
# * **int8 weights**: float activations times int8 weights. One row: a numba
#   loop converts each weight to float as it multiplies; a batch: the weight
#   is dequantized into a reused buffer and BLAS multiplies (the reference's
#   own two steps);
# * **int4 weights** (groups of 32): two weights a byte. One row: unpacked in
#   the inner loop, four byte rows (eight inputs) a pass in 16-wide vectors;
#   a batch: dequantized, then BLAS, as for int8;
# * **W8A8**: the activations quantized per token (included in the time),
#   then int8 x int8 with int32 sums: on a CPU with AVX-512 VNNI a batch runs
#   in register tiles (6 rows x 64 output channels, 24 vector accumulators,
#   the weights repacked so that one 64-byte load feeds 16 channels x 4 inputs).
#
# once for a batch of 512 rows (a prompt, or training) and once for one row
# (decoding one token).

# %%
CPU = cpu_model()
LOAD = os.getloadavg()[0]  # other work on the machine makes the timings noisier
THREADS = (f"numba threads {numba.get_num_threads()}, BLAS threads "
           f"{os.environ.get('OPENBLAS_NUM_THREADS') or os.environ.get('OMP_NUM_THREADS') or 'default'}")
Kd, N = (256, 1024) if FAST else (768, 3072)
BATCH = 64 if FAST else 512
REPEATS = 3 if FAST else 15
w_big = (rng.standard_normal((Kd, N)) / math.sqrt(Kd)).astype(np.float32)
w_q, w_s = quantize_per_channel(w_big)
p4, s4 = quantize_int4_groupwise(w_big, 32)
speed = {}
for M in (BATCH, 1):
    xb = rng.standard_normal((M, Kd)).astype(np.float32)
    impls = {"float32 (BLAS)": lambda: xb @ w_big,
             "int8 weights": lambda: K.int8_weight_matmul(xb, w_q, w_s),
             "int4 weights": lambda: K.int4_weight_matmul(xb, p4, s4, 32),
             "W8A8": lambda: K.quantized_linear_int8(xb, w_q, w_s)}
    times = {name: time_call(fn, REPEATS if M > 1 else 10 * REPEATS) for name, fn in impls.items()}
    for name, sec in times.items():
        speed[M, name] = (sec, times["float32 (BLAS)"] / sec)
weight_bytes_per = {"float32 (BLAS)": 4.0, "int8 weights": 1 + 4 / Kd, "int4 weights": 0.5 + 4 / 32,
                    "W8A8": 1 + 4 / Kd}
print(f"CPU: {CPU}, {THREADS}, load average {LOAD:.1f} when measured")
print(f"x ({BATCH} or 1, {Kd}) @ W ({Kd}, {N}), median of repeated calls")
print(f"{'':16}{'weight bytes':>13}  {'batch of ' + str(BATCH):>26}  {'one row (decoding)':>26}")
print(f"{'':16}{'per weight':>13}  {'ms':>8}{'vs float32':>11}{'B/MAC':>7}  {'ms':>8}{'vs float32':>11}{'B/MAC':>7}")
for name, per in weight_bytes_per.items():
    (tb, rb), (t1, r1) = speed[BATCH, name], speed[1, name]
    print(f"{name:<16}{per:13.3f}  {tb * 1e3:8.3f}{rb:10.2f}x{per / BATCH:7.4f}  {t1 * 1e3:8.3f}{r1:10.2f}x{per:7.3f}")
print("B/MAC: weight bytes read per multiply-add (each weight is read once and used by every row)")

# %%
fig, ax = plt.subplots(figsize=(6.4, 3.8))
names = list(weight_bytes_per)[1:]
xpos = np.arange(len(names))
for k, (M, label) in enumerate([(BATCH, f"batch of {BATCH} rows"), (1, "one row (decoding)")]):
    ratios = np.array([speed[M, n][1] for n in names])
    # bars from 1x: up is faster than float32, down is slower (log scale: 2x and 0.5x look alike)
    ax.bar(xpos + (k - 0.5) * 0.38, ratios - 1, bottom=1, width=0.38, label=label, color=f"C{k}")
    for xp, r in zip(xpos, ratios):
        ax.text(xp + (k - 0.5) * 0.38, r, f"{r:.2f}x", ha="center", va="bottom" if r >= 1 else "top", fontsize=8)
ax.axhline(1.0, color="gray", lw=1)
ax.set_yscale("log")
ticks = [t for t in (0.1, 0.25, 0.5, 1, 2, 4, 10, 25, 100)
         if min(r for _, r in speed.values()) / 1.5 <= t <= max(r for _, r in speed.values()) * 1.5]
ax.set_yticks(ticks, [f"{t:g}x" for t in ticks])
ax.minorticks_off()
ax.set_xticks(xpos, names)
ax.set_ylabel("speed over float32 BLAS\n(log scale, higher is better)")
ax.set_title(f"x @ W, W {Kd} x {N}, measured side by side\n{CPU}\n{THREADS}, load {LOAD:.1f}",
             fontsize=8)
ax.legend(fontsize=8)
save_figure(fig, "07_quantization_speed")

# %% [markdown]
# Why the two cases differ:
#
# * **one row** reads every weight once and does one multiply-add with it: the
#   time goes to moving weights, so bytes per multiply-add decide, and int8
#   (1 byte) and int4 (0.625 with its float32 scales) have 4 and 6.4 times
#   less to move than float32;
# * **a batch** uses every weight once per row, so the bytes per multiply-add
#   shrink by the batch size and arithmetic decides. A weight-only product
#   still multiplies in float32, after converting (and for int4 unpacking)
#   every weight, work BLAS's float32 kernel never does: at best about as
#   fast. On an AVX-512 CPU the conversion is folded into the packing any
#   GEMM does (a float32 GEMM of minigpt's own, whose tiles happen to be a
#   little faster than BLAS's here); elsewhere the weight is converted once
#   per call, then BLAS multiplies, a few percent slower. Only W8A8 changes
#   the arithmetic itself: int8 x int8 products
#   summed in int32, which AVX-512 VNNI does 64 per instruction where a
#   float32 fused multiply-add does 16; the quantization of the activations
#   and the repacking of the weights are paid once per call.
#
# So "int8 is faster" holds for decoding (memory-bound), or when both operands
# are integers (compute-bound); weight-only quantization buys bytes, and speed
# only where bytes were the bottleneck. Generating text is decoding, one row a
# token, so the largest matrix read every token sets the pace: at GPT-2's
# vocabulary that is the tied output head (50257 x 768), which stays float32
# by default. `minigpt quantize --head int8` stores it as int8 too, one scale
# per vocabulary row; the README gives what that does to GPT-2-small-shape
# generation on this machine.

# %% [markdown]
# ## 12. Deep Compression: prune, share, code
#
# Han et al. (ICLR 2016) chain three ideas, each with a fine-tune after it,
# and report the result as one number, the compression ratio:
#
# 1. **prune** (chapter 6), here each matrix to the sparsity its sensitivity
#    scan allows under a small loss budget (`minigpt.prune.sensitivity`), then
#    **fine-tune with the masks** so the survivors take over the pruned ones' work;
# 2. **share weights**: the surviving weights of each matrix are replaced by
#    the nearest of $2^b$ centroids (k-means, started linearly over the range),
#    stored as a $b$-bit index each plus the codebook; then **fine-tune the
#    centroids**, the gradient of centroid $c_j$ being the sum of the gradients
#    of the weights that share it ($\partial L / \partial c_j = \sum_{k: i_k = j}
#    \partial L / \partial \hat w_k$); the pruned weights keep index 0 and value 0;
# 3. **Huffman code** the indices and the gaps between surviving positions:
#    frequent symbols get short code words. Lossless: the decoded arrays are
#    exactly the weights the model runs, so this stage cannot change the loss.
#
# `deep_compression` (`minigpt.quant.deep_compression`) runs the five stages on a
# copy of the model and measures, after each, the validation loss (on the same
# windows for every row) and the bytes of the block matrices: float32 dense;
# CSR after pruning (a float32 value and a uint16 row index per survivor,
# so pruning saves bytes only past a third of zeros); then a $b$-bit index
# instead of the value; then Huffman codes for both. Below: two loss budgets
# for the pruning and two codebook sizes.

# %%
from minigpt.config import TrainConfig
from minigpt.prune.sensitivity import sensitivity_masks, sensitivity_scan, total_sparsity
from minigpt.quant.deep_compression import deep_compression

DC_SCAN = [dataset.get_batch("train", 8 if FAST else 32, np.random.default_rng(1)) for _ in range(1 if FAST else 4)]
DC_SPARSITIES = (0.5, 0.9) if FAST else (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def dc_scan_loss(params):  # the scan reads training windows: validation stays for the report
    m = GPT(model.config, params=params, backend=model.backend)
    return float(np.mean([m.loss(x, y) for x, y in DC_SCAN]))


dc_scan = sensitivity_scan(model.params, dc_scan_loss, DC_SPARSITIES)
dc_dense = dc_scan_loss(model.params)
DC_TUNE = TrainConfig(steps=2 if FAST else 150, batch_size=4 if FAST else 16, lr=1e-3, min_lr=1e-4, warmup_steps=0,
                      eval_every=1000, eval_batches=1, checkpoint_every=1000)
DC_RUNS = [(0.03, 4), (0.1, 4), (0.03, 3)]  # (pruning loss budget in nats on the scan windows, k-means bits)
dc_rows, dc_sparsity = {}, {}
for budget, bits in DC_RUNS:
    masks, per, _ = sensitivity_masks(model.params, dc_scan_loss, budget, dc_scan, DC_SPARSITIES, dc_dense)
    dc_sparsity[budget, bits] = total_sparsity(model.params, per)
    dc_rows[budget, bits], _, _ = deep_compression(model, dataset, masks, bits, DC_TUNE,
                                                   centroid_steps=2 if FAST else 50, eval_batches=2 if FAST else 20)

STAGES = ["dense", "pruned", "fine-tuned with masks", "k-means", "centroids fine-tuned", "Huffman coded"]
print(f"the tiny model's block matrices ({dc_rows[DC_RUNS[0]][0]['bytes'] // 4:,} float32 weights): "
      f"validation loss / compression ratio after each stage")
print(f"{'':<24}" + "".join(f"{f'budget {b:g}, {k}-bit':>22}" for b, k in DC_RUNS))
print(f"{'(pruned, all matrices)':<24}" + "".join(f"{f'{dc_sparsity[r]:.0%} zeros':>22}" for r in DC_RUNS))
for i, stage in enumerate(STAGES):
    cells = [f"{dc_rows[r][i]['val_loss']:.4f} / {dc_rows[r][i]['ratio']:5.2f}x" for r in DC_RUNS]
    print(f"{stage:<24}" + "".join(f"{c:>22}" for c in cells))
dc_final = {r: (dc_rows[r][-1]["val_loss"] - dc_rows[r][0]["val_loss"], dc_rows[r][-1]["ratio"]) for r in DC_RUNS}
dc_within = [ratio for rise, ratio in dc_final.values() if rise <= 0.05]
dc_best = max(dc_within, default=None)
print("at a validation-loss increase of at most 0.05 nats: "
      + (f"{dc_best:.1f}x smaller block matrices" if dc_best else "no run stayed within 0.05 nats")
      + f" (the paper: 35x AlexNet, 49x VGG-16, 40x LeNet-300-100, 39x LeNet-5)")

# %% [markdown]
# Han et al. report 35x for AlexNet, 49x for VGG-16, 40x for LeNet-300-100
# and 39x for LeNet-5 (their Table 1), with no loss of accuracy; pruning
# alone gave 9-13x and weight sharing brought it to 27-31x. Ours, the
# last line above, is several times smaller, for reasons that are about the
# models more than the method:
#
# * **What gets pruned.** Most of AlexNet's and VGG-16's weights sit in a few
#   huge fully-connected layers, and those are what lets pruning alone reach
#   9x and 13x. Our 110k-parameter character model has no such slack: every
#   matrix is small and busy, and the sensitivity scan lets it lose only about
#   half of its weights within the budgets above. At half zeros, CSR's
#   6 bytes a survivor barely beat 4 bytes a dense weight.
# * **What is counted.** Our bytes are the block matrices only; the embeddings
#   (also the output head), LayerNorms and biases stay float32 and are left out
#   of both sides. The paper compresses every layer.
# * **The yardstick.** The paper holds top-1 / top-5 accuracy (MNIST,
#   ImageNet); we hold the validation loss within 0.05 nats (0.07 bits a
#   character) of the dense model's.
# * **Huffman does more here** than in the paper (27-31x to 35-49x): after
#   weight sharing, a survivor's uint16 row index (2 bytes) outweighs its
#   4-bit value index (half a byte), and at about half zeros the gaps between
#   survivors are small numbers that Huffman codes in a few bits.
#
# From the command line, the weight-sharing part alone:
# `minigpt quantize CKPT --method kmeans --bits 4 --centroid-steps 50 --out q.npz`
# prints the bytes with packed and with Huffman-coded indices.

# %% [markdown]
# Weight sharing alone, on the dense model, against round to nearest at the
# same bits (section 6's rows): a codebook places its $2^b$ values where the
# weights are dense, where a linear grid spaces them evenly, and costs one
# table a matrix instead of a scale per channel or group.

# %%
from minigpt.quant import finetune_centroids, kmeans_model
from minigpt.quant.cli import kmeans_bytes

KM_STEPS = 2 if FAST else 50
km_batches = [dataset.get_batch("train", 16, np.random.default_rng(2)) for _ in range(KM_STEPS)]
kmeans_vs_linear = {}
print(f"{'':<30}{'val loss':>9}{'bits/w':>8}   (block linears; k-means: indices packed, codebooks included)")
for bits in (4, 3):
    km = kmeans_model(model, bits)
    km_tuned, _ = finetune_centroids(km, km_batches, KM_STEPS)
    packed, huff, _, n_w = kmeans_bytes(km_tuned.params)
    kmeans_vs_linear[bits] = {"k-means": val_loss(km), f"k-means, {KM_STEPS} centroid steps": val_loss(km_tuned),
                              "bits": 8 * packed / n_w, "huffman bits": 8 * huff / n_w}
    r = kmeans_vs_linear[bits]
    for label in (f"W{bits} per channel", f"W{bits} groups of 32"):
        print(f"{label + ' (linear)':<30}{results[label][0]:9.4f}{results[label][1]:8.2f}")
    print(f"{f'k-means {bits}-bit':<30}{r['k-means']:9.4f}{r['bits']:8.2f}")
    print(f"{f'  + {KM_STEPS} centroid steps':<30}{r[f'k-means, {KM_STEPS} centroid steps']:9.4f}{r['bits']:8.2f}"
          f"   ({r['huffman bits']:.2f} with Huffman-coded indices)")

# %% [markdown]
# In the full run k-means at 3 bits beats both linear 3-bit rows with fewer
# bits a weight; at 4 bits it is a little worse than both, with fewer bits.
# Fine-tuning the centroids lowers the training loss on its 50 batches but
# raises the validation loss a little on this dense model (a model whose
# training loss is well below its validation loss: the centroids fit the
# batches they see); after pruning, in the pipeline above, the same step
# helped. Measure it on held-out data before keeping it.

# %% [markdown]
# ## 13. Errata: a quantization snippet that circulates in tutorials
#
# > A TensorFlow tutorial on optimising GPT-style models quantizes with a
# > `quantize_model(model, num_bits=8)` that calls `tf.math.quantize_to_code(x,
# > num_bits)` on every trainable variable and writes the results back with
# > `model.set_weights`. What goes wrong:
# >
# > 1. **The function does not exist.** TensorFlow has `tf.quantization.quantize`
# >    (which returns the codes *and* the range they came from) and fake-quant
# >    ops, but no `quantize_to_code`.
# > 2. **Codes without a scale are not weights.** Whatever produced them, loading
# >    integer codes back as the float weights multiplies every weight by $1/s$;
# >    the scale and zero point must be kept and applied (below: what that does
# >    to our model).
# > 3. **Everything is quantized, per tensor.** Biases, LayerNorm gains and the
# >    embeddings go through the same grid as the matrices; real tools keep the
# >    small, sensitive tensors in float and use per-channel or group scales.
# > 4. **No speed.** Weights put back into a float model are float again: the
# >    forward computes exactly as before. Bytes and speed change only when the
# >    model stores the integers and its kernels read them.
# > 5. **No comparison.** The function edits the model in place and returns it,
# >    and so do the tutorial's pruning and distillation functions: its
# >    "pruned", "quantized" and "distilled" models are one object, so the
# >    evaluations at the end cannot compare anything. Activations are never
# >    observed either (no calibration).

# %%
codes_as_weights = dict(model.params)
for name in LINEARS:
    codes_as_weights[name] = quantize_tensor(model.params[name], 8, True).q.astype(np.float32)
errata_loss = val_loss(GPT(model.config, params=codes_as_weights, tokenizer=model.tokenizer))
print(f"int8 codes loaded as if they were the weights: validation loss {errata_loss:.2f} "
      f"(float {float_loss:.2f}, uniform guessing ln {model.config.vocab_size} = "
      f"{math.log(model.config.vocab_size):.2f}); with their scales, W8: {results['W8 per channel'][0]:.4f}")
assert errata_loss > float_loss + (1.0 if not FAST else 0.0)

# %% [markdown]
# ## Exercises
#
# 1. **Asymmetric per-channel int4.** Take `w = model.params["h.1.mlp.c_proj.weight"]`
#    and compute, with NumPy only and the formulas of section 1, the scale and
#    zero point of each output channel for affine 4 bits ($q \in [0, 15]$), the
#    codes, and the dequantized weights. Check:
#    `t = quantize_tensor(w, 4, symmetric=False, axis=1)`, then
#    `np.testing.assert_array_equal(my_q, t.q)` and
#    `np.testing.assert_allclose(my_scale, t.scale)`. Is its squared error below
#    symmetric per-channel int4's (`quantize_tensor(w, 4, True, axis=1)`)? Why
#    might it be, for weights that are not centred on 0?
# 2. **Q4_0 and one outlier.** Draw 32 values from N(0, 1), set one of them to
#    20, and predict before measuring: what is $d$, and what happens to the
#    other 31 values? Measure with
#    `dequantize_blocks(quantize_blocks(x, "q4_0"), "q4_0")`, and check that
#    every one of the 31 either rounds to 0 or to $\pm d$ (how many of each?).
#    Then put the outlier in a 256-value row instead: how many blocks does it
#    damage?
# 3. **The straight-through boundary.** With `fake_quant_forward(w, bits=4,
#    symmetric=True, lo=-7.0, hi=7.0)`, find the smallest $w > 7$ whose
#    gradient `fake_quant_backward` blocks. Why is it 7.5 and not 7.0? Check
#    that $w = -7.5$ is blocked too and $w = 6.5$ is not (round half to even).
# 4. **Where the bytes are.** Which parameter of the tiny model is now the
#    largest after W4 quantization (`sorted(q.params.items(), key=lambda kv:
#    -kv[1].nbytes)[:3]` for `q = quantized["W4 groups of 32"]`)? What would
#    quantizing it save, and why is it harder (it is also the output head)?
