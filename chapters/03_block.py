# %% [markdown]
# # Chapter 3: The transformer block
#
# A GPT is a stack of identical blocks. Each block has two sublayers, the
# attention of chapters 1 and 2 and a position-wise feed-forward network
# (FFN), and wraps each one in a LayerNorm and a residual connection. In
# GPT-2 the arrangement is
#
# $$x \leftarrow x + \text{Attn}(\text{LN}_1(x)), \qquad x \leftarrow x + \text{FFN}(\text{LN}_2(x)).$$
#
# This chapter
#
# 1. computes the FFN with minigpt's layers and checks it is the model's MLP
#    (by running the whole trained model by hand and comparing logits);
# 2. explains, in a boxed note, why a formula for the FFN that circulates in
#    tutorials is wrong, and demonstrates it numerically;
# 3. looks at LayerNorm and the residual connection, and compares GPT-2's
#    pre-LN arrangement with the original Transformer's post-LN one;
# 4. plots GELU against ReLU;
# 5. derives the parameter count of a whole GPT and checks it against
#    `model.params` for several shapes, up to GPT-2 itself.
#
# *Numbers quoted in the text come from a full run (`minigpt tour`, which
# also made the book's figures). A fast run (`MINIGPT_FAST=1`, for tests and
# a quick look) uses a model trained for 30 steps instead of 4000 and a
# shallower stack for pre-LN vs post-LN; where that changes a number, the
# text gives both.*

# %%
import math

import matplotlib.pyplot as plt
import numpy as np

from minigpt.config import GPTConfig, PRESETS
from minigpt.layers import (
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_forward,
    gelu_backward,
    gelu_forward,
    layernorm_backward,
    layernorm_forward,
    linear_backward,
    linear_forward,
    lm_head_backward,
    lm_head_forward,
    multihead_attention_backward,
    multihead_attention_forward,
)
from minigpt.layers.block import block_backward, block_forward
from minigpt.model import GPT, init_params, param_shapes
from minigpt.pretrained import fast_mode, trained_model
from minigpt.tour import save_figure

FAST = fast_mode()
rng = np.random.default_rng(0)

# %% [markdown]
# ## The position-wise feed-forward network
#
# $$\text{FFN}(x) = \text{GELU}(x W_1 + b_1)\, W_2 + b_2,
# \qquad W_1 \in \mathbb{R}^{C \times 4C},\; W_2 \in \mathbb{R}^{4C \times C}.$$
#
# In minigpt (GPT-2 names) $W_1, b_1$ are `mlp.c_fc` and $W_2, b_2$ are
# `mlp.c_proj`. Three things make it what it is:
#
# * **two** matrices with a **nonlinearity** between them: the hidden layer is
#   4 times wider than the model, and the GELU lets the network compute
#   functions that no single matrix can;
# * **position-wise**: $x$ is one position's vector of $C$ numbers, and the
#   same FFN is applied to every position independently (attention is the
#   only place where positions talk);
# * no normalisation and no residual *inside* it: those belong to the block.
#
# We write the FFN with minigpt's layers. The GPT-2 block around it is
# itself a forward/backward pair in the library, `block_forward` /
# `block_backward` (`minigpt/layers/block.py`), the very function
# `GPT.forward` loops over; its docstring holds the block's two-line formula:

# %%
def ffn_forward(x, P, h):
    """FFN(x) = GELU(x W1 + b1) W2 + b2 for block prefix h; x (..., C) -> (..., C)."""
    u, _ = linear_forward(x, P[h + "mlp.c_fc.weight"], P[h + "mlp.c_fc.bias"])  # (..., 4C)
    g, _ = gelu_forward(u)
    out, _ = linear_forward(g, P[h + "mlp.c_proj.weight"], P[h + "mlp.c_proj.bias"])  # (..., C)
    return out


def block_params(P, h):
    """The parameters of the block with prefix h ("h.1."), under their names inside the block."""
    return {k[len(h):]: v for k, v in P.items() if k.startswith(h)}


help(block_forward)  # minigpt.layers.block: the block the model itself runs


# %% [markdown]
# Running the trained model by hand, block by block with `block_forward`,
# must give the model's own logits, and the block's MLP branch must be our
# FFN:

# %%
model, dataset, ckpt = trained_model("tiny")
cfg, P, tok = model.config, model.params, model.tokenizer
line = "    def _min_indent(self, s):"
ids = tok.encode(line)[None, :]  # (1, T)
x, _ = embedding_forward(ids, P["wte.weight"], P["wpe.weight"])  # (1, T, C)
stream = [x]  # the residual stream entering each block, kept for later
for i in range(cfg.n_layer):
    x, _ = block_forward(x, block_params(P, f"h.{i}."), cfg.head_size)  # (1, T, C)
    stream.append(x)
x, _ = layernorm_forward(x, P["ln_f.weight"], P["ln_f.bias"])
logits_hand, _ = lm_head_forward(x, P["wte.weight"])  # (1, T, V)
logits_model, _ = model.forward(ids)
hand_vs_model = float(np.abs(logits_hand - logits_model).max())
print(f"logits: by hand, block by block, vs model.forward: max diff {hand_vs_model:.1e}")
# float32 throughout, summation orders differ: ~1e-6 on logits of size ~10
assert hand_vs_model < 1e-4

# position-wise: the FFN of the whole (T, C) array equals the FFN of each row alone
m_in, _ = layernorm_forward(stream[1], P["h.1.ln_2.weight"], P["h.1.ln_2.bias"])  # (1, T, C)
ffn_all = ffn_forward(m_in, P, "h.1.")
ffn_rows = np.stack([ffn_forward(m_in[:, t], P, "h.1.") for t in range(m_in.shape[1])], axis=1)
positionwise_diff = float(np.abs(ffn_all - ffn_rows).max())
print(f"FFN on all positions at once vs one position at a time: max diff {positionwise_diff:.1e}")
assert positionwise_diff < 1e-5

# %% [markdown]
# > **A formula to avoid.** Some tutorials write the feed-forward network as
# >
# > $$\text{FFN}(x) = \text{layernorm}(x + \text{Dense}(x) W^1 + \text{Dense}(x) W^2),$$
# >
# > with $\text{Dense}(x)$ described as flattening $x$. It is wrong in three ways.
# >
# > 1. **There is no nonlinearity.** $\text{Dense}(x)W^1 + \text{Dense}(x)W^2 =
# >    \text{Dense}(x)(W^1 + W^2)$: a dense layer followed by matrices is one
# >    matrix, so everything inside the layernorm is $x M$ for a single
# >    $C \times C$ matrix $M$ (plus a constant). However wide the hidden
# >    layer, it adds nothing that one matrix could not do, and a deep stack of
# >    such blocks would stay (up to the normalisation) linear. The real FFN has
# >    the GELU between its *two* matrices: that is where a transformer gets
# >    most of its capacity to compute.
# > 2. **The residual and the layernorm do not belong to the FFN.** They wrap
# >    every sublayer, and the formula mixes in one particular placement: the
# >    original Transformer's post-LN, $\text{LN}(x + \text{Sublayer}(x))$.
# >    GPT-2 puts the norm first, $x + \text{FFN}(\text{LN}(x))$ (below).
# > 3. **Flattening would mix positions.** The FFN is applied to each
# >    position's vector separately (checked above); flattening the $(T, C)$
# >    array into one vector would make it depend on the sequence length and
# >    let positions see each other, future ones included.
# >
# > The numbers below test point 1 with the superposition test: a map $f$ is
# > affine (linear plus a constant) exactly when
# > $f(a + b) - f(a) - f(b) + f(0) = 0$ for all $a, b$.

# %%
C = cfg.n_embd
P64 = {k: v.astype(np.float64) for k, v in P.items()}  # float64: rounding ~1e-16, clean zeros
# the loose version, with random weights of the same sizes as the real FFN
A, a_bias = rng.normal(0, C**-0.5, (C, 4 * C)), rng.normal(0, 0.1, 4 * C)  # Dense: C -> 4C
W1_loose, W2_loose = (rng.normal(0, (4 * C) ** -0.5, (4 * C, C)) for _ in range(2))


def loose_inner(x):
    """x + Dense(x) W1 + Dense(x) W2: what the loose formula puts inside its layernorm."""
    dense, _ = linear_forward(x, A, a_bias)  # (..., 4C), no activation
    return x + dense @ W1_loose + dense @ W2_loose


def superposition_error(f, a, b):
    """||f(a+b) - f(a) - f(b) + f(0)|| / (||f(a)|| + ||f(b)||): 0 if f is affine; > 0 proves it is not."""
    zero = np.zeros_like(a)
    err = f(a + b) - f(a) - f(b) + f(zero)
    return float(np.linalg.norm(err) / (np.linalg.norm(f(a)) + np.linalg.norm(f(b))))


# real inputs: the LayerNormed stream of the line above, at two sets of positions
xa, xb = m_in[0, :10].astype(np.float64), m_in[0, 10:20].astype(np.float64)  # (10, C) each
loose_nonlinearity = superposition_error(loose_inner, xa, xb)
ffn_nonlinearity = superposition_error(lambda z: ffn_forward(z, P64, "h.1."), xa, xb)
M = np.eye(C) + A @ (W1_loose + W2_loose)  # the one matrix the loose form collapses to
const = a_bias @ (W1_loose + W2_loose)
collapse_diff = float(np.abs(loose_inner(xa) - (xa @ M + const)).max())
print(f"superposition error, loose inner map x + Dense(x)W1 + Dense(x)W2: {loose_nonlinearity:.1e}")
print(f"superposition error, real FFN GELU(x W1 + b1) W2 + b2:          {ffn_nonlinearity:.2f}")
print(f"loose inner map vs the single matrix x M + c, M = I + A(W1 + W2): max diff {collapse_diff:.1e}")
assert loose_nonlinearity < 1e-12 and collapse_diff < 1e-12 and ffn_nonlinearity > 0.05

# %% [markdown]
# The loose map passes the test to rounding error ($10^{-16}$ in float64) and
# equals a single $C \times C$ matrix; the trained FFN fails it by a wide
# margin: it is genuinely nonlinear.

# %% [markdown]
# ## LayerNorm
#
# $$\text{LN}(x) = \gamma \odot \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta,
# \qquad \mu = \tfrac1C \textstyle\sum_c x_c,\quad \sigma^2 = \tfrac1C \sum_c (x_c - \mu)^2,$$
#
# over the $C$ features of one position ($\epsilon = 10^{-5}$). Every position's
# vector is recentred and rescaled to mean 0 and variance 1, then the learned
# per-feature gain $\gamma$ and bias $\beta$ set the scale the next layer
# wants. Whatever the size of the residual stream, the sublayer sees inputs
# of a fixed size. We check the normalisation on the trained model's stream
# (with $\gamma = 1, \beta = 0$):

# %%
xs = stream[-1][0]  # (T, C) the stream leaving the last block
xhat, _ = layernorm_forward(xs, np.ones(C, xs.dtype), np.zeros(C, xs.dtype))
ln_mean_err = float(np.abs(xhat.mean(-1)).max())
ln_var_err = float(np.abs(xhat.var(-1) - 1).max())
print(f"stream rms per position: {np.sqrt((xs**2).mean(-1)).min():.2f} .. {np.sqrt((xs**2).mean(-1)).max():.2f}")
print(f"after LN: max |mean| = {ln_mean_err:.1e}, max |var - 1| = {ln_var_err:.1e}")
assert ln_mean_err < 1e-5 and ln_var_err < 1e-3

# %% [markdown]
# ## Residual connections, pre-LN and post-LN
#
# A residual connection adds a sublayer's output to its input:
# $x_{l+1} = x_l + F_l(x_l)$. Its derivative is
# $\partial x_{l+1} / \partial x_l = I + \partial F_l / \partial x_l$, so through
# any number of blocks there is an identity path: the gradient of the loss
# reaches every layer directly, not only through a product of many
# Jacobians. This is why deep stacks train at all.
#
# Where the LayerNorm goes matters:
#
# | | one sublayer | the residual path |
# |---|---|---|
# | **post-LN** (Transformer, 2017) | $x \leftarrow \text{LN}(x + F(x))$ | passes through every LN |
# | **pre-LN** (GPT-2) | $x \leftarrow x + F(\text{LN}(x))$ | untouched from embedding to the final $\text{LN}_f$ |
#
# Pre-LN keeps the identity path clean, at a price: nothing normalises the
# stream itself, so it can grow with depth (each block adds to it), which is
# why GPT-2 adds a final LayerNorm and initialises the two projections that
# write into the stream with a smaller standard deviation,
# $0.02 / \sqrt{2L}$ instead of $0.02$ (`minigpt.model.init_params`).
# Post-LN renormalises the stream after every sublayer; it is known to need
# a careful learning-rate warm-up to train deep models.
#
# We run both arrangements with the same GPT-2 initialisation: pre-LN is the
# library's `block_forward`/`block_backward`; post-LN is written out below
# from the same layer pairs (only the LayerNorms move). We measure, at
# initialisation (random tokens and targets), the size of the stream entering
# each block and the gradient norm of each block's parameters.

# %%
def post_ln_block_forward(x, p, n_head):
    """The post-LN block: x = LN_1(x + Attn(x)), then x = LN_2(x + FFN(x)).
    p: the block's parameters (names inside the block); returns (x, cache)."""
    c = {}
    a, c["attn.c_attn"] = linear_forward(x, p["attn.c_attn.weight"], p["attn.c_attn.bias"])  # (B, T, 3C)
    a, c["attn"] = multihead_attention_forward(a, n_head)
    a, c["attn.c_proj"] = linear_forward(a, p["attn.c_proj.weight"], p["attn.c_proj.bias"])
    x, c["ln_1"] = layernorm_forward(x + a, p["ln_1.weight"], p["ln_1.bias"])  # (B, T, C)
    m, c["mlp.c_fc"] = linear_forward(x, p["mlp.c_fc.weight"], p["mlp.c_fc.bias"])  # (B, T, 4C)
    m, c["mlp.gelu"] = gelu_forward(m)
    m, c["mlp.c_proj"] = linear_forward(m, p["mlp.c_proj.weight"], p["mlp.c_proj.bias"])
    x, c["ln_2"] = layernorm_forward(x + m, p["ln_2.weight"], p["ln_2.bias"])
    return x, c


def post_ln_block_backward(dx, c):
    """Reverse of post_ln_block_forward: returns (dx, grads of the block's parameters)."""
    g = {}
    # x = LN_2(x + m): through the LayerNorm first, then both paths of the sum
    dx, g["ln_2.weight"], g["ln_2.bias"] = layernorm_backward(dx, c["ln_2"])
    dm, g["mlp.c_proj.weight"], g["mlp.c_proj.bias"] = linear_backward(dx, c["mlp.c_proj"])
    dm = gelu_backward(dm, c["mlp.gelu"])
    dm, g["mlp.c_fc.weight"], g["mlp.c_fc.bias"] = linear_backward(dm, c["mlp.c_fc"])
    dx = dx + dm
    # x = LN_1(x + a)
    dx, g["ln_1.weight"], g["ln_1.bias"] = layernorm_backward(dx, c["ln_1"])
    da, g["attn.c_proj.weight"], g["attn.c_proj.bias"] = linear_backward(dx, c["attn.c_proj"])
    da = multihead_attention_backward(da, c["attn"])
    da, g["attn.c_attn.weight"], g["attn.c_attn.bias"] = linear_backward(da, c["attn.c_attn"])
    return dx + da, g


def stack_at_init(P, idx, targets, n_layer, n_head, arrangement):
    """Loss, rms of the stream entering each block, gradient norm of each block."""
    x, _ = embedding_forward(idx, P["wte.weight"], P["wpe.weight"])  # (B, T, C)
    rms, caches = [], []
    for i in range(n_layer):
        rms.append(float(np.sqrt((x**2).mean())))
        p = block_params(P, f"h.{i}.")
        if arrangement == "pre":  # GPT-2's block, from the library
            x, c = block_forward(x, p, x.shape[-1] // n_head)
        else:
            x, c = post_ln_block_forward(x, p, n_head)
        caches.append(c)
    if arrangement == "pre":  # GPT-2's final LN; post-LN's stream is normalised already
        x, c_f = layernorm_forward(x, P["ln_f.weight"], P["ln_f.bias"])
    logits, c_head = lm_head_forward(x, P["wte.weight"])  # (B, T, V)
    loss, c_loss = cross_entropy_forward(logits, targets)
    dx, _ = lm_head_backward(cross_entropy_backward(1.0, c_loss), c_head)
    if arrangement == "pre":
        dx, _, _ = layernorm_backward(dx, c_f)
    grad_norm = [0.0] * n_layer
    for i in reversed(range(n_layer)):
        if arrangement == "pre":
            dx, g = block_backward(dx, caches[i])
        else:
            dx, g = post_ln_block_backward(dx, caches[i])
        grad_norm[i] = float(np.sqrt(sum((v**2).sum() for v in g.values())))
    return float(loss), np.array(rms), np.array(grad_norm)


# a deep, narrow stack in float64; GPT-2's init from minigpt.model.init_params
L_deep = 6 if FAST else 24
deep_cfg = GPTConfig(vocab_size=64, block_size=32, n_layer=L_deep, n_head=4, n_embd=64, dtype="float64")
B_, T_ = (2, 16) if FAST else (4, 32)
idx = rng.integers(0, deep_cfg.vocab_size, (B_, T_))
tgt = rng.integers(0, deep_cfg.vocab_size, (B_, T_))
P_init = init_params(deep_cfg, seed=0)
# the same init without GPT-2's 1/sqrt(2L) on the projections into the stream
P_unscaled = dict(P_init)
for name in P_unscaled:
    if name.endswith("c_proj.weight"):
        P_unscaled[name] = P_init[name] * math.sqrt(2 * L_deep)

runs = {
    "pre-LN, GPT-2 init": stack_at_init(P_init, idx, tgt, L_deep, 4, "pre"),
    "pre-LN, projections not scaled down": stack_at_init(P_unscaled, idx, tgt, L_deep, 4, "pre"),
    "post-LN, GPT-2 init": stack_at_init(P_init, idx, tgt, L_deep, 4, "post"),
}
for name, (loss, rms, gn) in runs.items():
    print(f"{name:<36} loss {loss:.3f}  (log V = {math.log(deep_cfg.vocab_size):.3f})")
    print(f"   stream rms, blocks 0..{L_deep - 1}: {np.array2string(rms, precision=3, max_line_width=200)}")
    print(f"   grad norm,  blocks 0..{L_deep - 1}: {np.array2string(gn, precision=3, max_line_width=200)}")

pre_growth = float(runs["pre-LN, GPT-2 init"][1][-1] / runs["pre-LN, GPT-2 init"][1][0])
unscaled_growth = float(runs["pre-LN, projections not scaled down"][1][-1]
                        / runs["pre-LN, projections not scaled down"][1][0])
post_rms = runs["post-LN, GPT-2 init"][1][1:]  # after the first block: the output of an LN
pre_grad_spread = float(runs["pre-LN, GPT-2 init"][2].max() / runs["pre-LN, GPT-2 init"][2].min())
post_grad_ratio = float(runs["pre-LN, GPT-2 init"][2][1:].mean() / runs["post-LN, GPT-2 init"][2][1:].mean())
print(f"stream growth over {L_deep} blocks: pre-LN {pre_growth:.2f}x with GPT-2's init, "
      f"{unscaled_growth:.2f}x without the scaling; post-LN rms stays {post_rms.mean():.4f}")
print(f"pre-LN grad norms vary by {pre_grad_spread:.2f}x across blocks; blocks 1.. get "
      f"{post_grad_ratio:.0f}x more gradient in pre-LN than in post-LN")
assert pre_growth < unscaled_growth and np.allclose(post_rms, 1.0, atol=1e-3)
assert pre_grad_spread < 3 and post_grad_ratio > 3

# %%
fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
for (name, (_, rms, gn)), style in zip(runs.items(), ("C0o-", "C1s--", "C3^-")):
    ax[0].semilogy(range(L_deep), rms, style, ms=4, label=name)
    if "not scaled" not in name:
        ax[1].semilogy(range(L_deep), gn, style, ms=4, label=name)
ax[0].set(xlabel="block", ylabel="rms of the residual stream entering it",
          title="The residual stream at initialisation")
ax[1].set(xlabel="block", ylabel="gradient norm of the block's parameters",
          title="Gradient reaching each block at initialisation")
for a in ax:
    a.legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "03_block_ln")

# %% [markdown]
# What the figure shows, for a deep stack at GPT-2's initialisation: 24
# blocks in a full run, 6 in fast mode, where the same effects come out
# smaller (all three start at a loss near $\log V$, as an untrained model
# should):
#
# * **Pre-LN** lets the stream grow with depth: by about 20% over the stack
#   with GPT-2's scaled projections (the scale-down grows with the depth, so
#   6 blocks and 24 grow alike), and without them about five-fold over 24
#   blocks (two- to three-fold over 6). The sublayers do not mind, since
#   each reads a LayerNormed copy, but the final $\text{LN}_f$ divides the
#   gradient it sends down by the size of the stream it reads (over 24
#   blocks about four times larger without the scaling, over 6 about
#   twice), so the top blocks get less gradient than with GPT-2's init, and
#   the gradient is no longer even: over 24 blocks the upper ones get
#   several times less than the lower ones (printed above). With GPT-2's
#   init every block receives a gradient of similar size: the identity path
#   delivers the loss's gradient to each of them directly.
# * **Post-LN** pins the stream at rms 1 after every block. The branches,
#   initialised small, are then a small perturbation of a unit-size stream,
#   and every block past the first gets a gradient about twenty times
#   smaller than in pre-LN, at either depth (the first block's LayerNorm
#   sees the tiny embedding and is the exception). Training has to grow the branches out
#   of this state through a chain of LayerNorms. It is a known result
#   (Xiong et al., 2020, *On Layer Normalization in the Transformer
#   Architecture*) that post-LN stacks need a learning-rate warm-up to train
#   stably while pre-LN ones train without it, which is one reason GPT-2,
#   and nearly every GPT since, uses pre-LN.

# %% [markdown]
# ## GELU versus ReLU
#
# $$\text{ReLU}(x) = \max(0, x), \qquad \text{GELU}(x) = x\,\Phi(x)
# \approx \tfrac12 x \left(1 + \tanh\!\left[\sqrt{2/\pi}\,(x + 0.044715\,x^3)\right]\right),$$
#
# where $\Phi$ is the standard normal CDF; GPT-2 uses the tanh approximation
# (`minigpt.layers.gelu_forward`). GELU weights its input by the probability
# that a standard normal variable is smaller: it is smooth, has a nonzero
# gradient for negative inputs (so a unit pushed negative can recover), and
# dips slightly below zero around $x \approx -0.75$.

# %%
xg = np.linspace(-4, 4, 801)
gelu_y, gelu_cache = gelu_forward(xg)
gelu_dy = gelu_backward(np.ones_like(xg), gelu_cache)  # d GELU / dx
exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in xg])  # x Phi(x)
gelu_tanh_error = float(np.abs(gelu_y - exact).max())
gelu_min = float(gelu_y.min())
print(f"tanh approximation vs x Phi(x) on [-4, 4]: max |diff| = {gelu_tanh_error:.1e}")
print(f"GELU minimum {gelu_min:.4f} at x = {xg[gelu_y.argmin()]:.2f}")
assert gelu_tanh_error < 1e-3 and -0.18 < gelu_min < -0.16

fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
ax[0].plot(xg, np.maximum(xg, 0), "C1", label="ReLU")
ax[0].plot(xg, gelu_y, "C0", label="GELU (tanh approx., GPT-2)")
ax[0].plot(xg, exact, "k:", label=r"$x\,\Phi(x)$ (exact)")
ax[0].set(xlabel="x", ylabel="activation", title="GELU vs ReLU")
ax[1].plot(xg, (xg > 0).astype(float), "C1", label="ReLU'")
ax[1].plot(xg, gelu_dy, "C0", label="GELU' (gelu_backward)")
ax[1].set(xlabel="x", ylabel="derivative", title="Their derivatives")
for a in ax:
    a.axhline(0, color="gray", lw=0.5)
    a.axvline(0, color="gray", lw=0.5)
    a.legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "03_block_gelu")

# %% [markdown]
# ## Counting every parameter
#
# With vocabulary $V$, context $T$, $L$ blocks and width $C$:
#
# | part | parameters |
# |---|---|
# | token embedding `wte` (also the output head: tied) | $VC$ |
# | position embedding `wpe` | $TC$ |
# | per block: `ln_1`, `ln_2` (gain and bias) | $4C$ |
# | per block: attention `c_attn` + `c_proj` (chapter 2) | $4C^2 + 4C$ |
# | per block: FFN `c_fc` ($C \cdot 4C + 4C$) + `c_proj` ($4C \cdot C + C$) | $8C^2 + 5C$ |
# | final `ln_f` | $2C$ |
#
# $$P = VC + TC + L\,(12C^2 + 13C) + 2C .$$
#
# Two thirds of each block is the FFN. We check the formula against
# `model.params` for the presets (only the tiny one in fast mode) and some
# odd shapes, and, without
# allocating half a gigabyte, against the shapes of GPT-2 small itself
# (`minigpt.model.param_shapes`).

# %%
def gpt_params_formula(V, T, L, C):
    return V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C


shapes = [dict(PRESETS[name]["model"], vocab_size=tok.vocab_size) for name in ("tiny", "small", "base")]
shapes += [dict(vocab_size=7, block_size=5, n_layer=1, n_head=1, n_embd=4),
           dict(vocab_size=300, block_size=33, n_layer=5, n_head=3, n_embd=48)]
if FAST:
    shapes = shapes[:1] + shapes[3:]
param_count_checks = []
for s in shapes:
    m = GPT(GPTConfig(**s))
    counted = sum(p.size for p in m.params.values())
    formula = gpt_params_formula(s["vocab_size"], s["block_size"], s["n_layer"], s["n_embd"])
    param_count_checks.append((s, formula, counted))
gpt2 = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
gpt2_counted = sum(math.prod(shape) for shape in param_shapes(gpt2).values())
gpt2_formula = gpt_params_formula(50257, 1024, 12, 768)
param_count_checks.append((gpt2.to_dict(), gpt2_formula, gpt2_counted))

print(f"{'V':>6} {'T':>5} {'L':>3} {'C':>4} {'formula':>12} {'counted':>12}")
for s, f, c in param_count_checks:
    print(f"{s['vocab_size']:6d} {s['block_size']:5d} {s['n_layer']:3d} {s['n_embd']:4d} {f:12,d} {c:12,d}")
print(f"the trained tiny model: {model.num_params():,} parameters, formula "
      f"{gpt_params_formula(cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_embd):,}")
# share of the embeddings (VC + TC) in the total, for GPT-2 small and the tiny model
embedding_share = {"GPT-2 small": (50257 + 1024) * 768 / gpt2_formula,
                   "tiny": (cfg.vocab_size + cfg.block_size) * cfg.n_embd / model.num_params()}
print("embeddings' share of the parameters: "
      + ", ".join(f"{name} {share:.1%}" for name, share in embedding_share.items()))
assert all(f == c for _, f, c in param_count_checks) and gpt2_counted == 124_439_808
assert model.num_params() == gpt_params_formula(cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_embd)

# %% [markdown]
# GPT-2 small has 124,439,808 parameters, the "124M" of its name, and almost
# a third of them are the embeddings, because its vocabulary of 50,257 BPE
# tokens is large. The tiny model's 96 characters make the embeddings a much
# smaller share (printed above). For a fixed $V$ the share shrinks as the
# model widens, since $VC$ grows with $C$ but the blocks grow with $C^2$.
#
# ## Exercises
#
# 1. Replace `gelu_forward` by ReLU (`np.maximum(u, 0)`) in `ffn_forward` and
#    evaluate the trained model's validation loss with the hand-run blocks
#    (`dataset.iter_eval_batches`, `cross_entropy_forward`). How much worse is
#    it, given that it was trained with GELU?
# 2. Use `gpt_params_formula` for GPT-2 medium ($L = 24$, $C = 1024$, same $V$
#    and $T$) and check it against `param_shapes`. What fraction of the
#    parameters is in the blocks, and what fraction in `wte`?
# 3. With `stack_at_init`, measure `post_grad_ratio` for $L$ = 2, 4, 8, 16.
#    Then set the embedding to unit scale (multiply `wte` and `wpe` by 50) and
#    measure again: how much of the post-LN gap came from the small embedding?
