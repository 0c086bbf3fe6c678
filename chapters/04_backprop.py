# %% [markdown]
# # Chapter 4: Backpropagation, written by hand and checked
#
# minigpt has no autograd engine. Every operation is a pair of functions,
# `out, cache = op_forward(...)` and `grads = op_backward(dout, cache)`, and
# the model's `backward()` calls the backward functions in the reverse order
# of the forward. This chapter
#
# 1. derives the backward pass of the ops a GPT needs: LayerNorm, softmax,
#    attention, GELU and cross-entropy (where the famous "$p - y$" comes from);
# 2. explains the yardstick that keeps those derivations honest, the
#    centered finite difference, and why its error is $O(h^2)$ until rounding
#    takes over (a figure of the V shape, float64 against float32);
# 3. checks every op pair in `minigpt.layers` with `minigpt.gradcheck.check_op`
#    (a figure of the relative errors);
# 4. walks through the model's backward: the caches of a forward in order,
#    the backward consuming them in reverse, and a finite-difference check of
#    the whole model's gradient.
#
# Notation: for a scalar loss $L$ and a tensor $x$, $\bar x = \partial L / \partial x$
# has the shape of $x$. A backward function receives $\bar{\text{out}}$ and returns
# $\bar x$ for each input: a vector-Jacobian product, never the Jacobian itself.
#
# *A fast run (`MINIGPT_FAST=1`, for tests and a quick look) tries 11 step
# sizes instead of 31 and checks 12 entries of each parameter tensor instead
# of 48; the derivations and checks are the same.*

# %%
import matplotlib.pyplot as plt
import numpy as np

from minigpt.config import GPTConfig
from minigpt.gradcheck import check_op, numerical_gradient, relative_error
import minigpt.kernels  # noqa: F401  (registers the compiled attention backends)
from minigpt.layers import (
    cross_entropy_backward,
    cross_entropy_forward,
    dropout_backward,
    dropout_forward,
    embedding_backward,
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
    residual_backward,
    residual_forward,
    softmax,
)
from minigpt.layers.block import block_backward, block_forward
from minigpt.layers.head_gate import head_gate_backward, head_gate_forward
from minigpt.model import GPT, param_shapes
from minigpt.ops import BACKENDS, kernel_pairs, op_table
from minigpt.pretrained import fast_mode
from minigpt.tour import save_figure

FAST = fast_mode()
rng = np.random.default_rng(0)

# %% [markdown]
# ## The gradient check: centered differences
#
# For a scalar function $f$ and one input entry $x_i$, Taylor's theorem gives
#
# $$f(x \pm h e_i) = f(x) \pm h f' + \tfrac{h^2}{2} f'' \pm \tfrac{h^3}{6} f''' + O(h^4),$$
#
# so in the **centered** difference the even terms cancel:
#
# $$\frac{f(x + h e_i) - f(x - h e_i)}{2h} = f' + \tfrac{h^2}{6} f''' + O(h^4).$$
#
# The truncation error is $O(h^2)$ (the one-sided $(f(x+h)-f(x))/h$ only
# manages $O(h)$). Shrinking $h$ does not help forever: $f$ itself is computed
# with a relative rounding error of about $\varepsilon$ (machine epsilon,
# $2.2 \times 10^{-16}$ in float64, $1.2 \times 10^{-7}$ in float32), and dividing
# a difference of two rounded numbers by $2h$ gives an error of about
# $\varepsilon |f| / h$. The total,
#
# $$\text{error}(h) \approx \tfrac{|f'''|}{6} h^2 + \frac{\varepsilon |f|}{h},$$
#
# is smallest near $h \sim \varepsilon^{1/3}$: about $6 \times 10^{-6}$ in float64
# (error $\sim 10^{-11}$) but $5 \times 10^{-3}$ in float32 (error $\sim 10^{-5}$).
# That is why gradient checks run in float64.
#
# We compare an analytic gradient $g$ with the estimate $n$ by the relative
# error of the whole tensor, $\|g - n\| / (\|g\| + \|n\|)$, which is scale free
# and does not blow up where a true derivative happens to be zero.
#
# The sweep below checks GELU (an elementwise op, so every entry's derivative
# is a plain scalar derivative) at step sizes from $10^{-10}$ to $1$, in both dtypes.

# %%
steps_h = np.logspace(-10, 0, 11 if FAST else 31)
x64 = rng.standard_normal((4, 8))
sweep = {}
for dtype in ("float64", "float32"):
    x = x64.astype(dtype)
    sweep[dtype] = np.array([check_op(gelu_forward, gelu_backward, [x], h=float(h))[0] for h in steps_h])
best_h = {d: float(steps_h[np.argmin(e)]) for d, e in sweep.items()}
best_err = {d: float(np.min(e)) for d, e in sweep.items()}
for d in sweep:
    eps = np.finfo(d).eps
    print(f"{d}: best h = {best_h[d]:.1e} (eps^(1/3) = {eps ** (1 / 3):.1e}), "
          f"relative error there = {best_err[d]:.1e}")
# The minimum sits near eps^(1/3) in each dtype, and float32's best is about
# (eps32 / eps64)^(2/3) ~ 10^5.8 times worse than float64's.
assert best_err["float64"] < 1e-9 < best_err["float32"]
assert 1e-8 < best_h["float64"] < 1e-3 and 1e-4 < best_h["float32"] < 1e-1

# %%
fig, ax = plt.subplots(figsize=(6.4, 4))
for d, color in (("float64", "C0"), ("float32", "C3")):
    ax.loglog(steps_h, sweep[d], "o-", color=color, ms=3, label=f"{d}: measured")
    eps = np.finfo(d).eps
    ax.axvline(eps ** (1 / 3), color=color, ls=":", lw=1)
# the two slopes of the V: truncation ~ h^2 (right arm), rounding ~ eps / h (left arm)
hh = np.logspace(-3, 0, 10)
ax.loglog(hh, 0.3 * hh**2, "k--", lw=1, label=r"slope 2: truncation $\propto h^2$")
hl = np.logspace(-10, -6, 10)
ax.loglog(hl, 1e-16 / hl, "k-.", lw=1, label=r"slope -1: rounding $\propto \varepsilon/h$")
ax.set_ylim(1e-13, 2)
ax.set_xlabel("step size h")
ax.set_ylabel("relative error of the gradient")
ax.set_title("Centered difference on GELU: the V of truncation and rounding\n"
             r"(dotted lines: $h = \varepsilon^{1/3}$ of each dtype)")
ax.legend(fontsize=8, loc="lower left")
save_figure(fig, "04_backprop_step_size")

# %% [markdown]
# ## Deriving the backward of each op
#
# ### Linear: $y = xW + b$
# $\bar x = \bar y W^\top$, $\bar W = x^\top \bar y$ (summed over every leading axis),
# $\bar b = \sum \bar y$. Every other derivation reuses this pattern.
#
# ### GELU (tanh approximation)
# $\text{gelu}(x) = \tfrac12 x (1 + t)$, $t = \tanh u$, $u = \sqrt{2/\pi}\,(x + 0.044715 x^3)$.
# Product rule and $\tanh' = 1 - \tanh^2$:
#
# $$\text{gelu}'(x) = \tfrac12 (1 + t) + \tfrac12 x (1 - t^2)\sqrt{2/\pi}\,(1 + 3 \cdot 0.044715\, x^2),
# \qquad \bar x = \bar y \cdot \text{gelu}'(x).$$
#
# ### Softmax: $p = \text{softmax}(z)$, $p_i = e^{z_i} / \sum_j e^{z_j}$
# The Jacobian is $\partial p_i / \partial z_j = p_i(\delta_{ij} - p_j)$, i.e.
# $J = \text{diag}(p) - p p^\top$. Multiplying by $\bar p$ without building $J$:
#
# $$\bar z = J^\top \bar p = p \odot \left(\bar p - \langle \bar p, p \rangle\right).$$
#
# minigpt uses this line inside the attention backward
# (`ds = p * (dp - (dp * p).sum(-1))`); here it is on its own, checked first
# against the full Jacobian and then by finite differences.

# %%
def softmax_forward(z):
    """p = softmax(z) over the last axis; the cache is p itself."""
    p = softmax(z)
    return p, p


def softmax_backward(dp, p):
    """z -> p = softmax(z):  dz = p * (dp - sum_j(dp_j p_j))."""
    return p * (dp - (dp * p).sum(axis=-1, keepdims=True))


z = rng.standard_normal(5)
p = softmax(z)
J_formula = np.diag(p) - np.outer(p, p)  # (5, 5): dp_i / dz_j
J_numeric = np.stack([numerical_gradient(lambda i=i: float(softmax(z)[i]), z) for i in range(5)])
softmax_jacobian_error = relative_error(J_formula, J_numeric)
print("softmax Jacobian diag(p) - p p^T:\n", np.round(J_formula, 4))
print(f"relative error against finite differences: {softmax_jacobian_error:.1e}")
# Each row of J sums to zero: adding a constant to every logit leaves p unchanged.
print("row sums:", np.round(J_formula.sum(axis=1), 15))
assert softmax_jacobian_error < 1e-8

# %% [markdown]
# ### LayerNorm: $\hat x = (x - \mu)\, r$, $r = 1/\sqrt{\sigma^2 + \epsilon}$, $y = \gamma \hat x + \beta$
# Over the $C$ features of one position: $\bar\gamma = \sum \bar y \hat x$ and
# $\bar\beta = \sum \bar y$ (summed over positions), $\bar{\hat x} = \bar y \gamma$.
# $x$ reaches $\hat x$ three ways: directly, through $\mu$ and through $\sigma^2$.
# With $\partial \mu / \partial x_j = 1/C$, $\partial \sigma^2 / \partial x_j = 2(x_j - \mu)/C$
# (its part through $\mu$ vanishes because $\sum_i (x_i - \mu) = 0$) and
# $\partial r / \partial \sigma^2 = -r^3/2$, so that
# $\partial \hat x_i / \partial x_j = r\,(\delta_{ij} - 1/C - \hat x_i \hat x_j / C)$, the three
# terms collapse, exactly ($\epsilon$ included), to
#
# $$\bar x = r \left( \bar{\hat x} - \text{mean}(\bar{\hat x}) - \hat x \,\text{mean}(\bar{\hat x} \odot \hat x) \right).$$
#
# The two subtracted means are the gradient projected off the two directions
# LayerNorm removes: a constant shift of $x$ and a rescaling of $x$.
#
# ### Attention: $S = QK^\top/\sqrt{d_k} + M$, $P = \text{softmax}(S)$, $O = PV$
# Walking back up: $\bar V = P^\top \bar O$, $\bar P = \bar O V^\top$, then the softmax
# rule row by row, $\bar S = P \odot (\bar P - \text{rowsum}(\bar P \odot P))$, and finally
# $\bar Q = \bar S K / \sqrt{d_k}$, $\bar K = \bar S^\top Q / \sqrt{d_k}$. Masked entries have
# $P = 0$, so the mask needs no backward of its own.
#
# ### Cross-entropy: $L = \text{logsumexp}(z) - z_y$
# $\partial\, \text{logsumexp}(z) / \partial z_j = \text{softmax}(z)_j$ and $\partial z_y / \partial z_j = [j = y]$, so
#
# $$\bar z = p - \text{onehot}(y),$$
#
# divided by $N$ for the mean over $N$ positions. Numerically, for one position:

# %%
V = 6
logits = rng.standard_normal((1, V))
target = np.array([2])
loss, ce_cache = cross_entropy_forward(logits, target)
dlogits = cross_entropy_backward(1.0, ce_cache)  # (1, V)
p_minus_y = softmax(logits) - np.eye(V)[target]
dlogits_numeric = numerical_gradient(lambda: float(cross_entropy_forward(logits, target)[0]), logits)
print(f"loss = {loss:.4f},  target = {target[0]}")
print("  j   softmax(z)_j   p - y      backward   finite diff")
for j in range(V):
    print(f"  {j}   {softmax(logits)[0, j]:.6f}    {p_minus_y[0, j]:+.6f}  "
          f"{dlogits[0, j]:+.6f}  {dlogits_numeric[0, j]:+.6f}")
ce_p_minus_y_error = float(np.abs(dlogits - p_minus_y).max())
ce_numeric_error = relative_error(dlogits, dlogits_numeric)
print(f"max |backward - (p - y)| = {ce_p_minus_y_error:.1e}, "
      f"relative error vs finite differences = {ce_numeric_error:.1e}")
# The gradient sums to zero (p sums to 1, y sums to 1): the loss ignores a
# constant added to all logits. Only the target's entry is negative.
assert ce_p_minus_y_error < 1e-15 and ce_numeric_error < 1e-8
assert abs(dlogits.sum()) < 1e-12 and (dlogits[0] < 0).sum() == 1

# %% [markdown]
# ## Checking every op pair
#
# `check_op(forward, backward, inputs)` picks a random $w$ shaped like the
# output, takes $L = \sum \text{out} \odot w$ (so $\bar{\text{out}} = w$), runs the
# backward, and compares each input's gradient with centered differences
# ($h = 10^{-5}$, float64). Inputs that get no gradient (token ids) report
# `None`. A correct backward lands near $10^{-10}$; a single wrong term (a
# missing mean in LayerNorm, a missing transpose) gives errors near $1$.
# Attention is checked for every registered kernel (the NumPy reference and
# the compiled ones): each must have a correct backward of its own.

# %%
B, T, C, H, Vv = 2, 5, 8, 2, 7
D = C // H


def randn(*shape):
    return rng.standard_normal(shape)


ids = rng.integers(0, Vv, size=(B, T))
OPS = {
    # name: (forward, backward, inputs, names of the inputs)
    "linear": (linear_forward, linear_backward, [randn(B, T, C), randn(C, 3 * C), randn(3 * C)], ["x", "W", "b"]),
    "layernorm": (layernorm_forward, layernorm_backward, [randn(B, T, C), 1 + 0.1 * randn(C), randn(C)],
                  ["x", "gamma", "beta"]),
    "gelu": (gelu_forward, gelu_backward, [2 * randn(B, T, C)], ["x"]),
    "softmax": (softmax_forward, softmax_backward, [randn(B, T, C)], ["z"]),
    "multihead attn": (lambda qkv: multihead_attention_forward(qkv, H), multihead_attention_backward,
                       [randn(B, T, 3 * C)], ["qkv"]),
    "cross-entropy": (cross_entropy_forward, cross_entropy_backward, [randn(B, T, Vv), ids], ["logits", "y"]),
    # the embedding's backward returns (dwte, dwpe); the ids get no gradient
    "embedding": (embedding_forward, lambda d, c: (None, *embedding_backward(d, c)),
                  [ids, randn(Vv, C), randn(T + 3, C)], ["ids", "wte", "wpe"]),
    "lm head": (lm_head_forward, lm_head_backward, [randn(B, T, C), randn(Vv, C)], ["x", "wte"]),
    "residual": (residual_forward, residual_backward, [randn(B, T, C), randn(B, T, C)], ["x", "branch"]),
    # a fresh generator with a fixed seed on each call: the same mask every time
    "dropout": (lambda x: dropout_forward(x, 0.3, np.random.default_rng(1)), dropout_backward,
                [randn(B, T, C)], ["x"]),
    "head gate": (head_gate_forward, head_gate_backward, [randn(B, T, C), randn(H)], ["y", "g"]),
}
# The whole transformer block is a pair too (minigpt.layers.block), built from
# the ones above; its input gradient is checked here, its parameters' below
# through the model.
one_block = GPTConfig(vocab_size=Vv, block_size=T, n_layer=1, n_head=H, n_embd=C)
block_p = {k[len("h.0."):]: randn(*s) for k, s in param_shapes(one_block).items() if k.startswith("h.0.")}
OPS["block"] = (lambda x: block_forward(x, block_p, D), lambda d, c: block_backward(d, c)[0],
                [randn(B, T, C)], ["x"])
qkv_heads = [randn(B, H, T, D) for _ in range(3)]
# every backend's attention, and every compiled kernel's backward (minigpt.ops)
for backend in BACKENDS:
    attn_fwd, attn_bwd = op_table(backend)["attention"]
    OPS[f"attention [{backend}]"] = (attn_fwd, attn_bwd, qkv_heads, ["q", "k", "v"])
for backend, op, (kernel_fwd, kernel_bwd) in kernel_pairs():
    if op != "attention":
        name, (_, _, inputs, input_names) = f"{op} [{backend}]", OPS[op]
        OPS[name] = (kernel_fwd, kernel_bwd, inputs, input_names)
op_errors = {}
for name, (fwd, bwd, inputs, input_names) in OPS.items():
    errs = check_op(fwd, bwd, inputs)
    for input_name, e in zip(input_names, errs):
        if e is not None:
            op_errors[f"{name}: d{input_name}"] = e
    shown = ", ".join(f"d{n} {e:.1e}" for n, e in zip(input_names, errs) if e is not None)
    print(f"{name:<20} {shown}")
max_op_error = max(op_errors.values())
print(f"largest relative error over {len(op_errors)} gradients: {max_op_error:.1e}")
assert max_op_error < 1e-7

# %% [markdown]
# A check must also be able to fail. Drop the $-\text{mean}(\bar{\hat x})$ term
# from the LayerNorm backward (a classic slip) and the checker says so at once:

# %%
def layernorm_backward_wrong(dout, cache):
    xhat, rstd, gamma = cache
    dxhat = dout * gamma
    dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))  # mean(dxhat) forgotten
    return dx, None, None


broken_error = check_op(layernorm_forward, layernorm_backward_wrong, OPS["layernorm"][2])[0]
print(f"LayerNorm dx with a missing term: relative error {broken_error:.2f}")
assert broken_error > 1e-2

# %%
fig, ax = plt.subplots(figsize=(6.4, 5.2))
labels = list(op_errors)
values = np.maximum(list(op_errors.values()), 1e-17)  # exact zeros (residual) drawn at the floor
ax.barh(range(len(labels)), values, color="C0")
ax.barh([len(labels)], [broken_error], color="C3")
ax.set_yticks(range(len(labels) + 1), labels + ["layernorm dx, one term missing"], fontsize=8)
ax.invert_yaxis()
ax.set_xscale("log")
ax.set_xlim(1e-17, 10)
ax.axvline(1e-7, color="k", ls="--", lw=1)
ax.text(1.3e-7, len(labels) - 0.5, "pass / fail\n1e-7", fontsize=8, va="bottom")
ax.set_xlabel(r"relative error $\|g - n\| / (\|g\| + \|n\|)$, float64, h = 1e-5")
ax.set_title("Every hand-written backward in minigpt (layers and kernels)\nagrees with centered differences")
save_figure(fig, "04_backprop")

# %% [markdown]
# ## The model's backward walks the caches in reverse
#
# `GPT.forward(idx, targets)` stores each op's cache under a name, in the order
# the ops run. `GPT.backward()` starts from $\bar L = 1$ and calls the backward
# ops in exactly the reverse order, threading the gradient of the residual
# stream $\bar x$ through the blocks. Two places need care:
#
# * **residual connections**: $x \leftarrow x + f(x)$ gives $\bar x \leftarrow \bar x + \bar x_{\text{via } f}$,
#   so the backward adds the branch's gradient to the one that skipped it;
# * **tied weights**: `wte` is used twice (embedding lookup at the bottom, LM
#   head at the top), so its gradient is the sum of both uses.
#
# A tiny float64 model, with its parameters moved to a random point (the
# GPT-2 initialisation makes attention almost uniform, which would hide
# mistakes in the query/key path):

# %%
cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, dtype="float64")
model = GPT(cfg, seed=0)
for name, p in model.params.items():
    p += 0.3 * rng.standard_normal(p.shape)
idx = rng.integers(0, cfg.vocab_size, size=(2, cfg.block_size))
targets = rng.integers(0, cfg.vocab_size, size=(2, cfg.block_size))
_, loss = model.forward(idx, targets)
# The forward's caches, in the order it stored them (each block keeps its
# own, named after the parameters they belong to).
cache_order = model.cache_names()
print(f"attention backend: {model.backend}")
print(f"loss = {loss:.4f}; forward stored {len(cache_order)} caches, in order:")
print("  " + " -> ".join(cache_order))
print("backward consumes them in reverse:")
print("  " + " -> ".join(reversed(cache_order)))
assert cache_order[0] == "emb" and cache_order[-2:] == ["lm_head", "loss"]
grads = model.backward()

# %% [markdown]
# Now the whole model's gradient against finite differences of the loss, for
# entries of every parameter tensor (all entries of the small ones):

# %%
per_tensor = 12 if FAST else 48
model_errors = {}
for name, p in model.params.items():
    n = min(p.size, per_tensor)
    pick = rng.choice(p.size, size=n, replace=False)
    num = numerical_gradient(lambda: model.loss(idx, targets), p, indices=pick)
    model_errors[name] = relative_error(grads[name], num, indices=pick)
for name, e in model_errors.items():
    print(f"{name:<24} {e:.1e}")
max_model_error = max(model_errors.values())
print(f"largest relative error over {len(model_errors)} tensors: {max_model_error:.1e}")
assert max_model_error < 1e-6

# %%
fig, ax = plt.subplots(figsize=(6.4, 5.6))
names = list(model_errors)
ax.barh(range(len(names)), list(model_errors.values()), color="C2")
ax.set_yticks(range(len(names)), names, fontsize=7)
ax.invert_yaxis()
ax.set_xscale("log")
ax.set_xlim(1e-13, 1)
ax.axvline(1e-6, color="k", ls="--", lw=1)
ax.text(1.3e-6, 0, "pass / fail 1e-6", fontsize=8, va="center")
ax.set_xlabel("relative error of dL/dparam vs centered differences (float64)")
ax.set_title(f"GPT.backward() checked tensor by tensor\n"
             f"({cfg.n_layer} layers, C={cfg.n_embd}, up to {per_tensor} entries per tensor)")
save_figure(fig, "04_backprop_model")

# %% [markdown]
# ## Exercises
#
# 1. **RMSNorm.** LLaMA-style models replace LayerNorm with
#    $y = g \odot x / \sqrt{\text{mean}(x^2) + \epsilon}$ (no mean subtraction, no bias).
#    Write `rmsnorm_forward(x, g)` returning `(y, cache)` and
#    `rmsnorm_backward(dy, cache)` returning `(dx, dg)`, then run
#    `check_op(rmsnorm_forward, rmsnorm_backward, [x, g])` with float64 inputs:
#    both errors should be below $10^{-8}$. (Hint: the LayerNorm derivation with
#    $\mu = 0$: only one mean term survives.)
# 2. **The V.** Re-run the step-size sweep on `layernorm_forward` instead of
#    GELU. Is the best $h$ still near $\varepsilon^{1/3}$? Then try the one-sided
#    difference $(f(x+h) - f(x))/h$: the right arm's slope should drop from 2 to 1
#    and the best error should get worse (near $\varepsilon^{1/2}$).
# 3. **A zero gradient.** In the model check above, print the part of the
#    `c_attn` bias that is added to the keys,
#    `grads["h.0.attn.c_attn.bias"][cfg.n_embd:2 * cfg.n_embd]`. It is zero up to
#    rounding ($\sim 10^{-17}$) while the query and value parts are not. Why?
#    (Adding the same vector to every key adds a constant to each row of
#    scores, and softmax ignores constants.) Confirm with `numerical_gradient`
#    on those entries, and explain why `relative_error` restricted to them alone
#    would be meaningless.
