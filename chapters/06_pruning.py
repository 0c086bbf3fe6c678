# %% [markdown]
# # Chapter 6: Pruning, and did the model get smaller or faster?
#
# Pruning removes weights a trained network can do without. The most common
# complaint about pruning tools is that the pruned model is neither smaller
# nor faster than the one that went in, so this chapter measures both, next
# to the loss, and shows when each happens. It
#
# 1. corrects a popular snippet that "prunes" by dropping whole tensors;
# 2. shows *why* pruning works: the weights of a trained model, and how
#    little the smallest of them contribute;
# 3. prunes the trained tiny model with five methods (random, magnitude per
#    tensor, global magnitude, Wanda, N:M) from 0 to 95% sparsity, once
#    without repair and once after a short fine-tune with the masks held,
#    plus gradual pruning with the same training budget: one figure;
# 4. ranks attention heads by the gradient of a gate on each (Michel et
#    al. 2019, derived here from the model's own backward), then removes
#    heads and MLP neurons for real, so the matrices shrink;
# 5. measures size and speed side by side: zeros in a dense matrix cost as
#    much as any other number, smaller matrices do not, and what each
#    variant takes on disk.
#
# *Numbers quoted in the text come from a full run (`minigpt tour`). A fast
# run (`MINIGPT_FAST=1`, for tests and a quick look) uses a 30-step model,
# fewer sparsities, 5 fine-tuning steps instead of 100 and fewer validation
# windows: every formula and check still holds, the curves are rougher.*

# %%
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import FormatStrFormatter, NullFormatter
import numpy as np

from minigpt.bench import crossover
from minigpt.checkpoint import save_checkpoint
from minigpt.kernels.sparse import sparse_matmul
from minigpt.layers.sparse_linear import csr_from_dense
from minigpt.layers.block import block_forward
from minigpt.model import GPT, init_params
from minigpt.ops import op_table
from minigpt.pretrained import fast_mode, trained_model
from minigpt.prune.sparse import sparse_model
from minigpt.prune import (
    GradualPruning,
    apply,
    gate_heads,
    gate_neurons,
    global_masks,
    head_importance,
    magnitude_masks,
    neuron_importance,
    nm_masks,
    random_masks,
    remove_heads,
    remove_neurons,
    sensitivity_masks,
    sensitivity_scan,
    total_sparsity,
    wanda_masks,
)
from minigpt.tour import save_figure
from minigpt.train import evaluate, train

FAST = fast_mode()
model, dataset, ckpt = trained_model("tiny")
cfg, P = model.config, model.params
EVAL_BATCHES = 2 if FAST else 16  # validation batches of 32 windows, spread over the split, the same for every model


def val_loss(params):
    """Validation cross-entropy (nats per character) of the model with these parameters."""
    return evaluate(GPT(cfg, params=params, backend=model.backend), dataset, "val", 32, EVAL_BATCHES)


dense_loss = val_loss(P)
print(f"tiny model: {model.num_params():,} parameters, {ckpt.step} steps, "
      f"validation loss {dense_loss:.4f} on {EVAL_BATCHES * 32} windows of {cfg.block_size}")

# %% [markdown]
# ## What pruning is not: dropping tensors
#
# A snippet that circulates in tutorials (the blog post minigpt grew from
# has one) "prunes at rate 0.5" like this: take the model's list of weight
# tensors, compute $k = \lfloor 0.5 \cdot \text{number of tensors} \rfloor$,
# and give the model back the list *without its first $k$ tensors*. Its
# comment says the tensors are chosen at random; the code takes the first
# ones. Run on minigpt's own parameter list:

# %%
names = list(P)
k_dropped = int(0.5 * len(names))
dropped, rest = names[:k_dropped], names[k_dropped:]
weights_dropped = sum(P[n].size for n in dropped)
slots_misfit = sum(P[a].shape != P[b].shape for a, b in zip(names, rest))
print(f"{len(names)} tensors; the snippet drops the first {k_dropped}:")
print("  " + ", ".join(dropped))
print(f"that is {weights_dropped:,} of {model.num_params():,} weights ({weights_dropped / model.num_params():.0%}): "
      f"the token and position embeddings and all of block 0")
print(f"given back positionally, {slots_misfit} of the {len(rest)} remaining tensors would land in a slot "
      f"of another shape (the first, {rest[0]} {P[rest[0]].shape}, where wte {P['wte.weight'].shape} was)")
assert "wte.weight" in dropped and "h.0.mlp.c_fc.weight" in dropped and slots_misfit > 0

# %% [markdown]
# Keras refuses a weight list of the wrong length, so the snippet fails
# outright; if it did not, every tensor would move into the slot of another
# one. Either way it sets no weight to zero and removes no computation,
# and the fraction it names counts tensors, not weights. Pruning is
# something else: every tensor stays where it is, and a chosen fraction of
# the *entries* of the weight matrices is set to exactly zero (unstructured),
# or whole rows and columns are cut out so that the matrices shrink
# (structured). minigpt keeps the choice in a **mask** per matrix (a bool
# array of the matrix's shape, True = kept) and never touches LayerNorm
# parameters, biases, or (unless asked) the embeddings.

# %% [markdown]
# ## Why pruning works
#
# A trained weight matrix is not a collection of equally important numbers.
# Below, each kind of matrix of the tiny model (both layers together): most
# weights sit in a narrow peak around zero, with long tails. The dashed lines
# mark the magnitude below which half of each kind's weights lie.

# %%
KINDS = ["attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight", "wte.weight"]
by_kind = {k: np.concatenate([P[n].ravel() for n in P if n.endswith(k) and P[n].ndim == 2]) for k in KINDS}
fig, axes = plt.subplots(1, len(KINDS), figsize=(13, 2.8))
for ax, (kind, w) in zip(axes, by_kind.items()):
    half = float(np.median(np.abs(w)))
    ax.hist(w, bins=80, color="C0", alpha=0.8)
    for x in (-half, half):
        ax.axvline(x, color="C3", ls="--", lw=0.8)
    ax.set_yscale("log")
    ax.set_title(f"{kind.replace('.weight', '')}\n{w.size:,} weights, half within \u00b1{half:.3f}", fontsize=9)
    ax.set_xlabel("weight")
axes[0].set_ylabel("count (log)")
fig.suptitle("Weights of the trained tiny model, per kind of matrix", fontsize=10)
fig.tight_layout()
save_figure(fig, "06_pruning_weights")

# %% [markdown]
# Why the small ones matter little: for a linear layer $y = xW$, zeroing
# the weights in a set $S$ changes the output by $\Delta y = -\sum_{(j,k) \in S}
# x_j W_{jk} e_k$. With inputs of similar size, the change grows with the
# magnitudes of the removed weights, so removing the smallest half moves
# the output far less than removing a random half. Measured on real inputs
# of block 0's first MLP matrix (`mlp.c_fc`, $x$ = its input in the
# calibration windows, read through `model.activations`):

# %%
rng = np.random.default_rng(0)
calib_x, _ = dataset.get_batch("train", 8 if FAST else 32, rng)  # (B, T) calibration windows
x_fc = model.activations(calib_x)["h.0.mlp.c_fc"].reshape(-1, cfg.n_embd)  # (B T, C)
w_fc = P["h.0.mlp.c_fc.weight"]  # (C, 4C)
y_fc = x_fc @ w_fc
half_mag = magnitude_masks({"h.0.mlp.c_fc.weight": w_fc}, 0.5)["h.0.mlp.c_fc.weight"]
half_rand = random_masks({"h.0.mlp.c_fc.weight": w_fc}, 0.5, seed=0)["h.0.mlp.c_fc.weight"]
change = {name: float(np.linalg.norm(x_fc @ (w_fc * m) - y_fc) / np.linalg.norm(y_fc))
          for name, m in (("smallest half", half_mag), ("random half", half_rand))}
energy = {name: float((w_fc[~m] ** 2).sum() / (w_fc ** 2).sum())
          for name, m in (("smallest half", half_mag), ("random half", half_rand))}
for name in change:
    print(f"zero the {name:13s}: removes {energy[name]:5.1%} of sum(w^2), output changes by "
          f"||dy|| / ||y|| = {change[name]:.3f}")
assert change["smallest half"] < change["random half"]

# %% [markdown]
# ## The methods
#
# All of them prune exactly $\text{round}(a\,n)$ of $n$ weights for a
# fraction $a$ (Python's `round`, half to even, as PyTorch's pruning
# utilities do; a tensor of 5 weights at $a = 0.5$ loses 2). Ties in a score
# are broken by position: a stable sort, so of two equal scores the one
# with the lower flat index goes first. Pruning a pruned model ranks only
# the weights still alive, so $0.5$ and then $0.5$ leaves 25%.
#
# * **random**: round$(a n)$ weights of each matrix, uniformly at random.
#   The baseline every method has to beat.
# * **magnitude, per tensor**: in each matrix, the round$(a n)$ smallest $|W_{jk}|$.
# * **global magnitude**: one threshold $\tau$ for all matrices together, the
#   round$(a N)$ smallest $|w|$ of all $N$ prunable weights. Layers whose
#   weights are small overall (the residual projections: GPT-2 initialises
#   them smaller) lose more than $a$, the others less.
# * **Wanda** (Sun et al. 2023): for a linear layer with calibration inputs
#   $X$ (tokens $\times$ inputs), the score of $W_{jk}$ (input $j$, output $k$) is
#   $$S_{jk} = |W_{jk}| \cdot \lVert X_{:,j} \rVert_2,$$
#   and each *output* $k$ keeps its highest-scoring inputs. A small weight
#   on an input that is always large can matter more than a large weight on
#   an input that is nearly always zero. Blocks are pruned in order, each
#   measured on the inputs the already-pruned blocks before it produce.
# * **N:M** (2:4 by default): in every group of $M$ consecutive inputs of an
#   output, keep the $N$ largest. The sparsity is fixed at $1 - N/M$, and the
#   fixed pattern is what hardware can use (NVIDIA's sparse tensor cores
#   skip the zeros of 2:4 weights).
# * **gradual magnitude pruning** (Zhu & Gupta 2017): prune during training,
#   every $\Delta t$ steps from $t_0$, $n$ times, along the cubic schedule
#   $$s_t = s_f + (s_i - s_f)\left(1 - \frac{t - t_0}{n\,\Delta t}\right)^3,$$
#   fast while many redundant weights remain, slowly near the end, when each
#   weight left matters more and the network needs time to recover.
#
# After pruning, **fine-tuning** trains the survivors with the masks held:
# `train(..., masks=masks)` zeroes the pruned weights' gradients before the
# clip and, after each AdamW step, the weights and their moments $m, v$, so
# a pruned weight stays exactly $0$ (tested for 50 steps and across a resume).

# %%
FT_STEPS = 5 if FAST else 100
ft_config = ckpt.train_config.replace(steps=FT_STEPS, lr=1e-3, min_lr=1e-4, warmup_steps=FT_STEPS // 10,
                                      eval_every=FT_STEPS, eval_batches=1, checkpoint_every=FT_STEPS)


def finetune(masks, gradual=None):
    """Validation loss after FT_STEPS of training with the masks held (or, with
    gradual, of gradual pruning to that sparsity within the same steps)."""
    net = GPT(cfg, params=apply(P, masks or {}), backend=model.backend)
    hooks = {}
    if gradual is not None:
        n = min(10, FT_STEPS)
        dt = max(1, int(0.75 * FT_STEPS) // n)  # prune up to 3/4 of the way, then recover
        schedule = GradualPruning(net.params, gradual, t0=0, n=n, dt=dt)
        masks, hooks = schedule.masks, schedule.hooks()
    train(net, dataset, ft_config, progress=False, masks=masks, **hooks)
    if masks:
        assert all(not net.params[k][~m].any() for k, m in masks.items())  # pruned stays exactly 0
    return val_loss(net.params), masks


SPARSITIES = [0.5, 0.9] if FAST else [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
FT_SPARSITIES = [0.5] if FAST else [0.3, 0.5, 0.7, 0.9]
METHODS = {
    "random": lambda s: random_masks(P, s, seed=0),
    "magnitude": lambda s: magnitude_masks(P, s),
    "global": lambda s: global_masks(P, s),
    "Wanda": lambda s: wanda_masks(model, calib_x, s),
}
t0 = time.perf_counter()
oneshot = {name: [val_loss(apply(P, make(s))) for s in SPARSITIES] for name, make in METHODS.items()}
NM = [(3, 4), (2, 4), (1, 4), (1, 8)]
nm_oneshot = {f"{n}:{m}": val_loss(apply(P, nm_masks(P, n, m))) for n, m in NM}
oneshot_seconds = time.perf_counter() - t0

t0 = time.perf_counter()
dense_finetuned, _ = finetune(None)
finetuned = {name: [finetune(make(s))[0] for s in FT_SPARSITIES] for name, make in METHODS.items()}
finetuned["gradual"] = [finetune(None, gradual=s)[0] for s in FT_SPARSITIES]
nm24_finetuned, _ = finetune(nm_masks(P, 2, 4))
finetune_seconds = time.perf_counter() - t0
print(f"one-shot sweep {oneshot_seconds:.0f} s, fine-tuned sweep {finetune_seconds:.0f} s "
      f"({FT_STEPS} steps each)")
print(f"dense {dense_loss:.4f}; dense fine-tuned {FT_STEPS} steps the same way {dense_finetuned:.4f}")
print("sparsity     " + "".join(f"{s:>8.0%}" for s in SPARSITIES))
for name, losses in oneshot.items():
    print(f"{name:<12} " + "".join(f"{x - dense_loss:>+8.3f}" for x in losses) + "   (one-shot, rise in nats)")
print("sparsity     " + "".join(f"{s:>8.0%}" for s in FT_SPARSITIES))
for name, losses in finetuned.items():
    print(f"{name:<12} " + "".join(f"{x - dense_loss:>+8.3f}" for x in losses) + "   (fine-tuned)")
print("N:M one-shot " + ", ".join(f"{k} ({1 - n / m:.0%}) {v - dense_loss:+.3f}" for (n, m), (k, v)
                                 in zip(NM, nm_oneshot.items())) + f"; 2:4 fine-tuned {nm24_finetuned - dense_loss:+.3f}")

# %% [markdown]
# The headline number for each method: the sparsity at which validation loss
# has risen by 0.05 nats over the dense model, read off each curve by linear
# interpolation between the measured sparsities (so it is as coarse as the
# grid: a tenth at most).

# %%
BUDGET = 0.05


def sparsity_at(rise, sparsities, losses):
    """The first sparsity where loss - dense_loss reaches `rise`, linearly
    interpolated (0 if it is reached before the first point, None if never)."""
    xs = [0.0] + list(sparsities)
    ys = [0.0] + [x - dense_loss for x in losses]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if y1 >= rise:
            return x0 + (x1 - x0) * (rise - y0) / (y1 - y0) if y1 > y0 else x1
    return None


headline = {}
for name in [*METHODS, "gradual"]:
    one = sparsity_at(BUDGET, SPARSITIES, oneshot[name]) if name in oneshot else None
    ft = sparsity_at(BUDGET, FT_SPARSITIES, finetuned[name])
    headline[name] = (one, ft)


def pct(s):
    return "   n/a" if s is None else f"{s:6.0%}"


print(f"sparsity at +{BUDGET} nats   one-shot   fine-tuned {FT_STEPS} steps")
for name, (one, ft) in headline.items():
    print(f"{name:<24}{pct(one):>9}{pct(ft):>13}" + ("   (prunes while training)" if name == "gradual" else ""))

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
colors = {"random": "C7", "magnitude": "C0", "global": "C2", "Wanda": "C3", "gradual": "C4"}
for name, losses in oneshot.items():
    axes[0].plot([0] + SPARSITIES, [0] + [x - dense_loss for x in losses], "o-", ms=3, color=colors[name], label=name)
for (n, m), (label, loss) in zip(NM, nm_oneshot.items()):
    axes[0].plot(1 - n / m, loss - dense_loss, "D", color="C1", ms=5)
    axes[0].annotate(label, (1 - n / m, loss - dense_loss), textcoords="offset points", xytext=(4, -10), fontsize=8)
for name, losses in finetuned.items():
    axes[1].plot([0] + FT_SPARSITIES, [dense_finetuned - dense_loss] + [x - dense_loss for x in losses], "o-", ms=3,
                 color=colors[name], label=name + (" (prunes during the steps)" if name == "gradual" else ""))
axes[1].plot(0.5, nm24_finetuned - dense_loss, "D", color="C1", ms=5, label="2:4")
for ax, title in zip(axes, ["one-shot (no repair)", f"after {FT_STEPS} fine-tuning steps with the masks"]):
    ax.axhline(BUDGET, color="k", lw=0.8, ls=":")
    ax.text(0.0, BUDGET, f"+{BUDGET} nats ", fontsize=8, va="bottom")
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_ylim(-0.004, 5)
    ax.set_xlabel("sparsity of the blocks' linear matrices")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
axes[0].set_ylabel(f"validation loss - dense ({dense_loss:.3f}), nats")
fig.suptitle("Pruning the tiny model: loss against sparsity, five methods (N:M as diamonds)", fontsize=10)
fig.tight_layout()
save_figure(fig, "06_pruning_sweep")

# %% [markdown]
# What the curves say (the full run). Random pruning is ruinous from the
# first tenth: a random weight is as likely to be a large one as a small
# one. Magnitude pruning costs almost nothing up to about a quarter of the
# weights and then climbs steeply. One threshold for the whole model
# (global) goes further than the same fraction of every matrix, because it
# takes more from the matrices that can spare it. Wanda's per-output
# comparison with activation norms beats per-tensor magnitude one-shot; at
# this size the global threshold still does best. N:M patterns cost more
# than unstructured pruning at the same sparsity: each group of $M$ must
# lose exactly $M - N$ weights, even where all of them matter.
#
# A short fine-tune with the masks held recovers much of the damage and
# roughly doubles the sparsity each method reaches within the budget. Gradual
# pruning within the same 100 steps does *worse* here than pruning at once
# and fine-tuning: its last pruning comes three quarters of the way through,
# leaving it a quarter of the steps to recover, whereas Zhu and Gupta spread
# the schedule over tens of thousands of steps. A model this small (its
# prunable matrices hold 98,304 weights) has little to spare; Wanda and
# SparseGPT prune language models with billions of weights to 50% with a
# moderate rise in perplexity and no retraining at all.

# %% [markdown]
# ## A sparsity for each matrix: the sensitivity scan
#
# Uniform pruning gives every matrix the same sparsity, global magnitude
# pruning one threshold on $|w|$. Neither asks the loss. A **sensitivity
# scan** (Han et al. 2015; the pruning lab of MIT's efficient-ML course)
# does: prune one matrix $w$ alone, by magnitude, to each sparsity $s$ of a
# grid, all others dense, and measure
# $$\text{rise}_w(s) = L(\text{only } w \text{ pruned to } s) - L(\text{dense}).$$
# A threshold $t$ then gives each matrix the largest sparsity whose rise
# stays within $t$ (reading the curve between grid points linearly, after
# making it non-decreasing). Rises of different matrices roughly add up, so
# $t$ is not the model's rise: `sensitivity_masks` searches $t$ by bisection,
# measuring the whole model with every matrix pruned at once, until the
# rise is at most the budget $D$. The scan and the search run on
# *training* windows, so the validation loss reported below has not been
# used to choose anything.

# %%
SCAN_GRID = [0.5, 0.9] if FAST else [0.2, 0.4, 0.6, 0.8, 0.9]
scan_probe = GPT(cfg, params=dict(P), backend=model.backend)


def train_window_loss(params):
    scan_probe.params = params
    return evaluate(scan_probe, dataset, "train", 32, EVAL_BATCHES)


train_dense = train_window_loss(P)
t0 = time.perf_counter()
scan = sensitivity_scan(P, train_window_loss, SCAN_GRID)
sens_masks, sens_per, sens_rise = sensitivity_masks(P, train_window_loss, BUDGET, scan, SCAN_GRID, train_dense,
                                                    steps=3 if FAST else 6)
sens_total = total_sparsity(P, sens_per)
same_total = {"sensitivity": sens_masks, "uniform (magnitude per tensor)": magnitude_masks(P, sens_total),
              "global magnitude": global_masks(P, sens_total)}
same_total_loss = {name: val_loss(apply(P, m)) for name, m in same_total.items()}
print(f"scan and search: {time.perf_counter() - t0:.0f} s; budget {BUDGET} nats on training windows, "
      f"reached {sens_rise:+.4f}")
for name, s_ in sens_per.items():
    print(f"  {name:<24} {s_:5.0%}   solo rise at 90%: {scan[name][-1] - train_dense:+.3f}")
print(f"total sparsity {sens_total:.1%}; validation loss at that total sparsity:")
for name, loss in same_total_loss.items():
    print(f"  {name:<32} {loss:.4f} ({loss - dense_loss:+.4f})")

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [1.3, 1]})
for i, (name, losses) in enumerate(scan.items()):
    axes[0].plot([0] + SCAN_GRID, [0] + [x - train_dense for x in losses], "o-", ms=3,
                 color=plt.cm.tab10(i), label=name.replace(".weight", ""))
axes[0].set_yscale("symlog", linthresh=0.01)
axes[0].set_ylim(-0.004, 5)
axes[0].axhline(BUDGET, color="k", lw=0.8, ls=":")
axes[0].set_xlabel("sparsity of this matrix alone")
axes[0].set_ylabel("training-window loss - dense, nats")
axes[0].set_title("sensitivity scan: one matrix pruned at a time", fontsize=10)
axes[0].legend(fontsize=7, ncol=2)
labels = [n.replace(".weight", "") for n in sens_per]
axes[1].barh(range(len(labels)), list(sens_per.values()), color=[plt.cm.tab10(i) for i in range(len(labels))])
axes[1].axvline(sens_total, color="k", lw=0.8, ls="--")
axes[1].text(sens_total, len(labels) - 0.4, f" total {sens_total:.0%}", fontsize=8)
axes[1].set_yticks(range(len(labels)), labels, fontsize=8)
axes[1].invert_yaxis()
axes[1].set_xlim(0, 1)
axes[1].set_xlabel("sparsity chosen")
axes[1].set_title("validation loss at the same total sparsity:\n" + ", ".join(
    f"{k.split(' ')[0]} {v - dense_loss:+.3f}" for k, v in same_total_loss.items()), fontsize=9)
fig.tight_layout()
save_figure(fig, "06_pruning_sensitivity")

# %% [markdown]
# The scan spends the budget where it is cheap. In the full run the last
# block's MLP matrices lose about 80% of their weights and block 0's
# `c_attn` barely a tenth: the first block's query, key and value maps are
# what everything after them is built on, while the last MLP can lose most
# of its weights for 0.04 nats. At the same total sparsity (46%) the
# sensitivity masks cost +0.046 nats on validation, uniform pruning +0.29
# and one global threshold +0.12: the weights' sizes alone do not say which
# matrices can spare them.

# %% [markdown]
# ## Heads: importance from a gate's gradient
#
# Michel, Levy and Neubig (2019) put a gate $g_h$ on every head's output and
# score head $h$ by how much the loss leans on it,
# $$I_h = \mathbb{E}_x \left| \frac{\partial L(x)}{\partial g_h} \right|_{g = 1}.$$
# minigpt has that gate as a layer pair (`minigpt/layers/head_gate.py`): with
# $y_{t,h,d}$ head $h$'s output and $\text{out}_{t,h,d} = g_h\, y_{t,h,d}$,
# $$\frac{\partial L}{\partial g_h} = \sum_{t, d} \frac{\partial L}{\partial \text{out}_{t,h,d}}\, y_{t,h,d},$$
# so one backward pass gives every head's score. Here $x$ ranges over
# single calibration sequences (the paper's per-example expectation).
#
# First-order Taylor reading: switching head $h$ off ($g_h$: $1 \to 0$) changes
# the loss by about $-\partial L / \partial g_h$. The absolute value, averaged
# over examples, asks whether the head matters on typical inputs, whichever
# way. A finite-difference check of one head's gate gradient, in float64:

# %%
calib = [dataset.get_batch("train", 1, rng) for _ in range(8 if FAST else 32)]  # sequences, one per batch
importance = np.stack(head_importance(model, calib))  # (layers, heads)
cfg64 = cfg.replace(dtype="float64")
model64 = GPT(cfg64, params=gate_heads({k: v.astype(np.float64) for k, v in P.items()}, cfg64, {}), backend="numpy")
x1, y1 = calib[0]
model64.forward(x1, y1)
analytic = model64.backward()["h.1.attn.head_gate"][2]
gate, h_fd = model64.params["h.1.attn.head_gate"], 1e-5
gate[2] = 1 + h_fd
up = model64.loss(x1, y1)
gate[2] = 1 - h_fd
down = model64.loss(x1, y1)
gate[2] = 1.0
numeric = (up - down) / (2 * h_fd)
print(f"layer 1 head 2, one sequence: dL/dg = {analytic:.8f} (backward), {numeric:.8f} (centered difference)")
assert abs(analytic - numeric) <= 1e-6 * max(1e-3, abs(analytic))
print("importance I_h (layer x head):\n", np.array2string(importance, precision=4))

# %% [markdown]
# Then remove heads one at a time, in three orders: least important first,
# most important first, and a random order. A head is switched off by its
# gate ($g_h = 0$), which is exactly removing its columns of `c_attn` and its
# rows of `c_proj` (checked below when we remove them for real).

# %%
L, H = importance.shape
orders = {
    "least important first": np.argsort(importance, axis=None, kind="stable"),
    "random order": np.random.default_rng(3).permutation(L * H),
    "most important first": np.argsort(-importance, axis=None, kind="stable"),
}
removal = {}
for name, order in orders.items():
    curve = [dense_loss]
    for k in range(1, L * H + 1):
        off = {}
        for flat in order[:k]:
            off.setdefault(int(flat) // H, []).append(int(flat) % H)
        curve.append(val_loss(gate_heads(P, cfg, off)))
    removal[name] = curve
for name, curve in removal.items():
    print(f"{name:<22} " + " ".join(f"{x:.3f}" for x in curve))
quarter = L * H // 4
if not FAST:  # a 30-step model's heads have not specialised: its order is noise
    assert removal["least important first"][quarter] <= removal["most important first"][quarter]

# %% [markdown]
# MLP neurons get the same score with a gate $m_n$ on neuron $n$'s activation.
# No new layer is needed: gating neuron $n$ scales row $n$ of `mlp.c_proj`'s
# weight $W_2$, so $\partial L / \partial m_n = \sum_c W_{2,nc}\, \partial L / \partial W_{2,nc}$,
# read off the gradient the backward already computes (`neuron_importance`;
# the same identity gives the head gates from `attn.c_proj`, as the tests check).

# %%
neuron_scores = neuron_importance(model, calib)  # [(F,) per layer]
F = neuron_scores[0].size
NEURON_FRACTIONS = [0.25, 0.5, 0.75]
neuron_curves = {"least important first": [], "random": []}
for frac in NEURON_FRACTIONS:
    k = round(frac * F)
    by_score = {i: np.argsort(s, kind="stable")[:k].tolist() for i, s in enumerate(neuron_scores)}
    at_random = {i: np.random.default_rng(i).permutation(F)[:k].tolist() for i in range(L)}
    neuron_curves["least important first"].append(val_loss(gate_neurons(P, by_score)))
    neuron_curves["random"].append(val_loss(gate_neurons(P, at_random)))
for name, curve in neuron_curves.items():
    print(f"neurons removed {name:<22}" + "  ".join(f"{f:.0%}: {x - dense_loss:+.3f}" for f, x in
                                                   zip(NEURON_FRACTIONS, curve)))

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), gridspec_kw={"width_ratios": [1, 1.4, 1.1]})
im = axes[0].imshow(importance, cmap="viridis")
axes[0].set_xticks(range(H))
axes[0].set_yticks(range(L))
axes[0].set_xlabel("head")
axes[0].set_ylabel("layer")
for (i, h), v in np.ndenumerate(importance):
    axes[0].text(h, i, f"{v:.3f}", ha="center", va="center", fontsize=7,
                 color="w" if v < importance.mean() else "k")
fig.colorbar(im, ax=axes[0], shrink=0.7)
axes[0].set_title("head importance E|dL/dg_h|", fontsize=10)
for name, curve in removal.items():
    axes[1].plot(range(L * H + 1), curve, "o-", ms=3, label=name)
axes[1].set_xlabel(f"heads removed (of {L * H})")
axes[1].set_ylabel("validation loss")
axes[1].set_title("removing heads in three orders", fontsize=10)
axes[1].legend(fontsize=8)
for name, curve in neuron_curves.items():
    axes[2].plot([0] + NEURON_FRACTIONS, [dense_loss] + curve, "o-", ms=3, label=name)
axes[2].set_xlabel(f"fraction of MLP neurons removed (each layer, of {F})")
axes[2].set_title("removing MLP neurons", fontsize=10)
axes[2].legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "06_pruning_heads")

# %% [markdown]
# ## Removing them for real
#
# A gate of zero still computes the head, only to multiply it by 0. Removing
# head $h$ deletes its $q, k, v$ columns of `c_attn` (weight and bias) and its
# $D$ rows of `c_proj`; removing neuron $n$ deletes column $n$ of `mlp.c_fc`
# and row $n$ of `mlp.c_proj`. The model reads each layer's head count and MLP
# width off its matrices, so the result is an ordinary, smaller GPT: it
# trains, samples, saves and loads. Its logits equal the gated model's up to
# float rounding. Half the heads of each layer and half the neurons, the
# least important ones:

# %%
half_heads = {i: np.argsort(importance[i], kind="stable")[: H // 2].tolist() for i in range(L)}
half_neurons = {i: np.argsort(s, kind="stable")[: F // 2].tolist() for i, s in enumerate(neuron_scores)}
small_params = remove_neurons(remove_heads(P, cfg, half_heads), cfg, half_neurons)
small = GPT(cfg, params=small_params, backend=model.backend, tokenizer=model.tokenizer)
gated = GPT(cfg, params=gate_neurons(gate_heads(P, cfg, half_heads), half_neurons), backend=model.backend)
logits_small, _ = small.forward(calib_x)
logits_gated, _ = gated.forward(calib_x)
max_diff = float(np.abs(logits_small - logits_gated).max())
small_loss = val_loss(small_params)
print(f"layer shapes (heads, MLP width): {model.layer_shapes()} -> {small.layer_shapes()}")
print(f"parameters {model.num_params():,} -> {small.num_params():,}; max |logit difference| to the gated model "
      f"{max_diff:.1e} (float32, logits up to {np.abs(logits_gated).max():.0f})")
print(f"validation loss {dense_loss:.4f} -> {small_loss:.4f} one-shot")
assert max_diff < 1e-4 * np.abs(logits_gated).max()
small_finetuned = GPT(cfg, params={k: v.copy() for k, v in small_params.items()}, backend=model.backend,
                      tokenizer=model.tokenizer)
train(small_finetuned, dataset, ft_config, progress=False)
small_ft_loss = val_loss(small_finetuned.params)
print(f"after {FT_STEPS} fine-tuning steps: {small_ft_loss:.4f}")
for name, net in (("dense", model), ("half the heads and neurons, fine-tuned", small_finetuned)):
    print(f"--- {name} ---\n{net.generate_text('def ', 80, temperature=0.8, seed=0)}")

# %% [markdown]
# ## Size and speed, measured side by side
#
# **Zeros are still multiplied.** A dense matrix product does the same
# multiply-adds whatever the numbers are, so a 90%-zero matrix stored
# densely costs what the full one does. Timed with NumPy's BLAS at the shape
# of GPT-2-small's `mlp.c_fc` (768 x 3072, float32), for a batch of 512 rows
# (a training step or a prompt) and for one row (one decoding step):

# %%
def median_ms(fns, repeats):
    """{name: median wall time of fn() in ms}: one untimed call each, then
    `repeats` rounds timing each fn once in turn, so that a burst of load from
    other programs falls on all of them alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


K_BIG, N_BIG = 768, 3072
w_big = (rng.standard_normal((K_BIG, N_BIG)) / np.sqrt(K_BIG)).astype(np.float32)
w_names = {"h.0.mlp.c_fc.weight": w_big}
variants = {f"{s:.0%} zeros (dense storage)": apply(w_names, random_masks(w_names, s, seed=1))["h.0.mlp.c_fc.weight"]
            for s in (0.0, 0.5, 0.9)}
variants["half the columns removed"] = np.ascontiguousarray(w_big[:, : N_BIG // 2])
matmul_ms = {}
for rows, reps in ((512, 5 if FAST else 20), (1, 50 if FAST else 300)):
    x_big = rng.standard_normal((rows, K_BIG)).astype(np.float32)
    matmul_ms[rows] = median_ms({name: lambda w=w: x_big @ w for name, w in variants.items()}, reps)
    base = matmul_ms[rows]["0% zeros (dense storage)"]
    for name, ms in matmul_ms[rows].items():
        print(f"{rows:>3} row{'s' if rows > 1 else ' '} x {name:<28} {ms:8.3f} ms   {base / ms:5.2f}x the dense speed")

# %% [markdown]
# Stored densely, the zeros change nothing; only the smaller matrix is faster.
#
# **A sparse format and a kernel that skips the zeros.** minigpt stores a
# pruned matrix as CSR by output column (`minigpt.prune.sparse`; the format
# and why it is CSR are in `minigpt/layers/sparse_linear.py`): each nonzero
# costs a float32 value and a 16-bit input index, 6 bytes instead of 4, so
# the file shrinks once more than a third of the weights are zero. Its
# product (`minigpt.kernels.sparse`) does work in proportion to the
# nonzeros, but each one needs an index load and a gather from $x$, where
# BLAS streams through contiguous memory with every vector unit busy. So the
# sparse product needs many zeros before it wins, and how many depends on
# the shape of the product. For one decoding row the work is reading the
# weights, and CSR reads fewer bytes; for a batch, BLAS reuses each weight
# across the rows at full arithmetic speed, and the sparse kernel must skip
# a large share of the work to catch up. Speed-up of the sparse product over
# the dense one of the same pruned matrix (GPT-2-small's 768 x 3072):

# %%
SPARSE_GRID = [0.5, 0.9, 0.98] if FAST else [0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98]
sparse_speedup, crossing = {}, {}
for rows, reps in ((1, 50 if FAST else 300), (512, 3 if FAST else 10)):
    x_big = rng.standard_normal((rows, K_BIG)).astype(np.float32)
    sparse_speedup[rows] = []
    for s in SPARSE_GRID:
        w_s = apply(w_names, random_masks(w_names, s, seed=2))["h.0.mlp.c_fc.weight"]
        c = csr_from_dense(w_s)
        t = median_ms({"dense": lambda w=w_s: x_big @ w,
                       "csr": lambda c=c: sparse_matmul(x_big, c["values"], c["indices"], c["indptr"])}, reps)
        sparse_speedup[rows].append(t["dense"] / t["csr"])
    crossing[rows] = crossover(list(zip(SPARSE_GRID, sparse_speedup[rows])))[1]
    print(f"{rows:>3} row{'s' if rows > 1 else ' '}: sparse / dense speed " + "  ".join(
        f"{s:.0%}: {r:.2f}x" for s, r in zip(SPARSE_GRID, sparse_speedup[rows])) + f"; sparse faster from {crossing[rows]}")

# %% [markdown]
# **The structurally pruned model.** Removing half the heads and half the
# neurons of the tiny model, measured on a training-size batch and on
# generation, and, because a model this narrow spends much of its time in
# per-op overhead, one block at GPT-2-small's shape (768 wide, 12 heads,
# MLP 3072) with half its heads and half its neurons removed:

# %%
batch_x, _ = dataset.get_batch("val", 16, rng)
nets = {"dense": model, "pruned": small}
fwd_ms = median_ms({name: lambda net=net: net.forward(batch_x) for name, net in nets.items()}, 5 if FAST else 20)
gen_tokens = 20 if FAST else 100
gen_ms = median_ms({name: lambda net=net: net.generate([0], gen_tokens, temperature=0) for name, net in nets.items()}, 3)
big_cfg = cfg.replace(n_layer=1, n_head=12, n_embd=768, block_size=256)
big_dense = init_params(big_cfg, seed=0)
big_pruned = remove_neurons(remove_heads(big_dense, big_cfg, {0: list(range(0, 12, 2))}), big_cfg,
                            {0: list(range(0, 3072, 2))})
u_big = rng.standard_normal((2 if FAST else 4, 256, 768)).astype(np.float32)
ops = op_table(model.backend)


def block_of(params):
    return {k[len("h.0."):]: v for k, v in params.items() if k.startswith("h.0.")}


block_ms = median_ms({name: lambda p=block_of(params): block_forward(u_big, p, big_cfg.head_size, ops)
                      for name, params in (("dense", big_dense), ("pruned", big_pruned))}, 3 if FAST else 10)
speedups = {"tiny model forward, 16 x 64 tokens": fwd_ms["dense"] / fwd_ms["pruned"],
            f"tiny model generation, {gen_tokens} tokens": gen_ms["dense"] / gen_ms["pruned"],
            f"GPT-2-small block forward, {u_big.shape[0]} x 256 tokens": block_ms["dense"] / block_ms["pruned"]}
for name, r in speedups.items():
    print(f"{name:<42} {r:5.2f}x faster with half the heads and neurons")

# %% [markdown]
# **Bytes on disk.** The checkpoint of the dense model; of the 90%
# magnitude-pruned model stored densely with its masks (a mask is one bit a
# weight, packed); the same model with its pruned matrices stored as CSR;
# and the structurally pruned model. Parameters only: a training checkpoint
# also holds AdamW's two moments per weight.

# %%
masks90 = magnitude_masks(P, 0.9)
pruned90 = GPT(cfg, params=apply(P, masks90), tokenizer=model.tokenizer, backend=model.backend)
csr90 = sparse_model(pruned90)
with tempfile.TemporaryDirectory() as tmp:
    files = {"dense": Path(tmp) / "dense.npz", "90% unstructured + masks": Path(tmp) / "masked.npz",
             "90% unstructured, CSR": Path(tmp) / "csr.npz", "half heads + half neurons": Path(tmp) / "small.npz"}
    model.save(files["dense"])
    save_checkpoint(files["90% unstructured + masks"], pruned90, masks=masks90)
    csr90.save(files["90% unstructured, CSR"])
    small.save(files["half heads + half neurons"])
    disk = {name: path.stat().st_size for name, path in files.items()}
for name, size in disk.items():
    print(f"{name:<28} {size:>10,} bytes   x{size / disk['dense']:.2f}")
csr_logits, _ = csr90.forward(calib_x)
dense_logits, _ = pruned90.forward(calib_x)
csr_max_diff = float(np.abs(csr_logits - dense_logits).max())
print(f"CSR model vs the same weights dense: max |logit difference| {csr_max_diff:.1e} "
      f"(the kernel may sum in another order: equal to float32 rounding, checked below)")
assert disk["90% unstructured + masks"] > disk["dense"] > disk["half heads + half neurons"]
assert disk["90% unstructured, CSR"] < disk["dense"] and csr_max_diff < 1e-4 * np.abs(dense_logits).max()

# %%
fig, axes = plt.subplots(2, 2, figsize=(12, 7))
ax = axes[0, 0]
labels = list(matmul_ms[512])
ax.barh(range(len(labels)), [matmul_ms[512][n] for n in labels], color=["C0", "C0", "C0", "C2"])
ax.set_yticks(range(len(labels)), labels, fontsize=8)
ax.invert_yaxis()
ax.set_xlabel("ms (median)")
ax.set_title("dense product x (512 x 768) @ W (768 x 3072)", fontsize=10)
ax = axes[0, 1]
for rows, marker in ((1, "o-"), (512, "s-")):
    ax.plot(SPARSE_GRID, sparse_speedup[rows], marker, ms=4,
            label=f"{rows} row{'s' if rows > 1 else ''}: faster from {crossing[rows]}")
ax.axhline(1.0, color="k", lw=0.8, ls=":")
ax.set_yscale("log")
ax.set_yticks([0.125, 0.25, 0.5, 1, 2, 4, 8])
ax.yaxis.set_major_formatter(FormatStrFormatter("%gx"))
ax.yaxis.set_minor_formatter(NullFormatter())
ax.set_xlabel("sparsity of W")
ax.set_ylabel("dense time / CSR time")
ax.set_title("CSR kernel against dense BLAS, same matrix", fontsize=10)
ax.legend(fontsize=8)
ax = axes[1, 0]
ax.barh(range(len(speedups)), list(speedups.values()), color="C2")
ax.axvline(1.0, color="k", lw=0.8, ls=":")
ax.set_yticks(range(len(speedups)), list(speedups), fontsize=8)
ax.invert_yaxis()
ax.set_xlabel("speed-up (dense time / pruned time)")
ax.set_title("half the heads and half the MLP neurons removed", fontsize=10)
ax = axes[1, 1]
ax.barh(range(len(disk)), [v / 1e3 for v in disk.values()], color=["C7", "C0", "C1", "C2"])
ax.set_yticks(range(len(disk)), list(disk), fontsize=8)
ax.invert_yaxis()
ax.set_xlabel("kB on disk")
ax.set_title("tiny model checkpoint (parameters only)", fontsize=10)
fig.suptitle("Did it get smaller or faster? Zeros stored densely: neither. CSR: smaller, faster only with "
             "many zeros. Smaller matrices: both.", fontsize=10)
fig.tight_layout()
save_figure(fig, "06_pruning_speed")

# %% [markdown]
# ## Closing note
#
# The numbers this run measured, in one place (the README quotes them from a
# full run):

# %%
print(f"dense tiny model: validation loss {dense_loss:.4f}")
print(f"sparsity at +{BUDGET} nats (one-shot / after {FT_STEPS} fine-tuning steps):")
for name, (one, ft) in headline.items():
    print(f"  {name:<10} {pct(one)} / {pct(ft)}")
print(f"  2:4 (50%)   {nm_oneshot['2:4'] - dense_loss:+.3f} / {nm24_finetuned - dense_loss:+.3f} nats")
print(f"  sensitivity {sens_total:6.0%} one-shot at +{BUDGET} on training windows (validation "
      f"{same_total_loss['sensitivity'] - dense_loss:+.3f}; uniform {same_total_loss['uniform (magnitude per tensor)'] - dense_loss:+.3f}, "
      f"global {same_total_loss['global magnitude'] - dense_loss:+.3f} at the same sparsity)")
print(f"structured, half the heads and neurons: loss {small_loss - dense_loss:+.3f} one-shot, "
      f"{small_ft_loss - dense_loss:+.3f} fine-tuned; " + ", ".join(f"{k} {v:.2f}x" for k, v in speedups.items()))
print(f"unstructured 90% stored densely: same matmul time ({matmul_ms[512]['90% zeros (dense storage)']:.2f} vs "
      f"{matmul_ms[512]['0% zeros (dense storage)']:.2f} ms), file x{disk['90% unstructured + masks'] / disk['dense']:.2f}")

# %% [markdown]
# ## Exercises
#
# 1. **Lottery tickets** (Frankle & Carbin 2019). Take `masks = magnitude_masks(P, 0.8)`
#    from the trained model. Rewind the surviving weights to their values at
#    initialisation (`init = GPT(cfg, seed=0).params`, the tiny model's own
#    seed: `apply(init, masks)`, keeping the trained LayerNorms and biases or
#    not, your choice) and train 1000 steps with `train(..., masks=masks)`;
#    then the same masks on a fresh random initialisation (`seed=1`). Check
#    first that `sparsity(masks)` is exactly `round(0.8 * n) / n` and that no
#    masked weight moved off 0. Does the rewound ticket train to a lower loss?
# 2. **Another head score.** Score each head by the norm of its output
#    instead, $\mathbb{E}\,\lVert y_h \rVert$ (from `model.activations(x)["h.{i}.attn.c_proj"]`,
#    which is the heads' outputs side by side, $D$ columns each). Redraw the
#    removal curve in your order. Check: your scores have the shape of
#    `importance`, and the curve starts at `dense_loss`. Is it above or below
#    the gate-gradient curve?
# 3. **Where global pruning cuts.** Print, for `global_masks(P, 0.6)`, each
#    matrix's own sparsity. Which kinds lose most, and why (look at how GPT-2
#    initialises `c_proj`)? Check that the pruned counts add up to exactly
#    `round(0.6 * N)` over the $N$ prunable weights (`prunable_names(P)`).
# 4. **N:M with Wanda scores.** `nm_masks(P, 2, 4, scores=...)` accepts any
#    score; pass Wanda's ($|W| \cdot \lVert X_j \rVert$, `minigpt.prune.wanda_scores`
#    with `input_norms(model, calib_x)`). Check every group of 4 keeps exactly
#    2 (`is_nm`), then compare its one-shot loss with magnitude 2:4.
