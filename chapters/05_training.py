# %% [markdown]
# # Chapter 5: Training, and sampling from what was trained
#
# Chapter 4 produced a gradient for every parameter. This chapter turns
# gradients into a model and a model into text:
#
# 1. **AdamW**: the update rule, and why its weight decay is *decoupled* and
#    applied to matrices only;
# 2. **the learning-rate schedule**: linear warm-up, then cosine decay (plotted);
# 3. **gradient clipping** by the global norm;
# 4. **training** the "small" preset on the embedded corpus (the Python
#    standard library's source), with train and validation loss curves;
# 5. **samples** from the model at several points of training;
# 6. **temperature, top-k and top-p** on the same prompt: the next-token
#    distributions they produce and the text they generate;
# 7. **the KV cache**: what it saves, measured.
#
# *Numbers quoted in the text come from a full run (`minigpt tour`, which
# also made the book's figures). A fast run (`MINIGPT_FAST=1`, for tests and
# a quick look) trains the tiny preset for 30 steps instead of the small one
# for 1500, samples only before and after that run, and times the KV cache
# at a context of 96 instead of 384: every rule and check still holds, but
# its losses and samples are those of a barely trained model.*

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np

from minigpt.config import preset
from minigpt.model import GPT
from minigpt.optim import AdamW, clip_grad_norm, decays, lr_schedule
from minigpt.pretrained import fast_mode, trained_model
from minigpt.sampling import next_token_probs
from minigpt.tour import save_figure
from minigpt.train import evaluate

FAST = fast_mode()
# The "small" preset (3 layers, C = 96, context 96). In fast mode (tests) the
# tiny preset and 30 steps keep the whole chapter to a few seconds.
PRESET = "tiny" if FAST else "small"
rng = np.random.default_rng(0)

# %% [markdown]
# ## AdamW
#
# For each parameter $\theta$ with gradient $g_t$ at step $t$ (elementwise):
#
# $$m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2,$$
# $$\hat m_t = \frac{m_t}{1 - \beta_1^t}, \qquad \hat v_t = \frac{v_t}{1 - \beta_2^t},$$
# $$\theta_t = \theta_{t-1} - \eta_t \left( \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon} + \lambda\, \theta_{t-1} \right).$$
#
# $m$ is a running mean of the gradient (momentum), $v$ a running mean of its
# square; the bias corrections undo their start at zero. Dividing by
# $\sqrt{\hat v}$ gives every entry a step of about $\eta$ whatever the scale of
# its gradient: at $t = 1$, $\hat m / \sqrt{\hat v} = g / |g| = \pm 1$ exactly.
#
# The weight decay $\lambda \theta$ is **decoupled**: it is added to the update
# *after* the Adam normalisation, so it shrinks every weight by the same factor
# $1 - \eta\lambda$. Putting it into the gradient instead ($g + \lambda\theta$, "L2
# regularisation") would let Adam normalise it away: every weight would move by
# about $\eta$, tiny weights overshooting through zero and large ones barely
# decaying. minigpt decays only 2-D tensors (the weight matrices and the
# embeddings); biases and LayerNorm gains and shifts are not pulled toward zero.

# %%
cfg_small, _ = preset("small", vocab_size=96)
shapes_model = GPT(cfg_small)
decayed = [k for k, p in shapes_model.params.items() if decays(k, p)]
kept = [k for k, p in shapes_model.params.items() if not decays(k, p)]
print(f"{len(decayed)} tensors decay (e.g. {decayed[:3]}),")
print(f"{len(kept)} do not (e.g. {kept[:3]})")
assert all(shapes_model.params[k].ndim == 2 for k in decayed)
assert all(k.endswith(".bias") or ".ln_" in k or k.startswith("ln_") for k in kept)

# The first step moves every entry by lr (its sign set by the gradient), however
# large or small the gradient:
params = {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}
before = {k: p.copy() for k, p in params.items()}
grads = {k: rng.standard_normal(p.shape) * 10.0 ** rng.integers(-4, 4, p.shape) for k, p in params.items()}
AdamW(params, lr=0.01, weight_decay=0.0).step(grads)
first_step_sizes = np.concatenate([np.abs(params[k] - before[k]).ravel() for k in params])
abs_g = np.concatenate([np.abs(grads[k]).ravel() for k in params])
print(f"first-step |update| / lr over gradients spanning {abs_g.min():.0e}..{abs_g.max():.0e}: "
      f"min {first_step_sizes.min() / 0.01:.6f}, max {first_step_sizes.max() / 0.01:.6f}")
# exactly lr * |g| / (|g| + eps): 1 up to eps / |g|, visible only for the tiniest gradients
assert np.allclose(first_step_sizes, 0.01 * abs_g / (abs_g + 1e-8), rtol=1e-9)

# %% [markdown]
# Decoupled decay against L2-in-the-gradient, one step with $\eta = 0.01$,
# $\lambda = 0.1$ and no loss gradient, on weights of very different sizes:

# %%
lr, wd = 0.01, 0.1
w0 = np.array([[1e-3, 0.1, 1.0, 10.0]])
decoupled = {"w": w0.copy(), "b": w0[0].copy()}
AdamW(decoupled, lr=lr, weight_decay=wd).step({"w": np.zeros_like(w0), "b": np.zeros(4)})
coupled = {"w": w0.copy()}
AdamW(coupled, lr=lr, weight_decay=0.0).step({"w": wd * w0})  # decay as a gradient term
print("weight            ", np.array2string(w0[0], precision=4))
print("AdamW (decoupled) ", np.array2string(decoupled["w"][0], precision=6),
      f" every weight x {1 - lr * wd}")
print("L2 through Adam   ", np.array2string(coupled["w"][0], precision=6),
      " every weight - lr: 1e-3 flips sign, 10 barely moves")
print("bias (1-D), AdamW ", np.array2string(decoupled["b"], precision=4), " unchanged")
decay_factor = decoupled["w"] / w0
assert np.allclose(decay_factor, 1 - lr * wd) and np.array_equal(decoupled["b"], w0[0])
assert np.allclose(coupled["w"] - w0, -lr, rtol=1e-3)  # -lr * |g| / (|g| + eps)

# %% [markdown]
# ## Warm-up and cosine decay
#
# The learning rate at (0-based) step $s$ of a run of $S$ steps with $W$ warm-up steps:
#
# $$\eta_s = \eta_{\max} \frac{s + 1}{W} \quad (s < W), \qquad
# \eta_s = \eta_{\min} + \tfrac12 (\eta_{\max} - \eta_{\min})\left(1 + \cos \pi r\right),
# \quad r = \frac{s - W}{S - W} \quad (s \ge W).$$
#
# Warm-up matters because Adam's $v$ is estimated from very few gradients at
# first, and the randomly initialised network's gradients are large and
# changing fast: full-size steps there can throw it into a bad region. The
# cosine then lowers the step size smoothly, so the end of training averages
# out the noise of the mini-batches instead of bouncing on it.

# %%
# vocab_size only sets the embedding size here (the corpus has about 96 characters)
# The preset's own training settings ("small": 1500 steps, warm-up 100, about
# 1.5 minutes on 2 cores); fast mode cuts the run to 30 steps.
cfg, tcfg = preset(PRESET, vocab_size=96)
STEPS, WARMUP = tcfg.steps, tcfg.warmup_steps
schedule = np.array([lr_schedule(s, tcfg.lr, tcfg.min_lr, tcfg.warmup_steps, tcfg.steps)
                     for s in range(tcfg.steps)])
print(f"{PRESET}: lr {tcfg.lr} peaks at step {int(schedule.argmax())} "
      f"(= warm-up {tcfg.warmup_steps} - 1), ends at {schedule[-1]:.2e} (min_lr {tcfg.min_lr})")
assert schedule.max() == tcfg.lr and int(schedule.argmax()) == tcfg.warmup_steps - 1
assert lr_schedule(tcfg.steps, tcfg.lr, tcfg.min_lr, tcfg.warmup_steps, tcfg.steps) == tcfg.min_lr
assert np.all(np.diff(schedule[tcfg.warmup_steps - 1:]) <= 0)  # never rises after the peak

# %%
fig, ax = plt.subplots(figsize=(6.4, 3.4))
ax.plot(np.arange(tcfg.steps), schedule, label=f"'{PRESET}' preset: {tcfg.steps} steps")
ax.axvline(tcfg.warmup_steps, color="gray", lw=0.8, ls="--")
ax.text(tcfg.warmup_steps, 1.05 * tcfg.lr, f" end of warm-up (step {tcfg.warmup_steps})", fontsize=8)
ax.axhline(tcfg.min_lr, color="gray", lw=0.8, ls=":")
ax.text(0, tcfg.min_lr, f"min_lr = {tcfg.min_lr:g}", fontsize=8, va="bottom")
ax.set_xlabel("step")
ax.set_ylabel("learning rate")
ax.set_title(f"Linear warm-up to lr = {tcfg.lr:g}, then cosine decay to min_lr")
ax.set_ylim(0, 1.25 * tcfg.lr)  # head room for the labels
save_figure(fig, "05_training_schedule")

# %% [markdown]
# ## Gradient clipping
#
# One unlucky batch can produce a gradient many times larger than usual.
# Clipping by the *global* norm rescales all gradients together,
#
# $$\|g\| = \sqrt{\textstyle\sum_{\text{tensors}} \sum g^2}, \qquad
# g \leftarrow g \cdot \min\!\left(1, \frac{c}{\|g\|}\right),$$
#
# so the step keeps its direction and only its length is capped at $c$
# (`grad_clip`, 1.0 in the presets). Below: the untrained model's gradient on
# one batch, clipped to $c = 0.5$ so that the clip actually bites.

# %%
probe = GPT(cfg, seed=0)
probe_x = rng.integers(0, cfg.vocab_size, size=(4, cfg.block_size))
probe.forward(probe_x, np.roll(probe_x, -1, axis=1))
g = probe.backward()
g_before = {k: v.copy() for k, v in g.items()}
norm_before = clip_grad_norm(g, 0.5)
norm_after = math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in g.values()))
flat_b = np.concatenate([v.ravel() for v in g_before.values()]).astype(np.float64)
flat_a = np.concatenate([v.ravel() for v in g.values()]).astype(np.float64)
clip_cosine = float(flat_a @ flat_b / (np.linalg.norm(flat_a) * np.linalg.norm(flat_b)))
print(f"global norm {norm_before:.3f} -> {norm_after:.6f} after clipping to 0.5; "
      f"cosine(before, after) = {clip_cosine:.9f}")
assert abs(norm_after - 0.5) < 1e-5 and abs(clip_cosine - 1) < 1e-6

# %% [markdown]
# ## Training the small model
#
# `trained_model` runs minigpt's training loop (`minigpt.train.train`: batches
# of random windows, forward, backward, clip, AdamW step with the scheduled
# learning rate, validation every few steps) and caches the result, so running
# this chapter again loads it instead of training. Before any training the
# model predicts nearly uniformly over the $V$ characters, so the loss starts
# near $\ln V$. It starts a little below: with the embedding tied to the
# output head, an untrained model already gives the *current* character
# about 2.5 times its uniform share, and in Python source about one
# character in five repeats the one before it (runs of indentation spaces).
# The loss in nats divided by $\ln 2$ is bits per character.

# %%
t0 = time.perf_counter()
model, dataset, ckpt = trained_model(PRESET)
train_seconds = time.perf_counter() - t0
history = ckpt.meta["history"]
train_curve = np.array(history["train"])  # (steps, 2): step, loss
val_curve = np.array(history["val"])  # (evals, 2)
V = model.config.vocab_size
uniform_loss = math.log(V)
first_loss, final_val = float(train_curve[0, 1]), float(val_curve[-1, 1])
print(f"{PRESET}: {model.num_params():,} parameters, {ckpt.step} steps "
      f"({train_seconds:.1f} s here, including any cache load)")
print(f"first training loss {first_loss:.3f} (ln V = ln {V} = {uniform_loss:.3f})")
print(f"final validation loss {final_val:.3f} nats = {final_val / math.log(2):.3f} bits per character")
assert abs(first_loss - uniform_loss) < 0.5
assert final_val < uniform_loss - 0.5 and final_val < float(val_curve[0, 1])

# %%
fig, ax = plt.subplots(figsize=(6.4, 4))
ax.plot(train_curve[:, 0], train_curve[:, 1], color="C0", alpha=0.3, lw=0.8, label="train (each batch)")
k = max(1, len(train_curve) // 20)
smooth = np.convolve(train_curve[:, 1], np.ones(k) / k, mode="valid")
ax.plot(train_curve[k - 1:, 0], smooth, color="C0", label=f"train ({k}-step mean)")
ax.plot(val_curve[:, 0], val_curve[:, 1], "o-", color="C3", ms=4, label="validation")
ax.axhline(uniform_loss, color="gray", ls=":", lw=1)
ax.text(train_curve[-1, 0], uniform_loss, f"uniform guess, ln {V}", ha="right", va="bottom", fontsize=8)
ax.set_xlabel("step")
ax.set_ylabel("cross-entropy (nats per character)")
ax.set_title(f"Training the '{PRESET}' GPT on Python's standard library\n"
             f"final validation loss {final_val:.2f} nats = {final_val / math.log(2):.2f} bits/char")
ax.legend(fontsize=8)
save_figure(fig, "05_training")

# %% [markdown]
# ## What the model writes as it learns
#
# Separate runs of increasing length (each with its own full warm-up and
# cosine schedule, each cached), sampled from the same prompt with the same
# seed at temperature 0.8. First the character frequencies appear, then
# spaces and indentation, then keywords, then something like Python. (A fast
# run shows only the untrained model and its 30-step one.)

# %%
PROMPT = "    def __init__(self, "
# the model trained above is the last one (ckpt.step: the preset's steps, or 30 in fast mode)
sample_steps = [0, ckpt.step] if FAST else [0, 50, 200, ckpt.step]
samples, sample_losses = {}, {}
for n in sample_steps:
    if n == 0:
        m = GPT(model.config, seed=0, tokenizer=model.tokenizer)
        sample_losses[n] = evaluate(m, dataset, "val", tcfg.batch_size, ckpt.train_config.eval_batches)
    elif n == ckpt.step:
        m, sample_losses[n] = model, final_val
    else:  # a shorter run, warm-up scaled down with it
        m, _, c = trained_model(PRESET, steps=n, warmup_steps=n // 10, eval_every=n, progress=False)
        sample_losses[n] = c.meta["history"]["val"][-1][1]
    samples[n] = m.generate_text(PROMPT, 160, temperature=0.8, seed=0)
    print(f"--- after {n} steps (validation loss {sample_losses[n]:.2f}) ---")
    print(samples[n])
assert sample_losses[ckpt.step] < sample_losses[0]

# %% [markdown]
# ## Temperature, top-k and top-p
#
# The model gives logits $z$ for the next character. Sampling draws from
#
# * **temperature** $\tau$: $p = \text{softmax}(z / \tau)$. $\tau < 1$ sharpens the
#   distribution (at $\tau \to 0$, greedy argmax), $\tau > 1$ flattens it;
# * **top-k**: keep the $k$ largest logits, renormalise, drop the rest;
# * **top-p** (nucleus): keep the smallest set of most likely tokens whose
#   probabilities sum to at least $p$, renormalise. Unlike top-k, the number
#   kept adapts: few tokens where the model is sure, many where it is not.
#
# `minigpt.sampling.next_token_probs` applies them (temperature first); below,
# the distributions it gives after the same prompt.

# %%
ids = np.array(model.tokenizer.encode(PROMPT))[None, :]  # (1, T)
logits, _ = model.forward(ids)
last = logits[:, -1, :]  # (1, V)
SETTINGS = {
    "T = 1": dict(temperature=1.0),
    "T = 0.5": dict(temperature=0.5),
    "T = 1.5": dict(temperature=1.5),
    "top-k = 5": dict(temperature=1.0, top_k=5),
    "top-p = 0.9": dict(temperature=1.0, top_p=0.9),
}
dists = {name: next_token_probs(last, **kw)[0] for name, kw in SETTINGS.items()}


def entropy(p):
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum())


p1 = dists["T = 1"]
nucleus = dists["top-p = 0.9"] > 0
nucleus_mass = float(p1[nucleus].sum())
smallest_kept = float(p1[nucleus].min())
topk_nonzero = int((dists["top-k = 5"] > 0).sum())
entropies = {name: entropy(p) for name, p in dists.items()}
for name, p in dists.items():
    print(f"{name:<12} tokens kept {int((p > 0).sum()):3d}   entropy {entropies[name]:.3f} nats   "
          f"most likely {model.tokenizer.chars[int(p.argmax())]!r} {p.max():.3f}")
print(f"top-p keeps {int(nucleus.sum())} tokens holding {nucleus_mass:.3f} of the T = 1 mass; "
      f"without its least likely member it would hold {nucleus_mass - smallest_kept:.3f} < 0.9")
assert all(abs(p.sum() - 1) < 1e-12 for p in dists.values())
assert topk_nonzero == 5
assert nucleus_mass >= 0.9 > nucleus_mass - smallest_kept
assert entropies["T = 0.5"] < entropies["T = 1"] < entropies["T = 1.5"]

# %%
show = np.argsort(-p1)[:14]  # the 14 most likely characters at T = 1, in that order
labels = [repr(model.tokenizer.chars[i])[1:-1].replace(" ", "\u2423") for i in show]
fig, axes = plt.subplots(1, len(dists), figsize=(11, 2.8), sharey=True)
for ax, (name, p) in zip(axes, dists.items()):
    ax.bar(range(len(show)), p[show], color="C0", alpha=0.8, label=name)
    ax.bar(range(len(show)), p1[show], fill=False, edgecolor="k", lw=0.7, label="T = 1", zorder=3)
    ax.set_xticks(range(len(show)), labels, fontsize=8)
    ax.set_title(f"{name}\n{int((p > 0).sum())} kept, H = {entropies[name]:.2f}", fontsize=9)
axes[0].set_ylabel("next-character probability")
axes[-1].legend(["this rule", "T = 1 (outline)"], fontsize=7)
space_note = " (\u2423 = space)" if "\u2423" in "".join(labels) else ""
fig.suptitle(f"After {PROMPT.strip()!r}: one set of logits, five sampling rules{space_note}", fontsize=10)
fig.tight_layout()
save_figure(fig, "05_training_sampling")

# %% [markdown]
# And the text each rule produces from the same prompt and seed. Low
# temperature repeats the safest patterns; high temperature invents
# identifiers; top-k and top-p cut off the long tail of unlikely characters
# that makes plain sampling drift into noise.

# %%
generated = {}
for name, kw in {"greedy (T = 0)": dict(temperature=0.0), **SETTINGS}.items():
    generated[name] = model.generate_text(PROMPT, 120, seed=1, **kw)
    print(f"--- {name} ---\n{generated[name]}")

# %% [markdown]
# ## The KV cache
#
# Generating a token needs the last position's logits. Without a cache, step
# $t$ runs the whole prefix of $t$ tokens through the network again, and $N$
# new tokens cost $\sum_t t = O(N^2)$ token-passes. But the keys and values of
# earlier positions never change (causal attention: a position sees only the
# past), so the model can keep them, one $(K, V)$ pair of shape $(B, H, T, D)$
# per layer, and feed only the newest token: $O(N)$ token-passes, each
# attending over the cached keys. The logits are the same, so the tokens are too.
#
# Measured on the trained model, greedy decoding from the prompt until the
# context window ($T_{\max}$) is full, median of a few repeats:

# %%
prompt_ids = np.array(model.tokenizer.encode(PROMPT))
n_new = model.config.block_size - len(prompt_ids)
repeats = 3 if FAST else 5


def median_seconds(net, prompt, n, use_kv_cache, reps):
    """Median wall time of generating n greedy tokens; also returns the tokens."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = net.generate(prompt, n, temperature=0.0, use_kv_cache=use_kv_cache)
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


seconds_cached, tokens_cached = median_seconds(model, prompt_ids, n_new, True, repeats)
seconds_uncached, tokens_uncached = median_seconds(model, prompt_ids, n_new, False, repeats)
kv_speedup = seconds_uncached / seconds_cached
greedy_identical = bool(np.array_equal(tokens_cached, tokens_uncached))
sampled_identical = bool(np.array_equal(
    model.generate(prompt_ids, n_new, temperature=1.0, top_p=0.95, seed=5, use_kv_cache=True),
    model.generate(prompt_ids, n_new, temperature=1.0, top_p=0.95, seed=5, use_kv_cache=False)))
print(f"{n_new} new tokens: without cache {seconds_uncached * 1e3:.0f} ms, "
      f"with cache {seconds_cached * 1e3:.0f} ms -> {kv_speedup:.1f}x faster")
print(f"identical tokens: greedy {greedy_identical}, sampled with the same seed {sampled_identical}")
assert greedy_identical and sampled_identical
# Timings on a busy shared machine are noisy, so the chapter checks only the sign.
assert kv_speedup > 1.0

# %% [markdown]
# At this size the gain is modest: with a context of only $T_{\max}$ = 96 and
# a width of 96 (the small preset; 64 and 64 for a fast run's tiny model),
# a forward pass over the whole prefix is cheap, and much of the time per
# token is the fixed cost of calling some forty small ops. The $O(N^2)$
# term takes over as the context grows. Timing does not depend on the
# weights, so an untrained model of the same shape but a longer context shows
# how the two costs scale with the number of tokens generated:

# %%
LONG = 96 if FAST else 384
long_model = GPT(model.config.replace(block_size=LONG), seed=0)
long_lengths = [LONG // 8, LONG // 4, LONG // 2, LONG - 1]
long_times = {True: [], False: []}
for n in long_lengths:
    for use in (True, False):
        long_times[use].append(median_seconds(long_model, np.array([0]), n, use, 3)[0])
long_speedups = [a / b for a, b in zip(long_times[False], long_times[True])]
for n, a, b, r in zip(long_lengths, long_times[False], long_times[True], long_speedups):
    print(f"context {LONG}, {n:4d} tokens: without cache {a * 1e3:7.0f} ms, with {b * 1e3:6.0f} ms, "
          f"{r:5.1f}x")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
ax = axes[0]
ax.bar([0, 1], [seconds_uncached * 1e3, seconds_cached * 1e3], color=["C3", "C0"])
ax.set_xticks([0, 1], ["no cache", "KV cache"])
ax.set_ylabel("time (ms, median)")
ax.set_title(f"Trained '{PRESET}' model, {n_new} tokens:\n{kv_speedup:.1f}x faster, identical tokens")
ax = axes[1]
ax.plot(long_lengths, np.array(long_times[False]) * 1e3, "o-", color="C3", label="no cache: re-run the prefix")
ax.plot(long_lengths, np.array(long_times[True]) * 1e3, "o-", color="C0", label="KV cache: one new position")
for n, t, r in zip(long_lengths, long_times[False], long_speedups):
    ax.annotate(f"{r:.1f}x", (n, t * 1e3), textcoords="offset points", xytext=(-8, 6), fontsize=8)
ax.set_ylim(0, 1.15 * max(long_times[False]) * 1e3)  # room for the labels
ax.set_xlabel("tokens generated")
ax.set_ylabel("time (ms, median)")
ax.set_title(f"Same shape, context {LONG} (untrained):\nquadratic vs linear in the tokens generated")
ax.legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "05_training_kv_cache")

# %% [markdown]
# ## Exercises
#
# 1. **No warm-up.** Train with `trained_model("small", steps=300, warmup_steps=0,
#    lr=6e-3)` and compare `ckpt.meta["history"]["train"][:30]` with
#    `trained_model("small", steps=300, lr=6e-3)` (warm-up 100). Then set
#    `grad_clip=0` (no clipping) as well. Which run's early losses spike, and
#    where does each end?
# 2. **Top-p by hand.** For the T = 1 distribution above, sort the
#    probabilities, take their cumulative sum, and find how many tokens
#    nucleus sampling keeps for p = 0.5, 0.9 and 0.99. Check your counts against
#    `(next_token_probs(last, top_p=p) > 0).sum()`.
# 3. **Where the cache pays.** Generate for a batch of 8 prompts at once
#    (`model.generate(np.tile(prompt_ids, (8, 1)), n_new, temperature=0.0,
#    use_kv_cache=...)`) and time both ways. Predict first: does the speed-up
#    grow or shrink compared with one prompt? (Hint: which cost is fixed per
#    call, and which grows with the number of positions processed?)
