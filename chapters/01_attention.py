# %% [markdown]
# # Chapter 1: Scaled dot-product attention
#
# Attention is the one place in a GPT where positions exchange information.
# Every other layer (LayerNorm, the feed-forward network, the embeddings)
# works on each position alone. This chapter
#
# 1. states the formula and its shapes;
# 2. shows *why* the scores are divided by $\sqrt{d_k}$: without it, the
#    spread of the scores grows with the head size and the softmax saturates
#    (a figure);
# 3. explains the causal mask and checks what it promises: a later token never
#    changes an earlier output, which is what lets a GPT train on every
#    position at once and generate with a key/value cache;
# 4. checks that minigpt's NumPy reference, every compiled kernel, and the
#    formula typed out directly give the same numbers;
# 5. draws the attention of a trained model on a real line of Python.
#
# *Numbers quoted in the text come from a full run (`minigpt tour`, which
# also made the book's figures). A fast run (`MINIGPT_FAST=1`, for tests and
# a quick look) trains the model for 30 steps instead of 4000 and draws
# fewer random samples: every check still holds, but its numbers differ, and
# a 30-step model has not yet learned the attention patterns of the last
# section.*

# %%
import math

import matplotlib.pyplot as plt
import numpy as np

import minigpt.kernels  # noqa: F401  (registers the compiled attention backends)
from minigpt.layers import causal_attention_forward, layernorm_forward, linear_forward, softmax
from minigpt.layers.attention import split_heads
from minigpt.ops import BACKENDS, op_table
from minigpt.pretrained import fast_mode, trained_model
from minigpt.probes import attention_maps
from minigpt.tour import save_figure

FAST = fast_mode()
rng = np.random.default_rng(0)

# %% [markdown]
# ## The formula
#
# One head receives, for each of $T$ positions, a query $q_i$, a key $k_i$ and
# a value $v_i$, each a vector of length $d_k$ (minigpt calls it $D$). Stacked
# as rows they form $Q, K, V \in \mathbb{R}^{T \times d_k}$, and
#
# $$\text{Attention}(Q, K, V) = \text{softmax}\!\left(\frac{QK^\top}{\sqrt{d_k}} + M\right) V .$$
#
# Read it row by row. Score $S_{ij} = q_i \cdot k_j / \sqrt{d_k}$ says how well
# key $j$ matches query $i$. The softmax turns row $i$ of scores into weights
# $P_{ij} \ge 0$ with $\sum_j P_{ij} = 1$. Output $i$ is the weighted average
# $\sum_j P_{ij} v_j$ of the values. $M$ is the causal mask (below).
#
# Shapes in minigpt: `q` is `(B, H, T_q, D)` (batch, heads, positions, head
# size), `k` and `v` are `(B, H, T_k, D)`, the output is `(B, H, T_q, D)`, and
# $P$ is `(B, H, T_q, T_k)`. `minigpt.layers.causal_attention_forward(q, k, v)`
# is the NumPy reference: the definition that every faster kernel must match.

# %% [markdown]
# ## Why divide by $\sqrt{d_k}$?
#
# Suppose the entries of $q$ and $k$ are independent with mean 0 and
# variance 1 (the assumption of Vaswani et al., 2017; with any other common
# variance $\sigma^2$ both variances below are multiplied by $\sigma^4$, and
# the growth with $d_k$ is the same). Then each product $q_m k_m$ has mean 0
# and variance $\mathbb{E}[q_m^2]\,\mathbb{E}[k_m^2] = 1$, and the dot
# product adds $d_k$ of them:
#
# $$\operatorname{Var}(q \cdot k) = \sum_{m=1}^{d_k} \operatorname{Var}(q_m k_m) = d_k,
# \qquad \operatorname{Var}\!\left(\frac{q \cdot k}{\sqrt{d_k}}\right) = 1 .$$
#
# So the raw scores spread out like $\sqrt{d_k}$, and a wider head would get
# ever more extreme scores. We measure it on random vectors.

# %%
d_ks = [2**i for i in range(10)]  # 1 .. 512
n_pairs = 4_000 if FAST else 40_000
unscaled_var, scaled_var = [], []
for d in d_ks:
    q = rng.standard_normal((n_pairs, d))  # (N, d_k)
    k = rng.standard_normal((n_pairs, d))
    dots = (q * k).sum(axis=1)  # (N,) one q.k per pair
    unscaled_var.append(dots.var())
    scaled_var.append((dots / math.sqrt(d)).var())
unscaled_var, scaled_var = np.array(unscaled_var), np.array(scaled_var)
var_over_dk = unscaled_var / np.array(d_ks)  # should be ~1 for every d_k
scaled_var_mean = float(scaled_var.mean())

print(f"{'d_k':>5} {'Var(q.k)':>10} {'Var/d_k':>8} {'Var(q.k/sqrt d_k)':>18}")
for d, u, r, s in zip(d_ks, unscaled_var, var_over_dk, scaled_var):
    print(f"{d:5d} {u:10.2f} {r:8.3f} {s:18.3f}")
print(f"mean Var(q.k / sqrt(d_k)) over all d_k: {scaled_var_mean:.3f}  (theory: 1)")
assert abs(scaled_var_mean - 1) < 0.1 and np.all(np.abs(var_over_dk - 1) < 0.25)

# %% [markdown]
# ### What large scores do to the softmax
#
# The softmax is not scale-free: $\text{softmax}(c\,s)$ gets sharper as $c$
# grows, and as the spread of the scores grows, one entry takes almost all
# of the weight. Such a *saturated* softmax is a problem twice over. First,
# the head can only copy one value instead of mixing several. Second, it
# stops learning: the softmax's Jacobian is
#
# $$\frac{\partial p_i}{\partial s_j} = p_i(\delta_{ij} - p_j),$$
#
# which is zero when $p$ is one-hot, so almost no gradient reaches the
# queries and keys. Below, one query attends to $T = 32$ random keys; we
# record the largest weight, the entropy $-\sum_j p_j \log p_j$ (at most
# $\log 32 = 3.47$ nats, for uniform weights) and the Frobenius norm of the
# Jacobian, with and without the $1/\sqrt{d_k}$.

# %%
T_keys = 32
n_rows = 100 if FAST else 400


def softmax_stats(s):
    """Mean max weight, entropy and Jacobian norm of softmax over rows of s (n, T)."""
    p = softmax(s)  # (n, T)
    entropy = -(p * np.log(np.maximum(p, 1e-300))).sum(-1)
    jac = np.einsum("ni,ij->nij", p, np.eye(s.shape[-1])) - p[:, :, None] * p[:, None, :]  # (n, T, T)
    return p.max(-1).mean(), entropy.mean(), np.linalg.norm(jac, axis=(1, 2)).mean()


sat = {"unscaled": [], "scaled": []}
for d in d_ks:
    q = rng.standard_normal((n_rows, 1, d))  # one query per row
    k = rng.standard_normal((n_rows, T_keys, d))  # (n, T, d_k)
    s = (q * k).sum(-1)  # (n, T) raw scores
    sat["unscaled"].append(softmax_stats(s))
    sat["scaled"].append(softmax_stats(s / math.sqrt(d)))
sat = {key: np.array(v) for key, v in sat.items()}  # (len(d_ks), 3): max p, entropy, |J|

print(f"{'d_k':>5} | {'max p':>6} {'entropy':>8} {'|J|':>6} (unscaled) | {'max p':>6} {'entropy':>8} {'|J|':>6} (scaled)")
for i, d in enumerate(d_ks):
    u, s = sat["unscaled"][i], sat["scaled"][i]
    print(f"{d:5d} | {u[0]:6.3f} {u[1]:8.3f} {u[2]:6.3f}            | {s[0]:6.3f} {s[1]:8.3f} {s[2]:6.3f}")
max_p_unscaled_512 = float(sat["unscaled"][-1, 0])
max_p_scaled_spread = float(np.ptp(sat["scaled"][:, 0][2:]))  # d_k >= 4: flat
entropy_unscaled_512, entropy_scaled_min = float(sat["unscaled"][-1, 1]), float(sat["scaled"][:, 1].min())
# unscaled: near one-hot at d_k = 512; scaled: the same picture at every d_k
assert max_p_unscaled_512 > 0.8 and max_p_scaled_spread < 0.1
assert entropy_unscaled_512 < 1.0 < 2.5 < entropy_scaled_min

# %%
fig, axes = plt.subplots(2, 2, figsize=(10, 6.6))
ax = axes.ravel()
ax[0].loglog(d_ks, unscaled_var, "o-", label=r"$q\cdot k$")
ax[0].loglog(d_ks, scaled_var, "s-", label=r"$q\cdot k/\sqrt{d_k}$")
ax[0].loglog(d_ks, d_ks, "k:", lw=1, label=r"$d_k$ (theory)")
ax[0].set(ylabel="variance of the score", title="Score variance (random unit-variance q, k)")
for key, style in (("unscaled", "o-"), ("scaled", "s-")):
    label = r"$q\cdot k$" if key == "unscaled" else r"$q\cdot k/\sqrt{d_k}$"
    for a, col in ((ax[1], 0), (ax[2], 1), (ax[3], 2)):
        a.semilogx(d_ks, sat[key][:, col], style, label=label)
ax[1].axhline(1 / T_keys, color="k", ls=":", lw=1, label="uniform (1/32)")
ax[1].set(ylabel="largest softmax weight", title=f"Saturation: the top weight ({T_keys} keys)", ylim=(0, 1.02))
ax[2].axhline(math.log(T_keys), color="k", ls=":", lw=1, label="uniform (log 32)")
ax[2].set(ylabel="entropy of the weights (nats)", title="Saturation: entropy", ylim=(0, 3.6))
ax[3].set(ylabel=r"$\|\partial p/\partial s\|_F$", title="Softmax Jacobian: the gradient signal")
for a in ax:
    a.set_xlabel(r"head size $d_k$")
    a.legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "01_attention")

# %% [markdown]
# Without scaling, by $d_k = 64$ (GPT-2's head size) a single key already
# takes about 80% of the weight, and from there on the Jacobian keeps
# shrinking (at $d_k = 512$ it is about a third of the scaled one). The
# Jacobian is small at both ends: nearly uniform weights (tiny scores) and
# nearly one-hot weights (huge scores) both respond little to a change of
# the scores. With scaling, the picture does not depend on $d_k$ at all:
# the network can choose how sharp to be by learning larger or smaller
# $q$ and $k$, instead of having the head size choose for it. (The scaled
# curves bend slightly at $d_k = 1, 2$ only because a sum of one or two
# products of Gaussians is far from Gaussian.)

# %% [markdown]
# ## The causal mask
#
# A language model predicts token $t+1$ from tokens $1..t$. If position $i$
# could look at position $j > i$ during training, it would simply read the
# answer. The mask forbids it:
#
# $$M_{ij} = \begin{cases} 0 & j \le i \\ -\infty & j > i \end{cases}
# \qquad\Rightarrow\qquad P_{ij} = \frac{e^{S_{ij}}[j \le i]}{\sum_{j' \le i} e^{S_{ij'}}} .$$
#
# Adding $-\infty$ before the softmax makes $e^{-\infty} = 0$ exactly, and the
# remaining weights still sum to 1. Here is $M$ for $T = 5$:

# %%
T = 5
M = np.where(np.arange(T)[None, :] > np.arange(T)[:, None], -np.inf, 0.0)
print(M)

# %% [markdown]
# What the mask promises: **output $i$ depends only on inputs $1..i$.**
# We check it on the attention op, changing the query, key and value of the
# last position only.

# %%
B, H, T, D = 1, 2, 8, 16
qc, kc, vc = (rng.standard_normal((B, H, T, D)) for _ in range(3))  # (B, H, T, D)
out_c, _ = causal_attention_forward(qc, kc, vc)
q2, k2, v2 = qc.copy(), kc.copy(), vc.copy()
for a in (q2, k2, v2):
    a[:, :, -1] = rng.standard_normal((B, H, D))  # a different last token
out2, _ = causal_attention_forward(q2, k2, v2)
causal_core_change = float(np.abs(out2[:, :, :-1] - out_c[:, :, :-1]).max())
last_row_change = float(np.abs(out2[:, :, -1] - out_c[:, :, -1]).max())
print(f"change in outputs 0..{T - 2} after editing position {T - 1}: {causal_core_change}")
print(f"change in output {T - 1} itself: {last_row_change:.3f}")
assert causal_core_change == 0.0 and last_row_change > 0

# %% [markdown]
# The same holds for the whole model: every layer is either per-position or
# causal attention, so the logits at position $i$ are a function of tokens
# $1..i$ only. We load the trained "tiny" model (trained once, then cached)
# and edit the last character of a line.

# %%
model, dataset, ckpt = trained_model("tiny")
tok = model.tokenizer
line = "for i, line in enumerate(lines):"
print(f"val loss of the trained model: {ckpt.meta['history']['val'][-1][1]:.3f}")
ids = tok.encode(line)[None, :]  # (1, T)
ids_edit = tok.encode(line[:-1] + "!")[None, :]
ids_first = tok.encode("F" + line[1:])[None, :]
logits, _ = model.forward(ids)  # (1, T, V)
logits_edit, _ = model.forward(ids_edit)
logits_first, _ = model.forward(ids_first)
causal_model_change = float(np.abs(logits_edit[:, :-1] - logits[:, :-1]).max())
first_edit_change = float(np.abs(logits_first[:, -1] - logits[:, -1]).max())
print(f"editing the last char: max change of the logits at earlier positions = {causal_model_change}")
print(f"editing the first char: max change of the logits at the last position = {first_edit_change:.3f}")
assert causal_model_change < 1e-5 and first_edit_change > 1e-3

# %% [markdown]
# Two consequences for training and generation:
#
# * **Training** gets $T$ predictions from one forward pass: position $i$'s
#   logits predict token $i+1$ without having seen it, so all $T$ targets
#   are scored at once.
# * **Generation** never has to recompute the past. When a new token arrives,
#   the keys and values of the earlier positions are exactly what they were,
#   so they can be kept (the *KV cache*) and only the new query is attended.
#   `causal_attention_forward` supports this: with $T_q < T_k$ the queries
#   are the *last* $T_q$ positions, and the mask is shifted by $T_k - T_q$.
#   One new query against all keys gives exactly the last row of the full
#   computation:

# %%
out_last, _ = causal_attention_forward(qc[:, :, -1:], kc, vc)  # (B, H, 1, D): only the new query
kv_row_diff = float(np.abs(out_last[:, :, 0] - out_c[:, :, -1]).max())
print(f"one query against cached keys vs last row of full attention: max diff {kv_row_diff:.1e}")
assert kv_row_diff < 1e-12  # float64, same sums in the same order

# %% [markdown]
# ## Reference, kernels and formula agree
#
# The NumPy reference in `minigpt.layers.attention` is the definition. Other
# kernels (the numba one, for speed) are listed in the op table,
# `minigpt.ops.op_table(backend)`, which says which function computes each op
# for each backend in `minigpt.ops.BACKENDS`. We check every backend's
# attention against the formula typed out directly, in float64 and
# float32, on sizes that are not multiples of anything (odd $T$, 3 heads).
# The error we accept follows from the dtype: a sum of $T$ products in
# float32 carries relative rounding of a few $\times 10^{-7}$.

# %%
B, H, T, D = 2, 3, 37, 16
mask = np.where(np.arange(T)[None, :] > np.arange(T)[:, None], -np.inf, 0.0)  # (T, T)
backend_max_diff = {}
print(f"{'backend':>10} {'float64':>10} {'float32':>10}")
for name in BACKENDS:
    fwd, _ = op_table(name)["attention"]
    diffs = []
    for dtype in (np.float64, np.float32):
        q, k, v = (rng.standard_normal((B, H, T, D)).astype(dtype) for _ in range(3))
        formula = softmax(q @ k.swapaxes(-1, -2) / math.sqrt(D) + mask) @ v  # the formula, verbatim
        out, _ = fwd(q, k, v)
        diffs.append(float(np.abs(out.astype(np.float64) - formula).max()))
    backend_max_diff[name] = tuple(diffs)
    print(f"{name:>10} {diffs[0]:10.1e} {diffs[1]:10.1e}")
assert all(d64 < 1e-12 and d32 < 1e-5 for d64, d32 in backend_max_diff.values())

# %% [markdown]
# ## Attention in a trained model
#
# Now the real thing. Block 0 of the trained model computes its attention
# probabilities in four steps, which we run by hand with minigpt's layers:
# embed the characters, LayerNorm (`ln_1`), the `c_attn` projection to
# $q, k, v$, then the reference attention whose cache holds $P$.

# %%
P = model.params
T = ids.shape[1]
x = P["wte.weight"][ids] + P["wpe.weight"][:T]  # (1, T, C) token + position embeddings
a, _ = layernorm_forward(x, P["h.0.ln_1.weight"], P["h.0.ln_1.bias"])  # (1, T, C)
qkv, _ = linear_forward(a, P["h.0.attn.c_attn.weight"], P["h.0.attn.c_attn.bias"])  # (1, T, 3C)
q, k, v = (split_heads(t, model.config.n_head) for t in np.split(qkv, 3, axis=-1))  # (1, H, T, D)
_, (_, _, _, P0, _) = causal_attention_forward(q, k, v)  # P0: (1, H, T, T)
P0 = P0[0]  # (H, T, T)

# minigpt.probes.attention_maps reads the same P for every layer from one forward
maps = attention_maps(model, ids[0])  # list of (H, T, T)
hand_vs_probe = float(np.abs(maps[0] - P0).max())
print(f"layer 0 by hand vs attention_maps: max diff {hand_vs_probe:.1e}")
row_sum_error = max(float(np.abs(m.sum(-1) - 1).max()) for m in maps)
future_weight = max(float(np.triu(m, 1).max()) for m in maps)
print(f"rows sum to 1 within {row_sum_error:.1e}; weight on future positions: {future_weight}")
assert hand_vs_probe < 1e-6 and row_sum_error < 1e-5 and future_weight == 0.0

# %% [markdown]
# Two heads are drawn: in layer 0 the head that puts most weight on the
# previous character, and in layer 1 the head that puts most weight on the
# spaces of the line. We also print how far back each layer-1 head looks on
# average (mean of $i - j$ under $P_{i\cdot}$). Row $i$ is the query
# (the character whose next character is being predicted), column $j$ the key.

# %%
pos = np.arange(T)
prev_weight = np.array([np.mean(m[pos[1:], pos[1:] - 1]) for m in maps[0]])  # per head
mean_dist = np.array([(m * (pos[:, None] - pos[None, :])).sum(-1).mean() for m in maps[-1]])
# how much of each head's weight lands on spaces, against the share of
# spaces among the keys it may see (what uniform attention would give)
is_space = np.array([c == " " for c in line])
visible = np.tril(np.ones((T, T)))  # (T, T) 1 where j <= i
space_weights = np.array([(m * is_space).sum(-1).mean() for m in maps[-1]])  # per head
space_share = float(((visible * is_space).sum(-1) / visible.sum(-1)).mean())
h0, h1 = int(prev_weight.argmax()), int(space_weights.argmax())
space_weight = float(space_weights[h1])
print(f"layer 0: weight on previous char per head {np.round(prev_weight, 2)} -> head {h0}")
print(f"layer {len(maps) - 1}: mean look-back distance per head {np.round(mean_dist, 2)}")
print(f"layer {len(maps) - 1}: weight on spaces per head {np.round(space_weights, 2)} -> head {h1} "
      f"(uniform attention would give {space_share:.2f})")

labels = [repr(c)[1:-1] if c != " " else "\u2423" for c in line]
fig, ax = plt.subplots(1, 2, figsize=(11, 5.2), layout="constrained")
# a fast run's 30-step model has no such specialists yet: its titles say only how each head was picked
roles = ("most weight on the previous character", "most weight on spaces") if FAST else (
    "previous-character head", "attends to spaces")
for a, m, title in ((ax[0], maps[0][h0], f"layer 0, head {h0}: {roles[0]}"),
                    (ax[1], maps[-1][h1], f"layer {len(maps) - 1}, head {h1}: {roles[1]}")):
    im = a.imshow(m, cmap="viridis", vmin=0, vmax=1)
    a.set_xticks(pos, labels, fontsize=7, family="monospace")
    a.set_yticks(pos, labels, fontsize=7, family="monospace")
    a.set(xlabel="key position j (attended to)", ylabel="query position i", title=title)
fig.colorbar(im, ax=ax, shrink=0.7, label=r"$P_{ij}$")
fig.suptitle(f"Attention of the trained tiny model on {line!r}" + (f" (fast mode: {ckpt.step} steps)" if FAST else ""))
save_figure(fig, "01_attention_maps")

# %% [markdown]
# Everything above the diagonal is exactly zero: the mask at work. Each row
# is a probability distribution over the characters so far. In the fully
# trained model (the committed figure), the layer-0 head follows a band just
# left of the diagonal: it gathers the last one to three characters, the raw
# material for spelling out a word. The layer-1 head draws vertical stripes:
# from every later query it attends to the *spaces* (and the opening
# parenthesis), the word boundaries, with about twice the weight uniform
# attention would give them (the printed numbers: 0.38 against 0.18 in the
# committed run; the other layer-1 heads put less than uniform weight there).
# Heads specialising like this is the subject of chapter 2.
#
# ## Exercises
#
# 1. Replace $1/\sqrt{d_k}$ by $1/d_k$ in the variance experiment. What does
#    $\operatorname{Var}(q \cdot k / d_k)$ do as $d_k$ grows, and what happens to the
#    largest softmax weight? (Check: the variance should come out near
#    $1/d_k$, and `softmax_stats` should approach the uniform $1/32$.)
# 2. Call `causal_attention_forward(qc[:, :, -3:], kc, vc)` on the random
#    arrays of the causal-mask section and check that it equals the last
#    three rows of `out_c`. Which entries of the shifted mask are $-\infty$?
# 3. For each layer and head of `attention_maps(model, ids[0])`, compute the
#    mean entropy of the rows. Which head is closest to uniform attention
#    over the past, and which is the sharpest? Compare with the heat maps.
