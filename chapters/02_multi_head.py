# %% [markdown]
# # Chapter 2: Multi-head attention
#
# One attention head computes one weighted average per position: one
# notion of "which earlier positions matter". A GPT runs several heads side
# by side, each with its own queries, keys and values, and mixes their
# outputs. This chapter
#
# 1. states the multi-head formula and maps it onto minigpt's parameters: the
#    single `(C, 3C)` matrix `c_attn` *is* all the heads' $W^Q_i, W^K_i, W^V_i$
#    side by side, and the rows of `c_proj` are the blocks of $W^O$; we slice
#    the trained model's weights by hand and check the result against the
#    model's own computation;
# 2. counts the parameters and floating-point operations of an attention
#    layer as formulas and checks them against the model;
# 3. draws every head of the trained model on a real line of Python, measures
#    what each one does, and removes heads one at a time to see what each
#    contributes to the loss.
#
# *Numbers quoted in the text come from a full run (`minigpt tour`, which
# also made the book's figures). A fast run (`MINIGPT_FAST=1`, for tests and
# a quick look) trains the model for 30 steps instead of 4000 and measures
# the heads on fewer windows: the formulas and checks still hold, but the
# heads of a 30-step model have not specialised yet.*

# %%
import matplotlib.pyplot as plt
import numpy as np

from minigpt.config import GPTConfig
from minigpt.layers import (
    causal_attention_forward,
    layernorm_forward,
    linear_forward,
    multihead_attention_forward,
)
from minigpt.layers.attention import split_heads
from minigpt.model import GPT
from minigpt.pretrained import fast_mode, trained_model
from minigpt.probes import attention_maps
from minigpt.tour import save_figure

FAST = fast_mode()

# %% [markdown]
# ## The formula
#
# With $h$ heads and model width $C$, each head works in a space of size
# $D = d_k = C/h$. For self-attention the queries, keys and values all come
# from the same input $X \in \mathbb{R}^{T \times C}$ (in a GPT block, the
# LayerNormed residual stream):
#
# $$\text{head}_i = \text{Attention}(X W_i^Q,\; X W_i^K,\; X W_i^V),
# \qquad W_i^Q, W_i^K, W_i^V \in \mathbb{R}^{C \times D},$$
#
# $$\text{MultiHead}(X) = \text{Concat}(\text{head}_1, \dots, \text{head}_h)\, W^O,
# \qquad W^O \in \mathbb{R}^{C \times C}.$$
#
# GPT-2 adds a bias to each projection. Each head has its own softmax, so it
# can attend somewhere different from the others; the concatenation is
# $T \times hD = T \times C$ again, and $W^O$ mixes the heads back into the
# residual stream.
#
# ### Where the $W_i$ live in minigpt
#
# Computing $3h$ small products $X W_i^Q, \dots$ one by one would waste time,
# so GPT-2 puts all of them in one matrix, `attn.c_attn.weight` of shape
# $(C, 3C)$, and does a single product $X\,W_{\text{attn}}$:
#
# $$W_{\text{attn}} = \big[\; \underbrace{W_1^Q \cdots W_h^Q}_{\text{columns } 0..C}\;\big|\;
# \underbrace{W_1^K \cdots W_h^K}_{C..2C}\;\big|\; \underbrace{W_1^V \cdots W_h^V}_{2C..3C} \;\big]$$
#
# so $W_i^Q$ is columns $iD .. (i+1)D$, $W_i^K$ is columns $C + iD .. C + (i+1)D$,
# and $W_i^V$ is columns $2C + iD .. 2C + (i+1)D$ (counting heads from 0).
# Likewise `attn.c_proj.weight` $= W^O$, and since
# $\text{Concat}(\text{head}_1..\text{head}_h) W^O = \sum_i \text{head}_i\, W^O_{[iD:(i+1)D,\,:]}$,
# head $i$ owns rows $iD..(i+1)D$ of it.
# `multihead_attention_forward` does the splitting with a reshape
# (`split_heads`: `(B, T, C) -> (B, H, T, D)`); here we do it by slicing
# instead and check the two agree.

# %%
model, dataset, ckpt = trained_model("tiny")
cfg, P, tok = model.config, model.params, model.tokenizer
C, H = cfg.n_embd, cfg.n_head
D = C // H
print(f"tiny model: C = {C}, h = {H}, D = C/h = {D}, layers = {cfg.n_layer}")
for i in range(H):
    print(f"head {i}: W^Q cols {i * D:3d}:{(i + 1) * D:3d}   W^K cols {C + i * D:3d}:{C + (i + 1) * D:3d}"
          f"   W^V cols {2 * C + i * D:3d}:{2 * C + (i + 1) * D:3d}   W^O rows {i * D:3d}:{(i + 1) * D:3d}")

# %% [markdown]
# A real line of Python from the corpus (it lies in the validation split,
# which the model did not train on), through block 0 up to `c_attn`:

# %%
line = "self.atomends = self.specials + self.LWS + self.CR"
ids = tok.encode(line)[None, :]  # (1, T)
T = ids.shape[1]
x = P["wte.weight"][ids] + P["wpe.weight"][:T]  # (1, T, C) embeddings
a, _ = layernorm_forward(x, P["h.0.ln_1.weight"], P["h.0.ln_1.bias"])  # (1, T, C) = X
W, b = P["h.0.attn.c_attn.weight"], P["h.0.attn.c_attn.bias"]  # (C, 3C), (3C,)
Wo, bo = P["h.0.attn.c_proj.weight"], P["h.0.attn.c_proj.bias"]  # (C, C), (C,)

# the model's way: one product, then split and reshape into heads
qkv, _ = linear_forward(a, W, b)  # (1, T, 3C)
q_m, k_m, v_m = (split_heads(t, H) for t in np.split(qkv, 3, axis=-1))  # (1, H, T, D)
concat_m, _ = multihead_attention_forward(qkv, H)  # (1, T, C)
mha_m, _ = linear_forward(concat_m, Wo, bo)  # (1, T, C)

# the formula's way: one head at a time, from slices of the weight
heads, maps_sliced = [], []
for i in range(H):
    cols = slice(i * D, (i + 1) * D)
    Wq, Wk, Wv = W[:, cols], W[:, C:][:, cols], W[:, 2 * C:][:, cols]  # (C, D) each
    bq, bk, bv = b[cols], b[C:][cols], b[2 * C:][cols]
    q_i, k_i, v_i = a @ Wq + bq, a @ Wk + bk, a @ Wv + bv  # (1, T, D)
    head, (_, _, _, p_i, _) = causal_attention_forward(q_i, k_i, v_i)  # (1, T, D), P (1, T, T)
    heads.append(head)
    maps_sliced.append(p_i[0])
    if i == 0:
        q0_diff = float(np.abs(q_i[0] - q_m[0, 0]).max())
mha_sliced = np.concatenate(heads, axis=-1) @ Wo + bo  # Concat(head_1..head_h) W^O
mha_sum = sum(heads[i] @ Wo[i * D:(i + 1) * D] for i in range(H)) + bo  # the same, as a sum

slice_vs_split = max(
    float(np.abs(np.concatenate(heads, -1) - concat_m).max()), float(np.abs(mha_sliced - mha_m).max()))
concat_vs_sum = float(np.abs(mha_sum - mha_sliced).max())
map_vs_model = float(np.abs(np.stack(maps_sliced) - attention_maps(model, ids[0])[0]).max())
print(f"q of head 0, sliced vs the model's split_heads:     max diff {q0_diff:.1e}")
print(f"MultiHead by slicing vs multihead_attention_forward: max diff {slice_vs_split:.1e}")
print(f"Concat(heads) W^O vs sum_i head_i W^O_i:             max diff {concat_vs_sum:.1e}")
print(f"per-head P by slicing vs attention_maps(model):      max diff {map_vs_model:.1e}")
# float32 products of length C = 64 summed in a different order: ~1e-7 relative
assert max(q0_diff, slice_vs_split, concat_vs_sum, map_vs_model) < 1e-5

# %% [markdown]
# ## Counting parameters
#
# Per attention layer: $W_{\text{attn}}$ ($C \cdot 3C$) and its bias ($3C$), $W^O$
# ($C \cdot C$) and its bias ($C$):
#
# $$P_{\text{attn}} = 4C^2 + 4C .$$
#
# The number of heads does not appear: splitting $C$ into $h$ heads of size
# $C/h$ reshapes the same matrices. We check the formula against `model.params`
# for the tiny model and for other widths and head counts.

# %%
def attn_params_counted(params, layer=0):
    return sum(v.size for k, v in params.items() if k.startswith(f"h.{layer}.attn."))


def attn_params_formula(C):
    return 4 * C * C + 4 * C


param_checks = [(cfg.n_embd, cfg.n_head, attn_params_formula(C), attn_params_counted(P))]
for C_, H_ in [(32, 1), (32, 2), (32, 8), (48, 3), (96, 4)]:
    m = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=H_, n_embd=C_))
    param_checks.append((C_, H_, attn_params_formula(C_), attn_params_counted(m.params)))
print(f"{'C':>4} {'h':>3} {'4C^2+4C':>9} {'counted':>9}")
for C_, H_, f, c in param_checks:
    print(f"{C_:4d} {H_:3d} {f:9d} {c:9d}")
assert all(f == c for _, _, f, c in param_checks)

# %% [markdown]
# ## Counting FLOPs
#
# A product of an $(m \times n)$ and an $(n \times p)$ matrix takes $mnp$
# multiply-adds, $2mnp$ floating-point operations (FLOPs). For one sequence of
# $T$ tokens, one attention layer does four products:
#
# | step | shapes | FLOPs |
# |---|---|---|
# | $X W_{\text{attn}}$ | $(T \times C)(C \times 3C)$ | $6TC^2$ |
# | $QK^\top$, all heads | $h \cdot (T \times D)(D \times T)$ | $2T^2C$ |
# | $PV$, all heads | $h \cdot (T \times T)(T \times D)$ | $2T^2C$ |
# | $\text{Concat}\cdot W^O$ | $(T \times C)(C \times C)$ | $2TC^2$ |
#
# $$F_{\text{attn}}(T, C) = 8TC^2 + 4T^2C .$$
#
# (The softmax, scaling and masking add $O(hT^2)$ more, a factor $D$ fewer;
# the reference computes the masked half of $QK^\top$ too, which a causal
# kernel could skip.) The first term is $2 \times$ parameters $\times$ tokens,
# the usual rule for dense layers; the second is what makes attention
# expensive for long contexts. The two are equal at $T = 2C$.
#
# We count the FLOPs from the shapes of the arrays that the hand-run above
# actually multiplied (the model's weights and activations) and compare.

# %%
def matmul_flops(a, b):
    """2 * (rows of a) * (inner size) * (columns of b), batch axes included."""
    return 2 * (a.size // a.shape[-1]) * a.shape[-1] * b.shape[-1]


k_t = k_m.swapaxes(-1, -2)  # (1, H, D, T)
P_all = np.stack(maps_sliced)[None]  # (1, H, T, T)
flops_counted = (matmul_flops(a, W)  # X W_attn
                 + matmul_flops(q_m, k_t)  # Q K^T for every head
                 + matmul_flops(P_all, v_m)  # P V for every head
                 + matmul_flops(concat_m, Wo))  # Concat W^O


def attn_flops_formula(T, C):
    return 8 * T * C * C + 4 * T * T * C


flops_formula = attn_flops_formula(T, C)
print(f"T = {T}, C = {C}: counted {flops_counted:,} FLOPs, formula 8TC^2 + 4T^2C = {flops_formula:,}")
assert flops_counted == flops_formula

# %%
fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
Ts = np.unique(np.geomspace(8, 8192, 40).astype(int))
for C_, style in ((64, "-"), (768, "--")):
    ax[0].loglog(Ts, 8 * Ts * C_**2, "C0" + style, label=f"projections $8TC^2$, C={C_}")
    ax[0].loglog(Ts, 4 * Ts**2 * C_, "C3" + style, label=f"scores and mixing $4T^2C$, C={C_}")
    ax[0].axvline(2 * C_, color="gray", ls=style, lw=0.8)
ax[0].loglog(Ts, attn_flops_formula(Ts, 64), "k-", lw=0.8, label="total, C=64")
ax[0].plot([T], [flops_counted], "k*", ms=10, label=f"counted, tiny model (T={T})")
ax[0].set(xlabel="context length T", ylabel="FLOPs per layer (one sequence)",
          title="Attention FLOPs: the two terms (cross at T = 2C)")
ax[0].legend(fontsize=7)
ratio = np.geomspace(1 / 64, 64, 200)  # T / C
ax[1].semilogx(ratio, ratio / (2 + ratio), "C3")  # 4T^2C / (8TC^2 + 4T^2C) = (T/C) / (2 + T/C)
for name, T_, C_ in (("tiny (64, 64)", cfg.block_size, C), ("GPT-2 small (1024, 768)", 1024, 768),
                     ("GPT-3 (2048, 12288)", 2048, 12288)):
    r = T_ / C_
    ax[1].plot(r, r / (2 + r), "o", label=name)
ax[1].set(xlabel="T / C", ylabel=r"share of the $T^2$ terms",
          title="Where attention's compute goes (full context)")
ax[1].legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "02_multi_head_cost")

# %% [markdown]
# At GPT-2's full context of 1024 tokens and $C = 768$ the $T^2$ terms are
# 40% of the attention FLOPs; a very wide model like GPT-3 spends most of
# them in the projections; and for contexts far beyond $2C$ the $T^2$ term
# takes over.

# %% [markdown]
# ## What the heads do
#
# Every head of the trained model on the same line. Row $i$ is the query,
# column $j$ the key; each row sums to one.

# %%
maps = attention_maps(model, ids[0])  # n_layer arrays (H, T, T)
labels = [c if c != " " else "\u2423" for c in line]
pos = np.arange(T)
fig, axes = plt.subplots(cfg.n_layer, H, figsize=(3.1 * H, 3.6 * cfg.n_layer), layout="constrained")
axes = np.atleast_2d(axes)
for l in range(cfg.n_layer):
    for h in range(H):
        a_ = axes[l, h]
        im = a_.imshow(maps[l][h], cmap="viridis", vmin=0, vmax=1)
        a_.set_title(f"layer {l}, head {h}", fontsize=9)
        # characters on the outer axes only, to keep the panels readable
        a_.set_xticks(pos, labels if l == cfg.n_layer - 1 else [], fontsize=5, family="monospace")
        a_.set_yticks(pos, labels if h == 0 else [], fontsize=6, family="monospace")
        a_.tick_params(length=1)
        if h == 0:
            # rows are closer together than a character is tall: every other
            # label moves one column left, so neighbours do not overlap
            for tick in a_.yaxis.get_major_ticks()[1::2]:
                tick.set_pad(8)
            a_.set_ylabel("query i (predicts the next character)", fontsize=8)
        if l == cfg.n_layer - 1:
            a_.set_xlabel("key j (attended to)", fontsize=8)
fig.colorbar(im, ax=axes, shrink=0.6, label=r"$P_{ij}$")
fig.suptitle(f"Every head of the trained tiny model on {line!r}" + (f" (fast mode: {ckpt.step} steps)" if FAST else ""))
save_figure(fig, "02_multi_head")

# %% [markdown]
# Pictures can mislead, so we measure each head on 64 random windows of the
# validation text (8 in fast mode; not just this line): the mean look-back distance
# $\sum_j P_{ij}(i - j)$, the weight on the previous character, on the query
# itself, and the row entropy. Then we *remove* each head in turn (zero its
# rows of $W^O$, so its output never reaches the residual stream) and
# measure how much the validation loss rises.

# %%
rng = np.random.default_rng(0)
n_windows = 8 if FAST else 64
win, _ = dataset.get_batch("val", n_windows, rng)  # (N, T) real windows
win_maps = attention_maps(model, win)  # n_layer arrays (N, H, T, T)
tpos = np.arange(cfg.block_size)
head_stats = {}
for l, m in enumerate(win_maps):
    for h in range(H):
        p = m[:, h]  # (N, T, T)
        head_stats[(l, h)] = dict(
            dist=float((p * (tpos[:, None] - tpos[None, :])).sum(-1).mean()),
            prev=float(p[:, tpos[1:], tpos[1:] - 1].mean()),
            self=float(p[:, tpos, tpos].mean()),
            entropy=float(-(p * np.log(np.maximum(p, 1e-30))).sum(-1).mean()),
        )

eval_batches = list(dataset.iter_eval_batches("val", 8 if FAST else 16, max_batches=1 if FAST else 4))


def val_loss(params):
    # every backend computes the same loss (chapter 1); the reference is plenty here
    m = GPT(cfg, params=params, backend="numpy")
    return float(np.mean([m.loss(xb, yb) for xb, yb in eval_batches]))


base_loss = val_loss(P)
ablation = {}
for l in range(cfg.n_layer):
    for h in range(H):
        pruned = dict(P)
        wo = P[f"h.{l}.attn.c_proj.weight"].copy()
        wo[h * D:(h + 1) * D] = 0.0  # head h's block of W^O
        pruned[f"h.{l}.attn.c_proj.weight"] = wo
        ablation[(l, h)] = val_loss(pruned) - base_loss

print(f"validation loss with all heads: {base_loss:.3f}")
print(f"{'head':>8} {'look-back':>9} {'prev':>6} {'self':>6} {'entropy':>8} {'loss if removed':>16}")
for (l, h), s in head_stats.items():
    print(f"  L{l} H{h}  {s['dist']:9.2f} {s['prev']:6.2f} {s['self']:6.2f} {s['entropy']:8.2f}"
          f" {ablation[(l, h)]:+16.3f}")
dists = np.array([s["dist"] for s in head_stats.values()])
head_dist_spread = float(dists.max() / dists.min())
print(f"longest / shortest mean look-back distance across heads: {head_dist_spread:.2f}x")
if not FAST:
    # trained heads specialise: some look near, some far, and every head is used
    assert head_dist_spread > 1.5 and min(ablation.values()) > 0

# %% [markdown]
# Reading the table of the fully trained model (a full run's numbers; a
# fast run prints those of its 30-step model): the layer-0 heads look back 2 to 4 characters on
# average and put a quarter to two fifths of their weight on the previous
# character, the local context a character model needs to spell a word; the
# layer-1 heads look back about 10 characters, three to six times further,
# with higher entropy, pooling information from the whole window. No two
# heads are the same, and every head is used: removing any one raises the
# validation loss, but by very different amounts (here, 0.17 to 0.5 nats
# for a layer-0 head and only a few hundredths for a layer-1 head). Uneven
# importance like this is what head pruning exploits: the heads that matter
# least are the first candidates for removal when a model is made cheaper.
#
# ## Exercises
#
# 1. Build `GPT(GPTConfig(vocab_size=16, n_layer=1, n_head=H_, n_embd=48))`
#    for `H_` in 1, 2, 3, 4, 6, 8 and check that the attention parameter count
#    never changes. What does change with $h$? (Hint: the size of $P$.)
# 2. Using `attn_flops_formula`, find the context length at which the $T^2$
#    terms make up 90% of the attention FLOPs for $C = 768$. Check it by
#    evaluating both terms.
# 3. Swap two heads: permute columns $iD..(i+1)D$ of all three parts of
#    `c_attn` (weight and bias) and rows of `c_proj.weight` together, for heads
#    0 and 1 of layer 0. The model's logits should not change beyond float32
#    rounding (check with `model.forward` and `np.allclose`: the `c_proj`
#    product now sums its terms in another order). Why is the order of heads
#    meaningless?
