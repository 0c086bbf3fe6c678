# %% [markdown]
# # Chapter 8: Knowledge distillation
#
# A small model trained on the text alone learns from one-hot targets: at each
# position, "the next character is `e`", nothing more. A trained teacher knows
# more than that: it gives every character a probability, and the wrong ones
# it finds plausible (`a` where the text has `e`, a space where it has a
# newline) say something about the language that the one-hot label does not.
# Distillation (Hinton, Vinyals & Dean 2015) trains a smaller student to
# match those probabilities, softened by a temperature $T$.
#
# This chapter builds it on the pieces of the earlier chapters: the loss is a
# forward/backward pair like every layer (`minigpt.distill.loss`), its
# gradient enters the student through `GPT.backward(dlogits)`, and the
# student trains in the same loop as every other model (`minigpt.train.train`
# with a `loss_fn`). In order:
#
# 1. soft targets: the teacher's next-character distribution at several
#    temperatures, and what "dark knowledge" is here;
# 2. the loss, its gradient derived and checked, and why the soft term carries $T^2$;
# 3. students: a smaller shape, started from the teacher's weights or at random;
# 4. the fair experiment: the same student trained from scratch on the text,
#    by distillation, and by distillation from a teacher initialisation, same
#    steps, same batches;
# 5. a temperature sweep and an $\alpha$ sweep;
# 6. size and speed: parameters, bytes and generation tokens/s, and samples;
# 7. an errata box on a "knowledge distillation" snippet that circulates in tutorials;
# 8. exercises with checks.
#
# *Numbers quoted in the text come from a full run (`minigpt tour`, which also
# made the book's figures), on a 2-core Intel Xeon (family 6 model 207) shared
# with other work. A fast run (`MINIGPT_FAST=1`, for tests and a quick look)
# uses a teacher trained for 30 steps and students trained for 10, so its
# numbers differ and distillation has nothing to teach yet.*

# %%
import math
import os
import time

import matplotlib.pyplot as plt
import numpy as np

from minigpt.bench import cpu_model
from minigpt.distill import (TeacherLogits, distill, distill_backward, distill_forward, layer_map, make_student,
                             soft_targets, student_config)
from minigpt.distill.student import summarize
from minigpt.errors import ConfigError
from minigpt.gradcheck import numerical_gradient, relative_error
from minigpt.model import GPT
from minigpt.pretrained import fast_mode, trained_model
from minigpt.prune.cli import param_bytes
from minigpt.sampling import generation_speeds
from minigpt.tour import save_figure
from minigpt.train import evaluate, train

FAST = fast_mode()
teacher, dataset, teacher_ckpt = trained_model("tiny", progress=False)
tok = teacher.tokenizer
V = teacher.config.vocab_size
EVAL_BATCHES = 4 if FAST else 20


def val_loss(m):
    return evaluate(m, dataset, "val", 32, EVAL_BATCHES)


teacher_loss = val_loss(teacher)
c = teacher.config
print(f"teacher: {c.n_layer} layers, C = {c.n_embd}, {c.n_head} heads, {teacher.num_params():,} parameters, "
      f"trained {teacher_ckpt.step} steps; validation loss {teacher_loss:.4f}")

# %% [markdown]
# ## 1. Soft targets
#
# The teacher's distribution at temperature $T$ is $p = \mathrm{softmax}(t / T)$
# for its logits $t$. $T = 1$ is the model's own prediction; $T > 1$ flattens
# it (the logits' differences shrink), $T < 1$ sharpens it; the order of the
# characters never changes. We take a validation position where the teacher
# hesitates (its top choice has between 30% and 70%) and look at it at four
# temperatures.

# %%
x_val, y_val = next(dataset.iter_eval_batches("val", 8))
t_val, _ = teacher.forward(x_val)  # (8, T, V)
p1 = soft_targets(t_val, 1.0)  # (8, T, V)
top = p1.max(-1)
b, pos = map(int, np.argwhere((top > 0.3) & (top < 0.7))[0])
context = tok.decode(x_val[b, max(0, pos - 30):pos + 1])
truth = tok.decode([y_val[b, pos]])
TEMPS = (0.5, 1.0, 2.0, 4.0)
dists = {T: soft_targets(t_val[b, pos], T) for T in TEMPS}
order = np.argsort(-dists[1.0])[:12]
print(f"context ...{context!r} -> next character {truth!r}")
for T in TEMPS:
    p = dists[T]
    entropy = -(p * np.log(p)).sum()
    print(f"T = {T:<4} entropy {entropy:.2f} nats; " +
          ", ".join(f"{tok.decode([j])!r} {p[j]:.3f}" for j in order[:6]))
entropies = [-(dists[T] * np.log(dists[T])).sum() for T in TEMPS]
assert all(a < b for a, b in zip(entropies, entropies[1:]))  # flatter as T grows
assert all(int(dists[T].argmax()) == int(order[0]) for T in TEMPS)  # same favourite at every T

wrong = [j for j in order if j != y_val[b, pos]][:5]
print("the teacher's most likely characters other than the one in the text, at T = 1: " +
      ", ".join(f"{tok.decode([j])!r} {dists[1.0][j]:.3f}" for j in wrong))
others = {T: 1.0 - float(dists[T][order[0]]) for T in TEMPS}  # mass off the teacher's favourite
print("mass on everything but the teacher's favourite: " + ", ".join(f"T {T:g}: {m:.2f}" for T, m in others.items()))
assert all(a < b for a, b in zip(others.values(), list(others.values())[1:]))

fig, ax = plt.subplots(figsize=(8, 3.2))
w = 0.8 / len(TEMPS)
for k, T in enumerate(TEMPS):
    ax.bar(np.arange(len(order)) + (k - 1.5) * w, dists[T][order], w, label=f"T = {T}")
ax.set_xticks(range(len(order)), ["space" if tok.decode([j]) == " " else repr(tok.decode([j]))[1:-1] for j in order])
ax.set_ylabel("teacher's probability")
ax.set_title(f"after ...{context[-20:]!r} (the text has {truth!r}): softmax(t / T)", fontsize=10)
ax.legend()
fig.tight_layout()
save_figure(fig, "08_distillation_soft_targets")

# %% [markdown]
# ## 2. The loss and its gradient
#
# Per position, with teacher logits $t$, student logits $s$ and label $y$:
#
# $$L = \alpha\, T^2\, \mathrm{KL}\big(\mathrm{softmax}(t/T)\,\|\,\mathrm{softmax}(s/T)\big) + (1-\alpha)\,\mathrm{CE}(s, y),$$
#
# averaged over all positions. Write $p = \mathrm{softmax}(t/T)$,
# $q = \mathrm{softmax}(s/T)$ and $u = s/T$. The KL is
# $\sum_j p_j \log p_j - \sum_j p_j u_j + \log\sum_k e^{u_k}$; $p$ does not
# depend on $s$, so $\partial \mathrm{KL} / \partial u_j = -p_j + q_j$, and
# $\partial u / \partial s = 1/T$:
#
# $$\frac{\partial L}{\partial s} = \alpha\, T\, (q - p) + (1 - \alpha)\,(\mathrm{softmax}(s) - \mathrm{onehot}(y)).$$
#
# Why $T^2$? For large $T$, $e^{u} \approx 1 + u$, so with zero-mean logits
# $q_j \approx (1 + s_j/T)/V$ and $p_j \approx (1 + t_j/T)/V$:
# $q - p \approx (s - t)/(V T)$. The KL's own gradient therefore shrinks as
# $1/T^2$; multiplied by $T^2$ it tends to $(s - t)/V$, *the same at every
# temperature* (matching logits, Caruana's and Hinton's observation). Without
# the $T^2$, raising $T$ would quietly turn the soft term off, and a
# temperature sweep would really be a sweep of its weight. Checked on the
# teacher's logits against a student's (a fresh student, so $s \ne t$):

# %%
fresh, _ = make_student(teacher, n_layer=1, n_embd=32, n_head=2, init="teacher")
s_val, _ = fresh.forward(x_val[:2])  # (2, T, V)
s0 = s_val - s_val.mean(-1, keepdims=True)  # zero-mean rows: softmax does not see the mean
t0 = t_val[:2] - t_val[:2].mean(-1, keepdims=True)
limit = (s0 - t0) / (V * s0[..., 0].size)  # (s - t) / V, averaged over positions
print(f"{'T':>6}{'|grad KL|':>14}{'|grad T^2 KL|':>16}{'distance to (s - t)/V':>24}")
t2_rows = []
for T in (1.0, 2.0, 5.0, 20.0, 100.0, 1000.0):
    _, cache = distill_forward(s0, t0, None, T, 1.0)
    g = distill_backward(1.0, cache)  # the T^2-scaled soft term's gradient
    rel = np.linalg.norm(g - limit) / np.linalg.norm(limit)
    t2_rows.append((T, np.linalg.norm(g) / T ** 2, np.linalg.norm(g), rel))
    print(f"{T:>6g}{t2_rows[-1][1]:>14.2e}{t2_rows[-1][2]:>16.2e}{rel:>24.2e}")
assert t2_rows[-1][3] < 0.01 and t2_rows[-1][1] < 1e-5 * t2_rows[0][1]

# the hand-written gradient against centered finite differences (float64), a few T and alpha
y2 = y_val[:2]
s64, t64 = s_val.astype(np.float64)[:, :8], t_val[:2].astype(np.float64)[:, :8]
fd_errors = {}
for T, alpha in ((0.5, 0.3), (2.0, 0.5), (10.0, 0.9)):
    _, cache = distill_forward(s64, t64, y2[:, :8], T, alpha)
    num = numerical_gradient(lambda: distill_forward(s64, t64, y2[:, :8], T, alpha)[0], s64)
    fd_errors[T, alpha] = relative_error(distill_backward(1.0, cache), num)
print("gradient vs finite differences, relative error: " +
      ", ".join(f"T={T:g} alpha={a:g}: {e:.1e}" for (T, a), e in fd_errors.items()))
assert max(fd_errors.values()) < 1e-6

# %% [markdown]
# ## 3. Students
#
# The student keeps the teacher's vocabulary and context (the loss compares
# logits over the same characters) and is smaller in every other way:
# 1 block instead of 2, $C = 32$ instead of 64, 2 heads instead of 4 (so the
# head size stays 16). Two ways to start it:
#
# * **random**: GPT-2's initialisation, as for any new model;
# * **from the teacher** (DistilBERT's recipe, Sanh et al. 2019): student
#   block $i$ starts as teacher block $\lfloor i L_t / L_s \rfloor$ (every other
#   block), the embeddings and the final LayerNorm are copied, and because the
#   student is narrower every tensor is *sliced*: the first 32 of the 64
#   width dimensions, heads 0 and 1 of each of q, k, v, the first 128 MLP
#   neurons. Nothing orders the dimensions, so the slice is an arbitrary
#   choice; what it keeps is the embeddings' and the layers' learned
#   structure on the dimensions it keeps.

# %%
S_LAYERS, S_EMBD, S_HEADS = 1, 32, 2
scfg = student_config(teacher.config, S_LAYERS, S_EMBD, S_HEADS)
probe, report = make_student(teacher, S_LAYERS, S_EMBD, S_HEADS, init="teacher")
print(f"student: {scfg.n_layer} layer, C = {scfg.n_embd}, {scfg.n_head} heads, {probe.num_params():,} parameters "
      f"({probe.num_params() / teacher.num_params():.0%} of the teacher's); blocks from teacher blocks "
      f"{layer_map(teacher.config.n_layer, S_LAYERS)}")
print(f"init from the teacher: {summarize(report)}; e.g. "
      + ", ".join(f"{k} <- {report[k]}" for k in ("wte.weight", "h.0.attn.c_attn.weight", "ln_f.weight")))
sliced_loss = val_loss(probe)
print(f"validation loss before any training: teacher-initialised {sliced_loss:.3f}, "
      f"random {val_loss(make_student(teacher, S_LAYERS, S_EMBD, S_HEADS, init='random')[0]):.3f} "
      f"(ln V = {math.log(V):.3f})")

# %% [markdown]
# ## 4. The fair experiment
#
# Same student shape, same number of steps, same batches (the batch sampler
# is seeded by the run's seed, so every run draws the same windows: same
# tokens seen), same optimiser settings as the teacher's run. Only the loss
# and the starting point differ:
#
# * (a) **from scratch**: random init, cross-entropy on the text ($\alpha = 0$);
# * (b) **distilled**: random init, $T = 1$, $\alpha = 0.5$ (section 5 shows why not a higher $T$);
# * (c) **distilled from a teacher initialisation**: (b) started from the sliced teacher;
# * (d) **teacher initialisation, text only**: what the snippet of section 7 does
#   when the shapes allow it, a control for (c).
#
# Distilled runs pay for a teacher forward each step (reported below). The
# runs share a `TeacherLogits` cache: they see the same batches, so the
# teacher runs once per batch for the whole chapter.

# %%
STEPS = 10 if FAST else 600
tcfg = teacher_ckpt.train_config.replace(steps=STEPS, warmup_steps=max(1, STEPS // 10), eval_every=max(1, STEPS // 5),
                                         eval_batches=EVAL_BATCHES // 2, checkpoint_every=STEPS, seed=1)
T_MAIN, ALPHA_MAIN = 1.0, 0.5
cache = TeacherLogits(teacher)
runs, students, seconds = {}, {}, {}


def run(name, init, temperature=None, alpha=None):
    student, _ = make_student(teacher, S_LAYERS, S_EMBD, S_HEADS, init=init, seed=0)
    t0 = time.perf_counter()
    if alpha is None:  # the text alone
        res = train(student, dataset, tcfg, progress=False)
    else:
        res = distill(student, teacher, dataset, tcfg, temperature, alpha, cache=cache, progress=False)
    seconds[name] = time.perf_counter() - t0
    runs[name], students[name] = res, student
    final = val_loss(student)
    print(f"{name:<40} validation loss {final:.4f}  ({seconds[name]:.1f} s)")
    return final


final = {}
final["(a) from scratch"] = run("(a) from scratch", "random")
final["(b) distilled"] = run("(b) distilled", "random", T_MAIN, ALPHA_MAIN)
final["(c) distilled, teacher init"] = run("(c) distilled, teacher init", "teacher", T_MAIN, ALPHA_MAIN)
final["(d) teacher init, text only"] = run("(d) teacher init, text only", "teacher")
print(f"teacher logits: {cache.misses} batches computed, {cache.hits} reused")
assert all(r.step == STEPS for r in runs.values())
assert all(math.isfinite(v) for v in final.values())

# %%
gain_b = final["(a) from scratch"] - final["(b) distilled"]
gain_c = final["(a) from scratch"] - final["(c) distilled, teacher init"]
gain_cd = final["(d) teacher init, text only"] - final["(c) distilled, teacher init"]
print(f"distillation vs scratch (both random init): {gain_b:+.4f} nats lower")
print(f"distillation from the teacher init vs scratch: {gain_c:+.4f} nats lower; "
      f"vs the same init on the text alone: {gain_cd:+.4f}")

# %% [markdown]
# In the full run (600 steps of 16 windows of 64 characters, about 614,000
# characters per run): from scratch 2.347 nats/char, distilled 2.285
# (0.062 lower), distilled from the teacher initialisation 1.948 (0.399 lower
# than scratch). The teacher initialisation is most of that gain; on top of
# it distillation still adds: 1.948 against 1.987 for the same start trained
# on the text alone (0.039 lower). The curves (below) stay in the same order
# at every validation. Per step, a distilled run also pays for the teacher's
# forward, more than the 17,888-parameter student's own step; with the
# cache the chapter pays it once per batch.

# %%
fig, ax = plt.subplots(figsize=(7, 3.6))
for name, res in runs.items():
    steps_, vals = zip(*res.val_losses)
    ax.plot(steps_, vals, marker="o", ms=3, label=f"{name} ({final[name]:.3f})")
ax.axhline(teacher_loss, color="k", ls=":", lw=1, label=f"teacher ({teacher_loss:.3f})")
ax.set_xlabel("step (same batches in every run)")
ax.set_ylabel("validation loss (nats/char)")
ax.set_title(f"student {S_LAYERS}x{S_EMBD}x{S_HEADS} heads, T = {T_MAIN}, alpha = {ALPHA_MAIN}", fontsize=10)
ax.legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "08_distillation_curves")

# %% [markdown]
# ## 5. Temperature and $\alpha$
#
# Both sweeps start from random init (where the teacher's targets are the only
# thing the teacher contributes), same steps and batches as above.
# $\alpha = 0$ is run (a); $T = 1, \alpha = 0.5$ is run (b).

# %%
SWEEP_T = (1.0, 2.0, 4.0)
SWEEP_ALPHA = (0.0, 0.5, 0.9, 1.0)
t_sweep = {T: (final["(b) distilled"] if T == T_MAIN else run(f"T = {T:g}, alpha = {ALPHA_MAIN}", "random", T,
                                                                ALPHA_MAIN)) for T in SWEEP_T}
a_sweep = {}
for a in SWEEP_ALPHA:
    if a == 0.0:
        a_sweep[a] = final["(a) from scratch"]
    elif a == ALPHA_MAIN:
        a_sweep[a] = final["(b) distilled"]
    else:
        a_sweep[a] = run(f"T = {T_MAIN:g}, alpha = {a:g}", "random", T_MAIN, a)
best_T = min(t_sweep, key=t_sweep.get)
best_alpha = min(a_sweep, key=a_sweep.get)
print(f"best T {best_T:g} ({t_sweep[best_T]:.4f}); best alpha {best_alpha:g} ({a_sweep[best_alpha]:.4f}); "
      f"from scratch {final['(a) from scratch']:.4f}")

fig, axes = plt.subplots(1, 2, figsize=(8, 3), sharey=True)
axes[0].plot(SWEEP_T, [t_sweep[T] for T in SWEEP_T], "o-")
axes[0].set_xscale("log", base=2)
axes[0].set_xlabel(f"temperature T (alpha = {ALPHA_MAIN})")
axes[1].plot(SWEEP_ALPHA, [a_sweep[a] for a in SWEEP_ALPHA], "o-")
axes[1].set_xlabel(f"alpha (T = {T_MAIN:g}); 0 = text only")
for ax in axes:
    ax.axhline(final["(a) from scratch"], color="gray", ls="--", lw=1, label="from scratch")
axes[0].set_ylabel(f"validation loss after {STEPS} steps")
axes[0].legend(fontsize=8)
fig.suptitle("student from random init: soft-target settings", fontsize=10)
fig.tight_layout()
save_figure(fig, "08_distillation_sweeps")

# %% [markdown]
# What a higher temperature asks of the student. The soft targets at $T$
# spread the teacher's probability onto characters the teacher itself rules
# out at $T = 1$; with $T^2$ the student's gradient is as large at $T = 4$ as
# at $T = 1$, but much of it now says "match the teacher's logits for
# characters that never come next here". Below: the share of the soft
# targets' mass on characters the teacher gives less than 1% at $T = 1$,
# over the validation windows of section 1.

# %%
p_1 = soft_targets(t_val, 1.0)  # (8, T, V)
unlikely = p_1 < 0.01
tail_mass = {T: float((soft_targets(t_val, T) * unlikely).sum(-1).mean()) for T in SWEEP_T}
print("soft-target mass on characters below 1% at T = 1: " +
      ", ".join(f"T {T:g}: {m:.0%}" for T, m in tail_mass.items()))
assert all(a < b for a, b in zip(tail_mass.values(), list(tail_mass.values())[1:]))

# %% [markdown]
# The full run's answer: at this budget **a higher temperature does not
# help**. With $\alpha = 0.5$, $T = 1$ gives 2.286, $T = 2$ gives 2.344 (as
# good as scratch, 2.347), $T = 4$ gives 2.359 (worse than scratch). At
# $T = 1$, 6% of the soft targets' mass sits on characters the teacher rules
# out (< 1%); at $T = 2$, 39%; at $T = 4$, 73%. A one-block, 32-wide student
# after 600 steps is still learning which characters come next at all;
# matching the teacher's ranking of the impossible ones spends its gradient
# where validation loss (measured at $T = 1$) does not look. Hinton et al.
# used high temperatures for students close in capacity to their teachers
# and trained to convergence; this one is neither. The $\alpha$ sweep at
# $T = 1$ points the same way: the more of the loss is the teacher's full
# distribution instead of the one-hot label, the better: 2.347 (labels
# only), 2.286 (0.5), 2.246 (0.9), 2.241 (1.0, soft targets only). At
# $T = 1$ the soft target is a better-informed label: the right character's
# probability plus the teacher's view of the plausible alternatives, at
# the same sharpness the validation loss measures.

# %% [markdown]
# ## 6. Size and speed
#
# What the student saves: parameters, bytes and generation speed (greedy
# decoding with the KV cache, the median of 5 rounds that time teacher and
# student in turn, so load from other programs falls on both alike), and what
# it costs in loss. Samples from the same prompt at temperature 0.8 (same
# seed): greedy decoding of a model trained 200 steps repeats one character.

# %%
best_student = students["(c) distilled, teacher init"]
BENCH_TOKENS = 20 if FAST else 100
LOAD = os.getloadavg()[0]  # other work on the machine makes the timings noisier
BLAS_THREADS = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "default"
speed_t, speed_s = generation_speeds([teacher, best_student], BENCH_TOKENS)
print(f"timed on {cpu_model()}, load average {LOAD:.1f}, BLAS threads {BLAS_THREADS}, "
      f"{BENCH_TOKENS} tokens greedy, median of 5 rounds")
size = {"parameters": (teacher.num_params(), best_student.num_params()),
        "parameter bytes": (param_bytes(teacher.params), param_bytes(best_student.params)),
        "generation tokens/s": (speed_t, speed_s)}
print(f"{'':<22}{'teacher':>12}{'student':>12}")
for k, (a, b_) in size.items():
    print(f"{k:<22}{a:>12,.0f}{b_:>12,.0f}   x{b_ / a:.2f}")
print(f"{'validation loss':<22}{teacher_loss:>12.4f}{final['(c) distilled, teacher init']:>12.4f}")
assert size["parameters"][1] < size["parameters"][0] / 4

PROMPT = "    def __init__(self, "
samples = {name: m.generate_text(PROMPT, 30 if FAST else 100, temperature=0.8, seed=0)
           for name, m in (("teacher", teacher), ("(a) from scratch", students["(a) from scratch"]),
                           ("(c) distilled, teacher init", best_student))}
for name, text in samples.items():
    print(f"--- {name}\n{text}")

# %% [markdown]
# ## 7. Errata: a "knowledge distillation" snippet that circulates in tutorials
#
# A snippet that circulates in Chinese-language tutorials on making GPT
# models smaller reads, in Keras:
#
# ```python
# def knowledge_distillation(teacher_model, student_model, training=False):
#     teacher_weights = teacher_model.trainable_variables
#     student_weights = student_model.trainable_variables
#     student_model.set_weights(teacher_weights)        # copy the teacher's weights
#     student_model.compile(optimizer='adam', loss='categorical_crossentropy')
#     student_model.fit(x_train, y_train, epochs=5)     # train on the labels
#     student_model.set_weights(student_weights)
#     return student_model
# distilled = knowledge_distillation(gpt4_model, gpt4_model)
# ```
#
# Three things are wrong with it:
#
# * **it is not distillation**: the teacher's outputs never enter the loss;
#   the student fits the hard labels, so whatever the teacher knows beyond
#   "the right answer" is never used. With a teacher-shaped student it is
#   run (d) above: fine-tuning a copy.
# * **it cannot make a smaller model**: copying every tensor needs every
#   shape to match, so a student that is smaller in any way fails on the
#   first weight that differs. Below, the same thing with our student.
# * the call passes the same model as teacher and student, so nothing is
#   smaller even when it runs; and the last `set_weights` restores the
#   values captured before training if they were copies (throwing the
#   training away), and does nothing if they are live variables.

# %%
# a student as deep as the teacher but narrower, so the layer count is not what fails
narrow_cfg = student_config(teacher.config, teacher.config.n_layer, S_EMBD, S_HEADS)
try:
    GPT(narrow_cfg, params={k: v.copy() for k, v in teacher.params.items()})
    errata_message = None
except ConfigError as e:
    errata_message = str(e)
print(f"copying the teacher's weights into a {narrow_cfg.n_layer}x{S_EMBD} student: ConfigError: {errata_message}")
assert errata_message is not None

# %% [markdown]
# ## Closing note
#
# The full run, on the 2-core Xeon (model 207), one BLAS thread: the teacher
# (2 blocks, C = 64, 110,336 parameters) has validation loss 1.578. The
# student (1 block, C = 32, 2 heads: 17,888 parameters, 16% of the
# teacher's, 71,552 bytes of float32) after 600 steps at the same budget:
# 2.347 from scratch, 2.285 distilled (T = 1, alpha = 0.5), 1.948 distilled
# from the teacher initialisation (1.987 for that start on the text alone);
# pure soft targets (alpha = 1) reach 2.241 from random init. Generation,
# greedy with the KV cache, in two full runs on the shared machine: 2,488
# and 5,845 tokens/s (teacher, student; x2.35, load 2.8), then 1,964 and
# 3,292 (x1.68, load 3.2); a sixth of the parameters is far from a sixth of
# the time, since per-token overhead bounds a model this small. Distillation
# helps at T = 1 and not at T >= 2 for this student and budget. Chapter
# time: 50 to 72 s.
#
# The numbers this run measured, in one place:

# %%
print(f"teacher {teacher.num_params():,} parameters, validation loss {teacher_loss:.4f}")
print(f"student {best_student.num_params():,} parameters ({size['parameters'][1] / size['parameters'][0]:.0%}), "
      f"{STEPS} steps of batch {tcfg.batch_size} x {dataset.block_size} characters in every run:")
for name, v in final.items():
    print(f"  {name:<32} {v:.4f}   ({seconds[name]:.0f} s)")
print(f"  temperature sweep (alpha {ALPHA_MAIN}): " + ", ".join(f"T {T:g}: {v:.4f}" for T, v in t_sweep.items()))
print(f"  alpha sweep (T {T_MAIN:g}): " + ", ".join(f"{a:g}: {v:.4f}" for a, v in a_sweep.items()))
print(f"generation: teacher {speed_t:,.0f} tokens/s, student {speed_s:,.0f} tokens/s (x{speed_s / speed_t:.1f})")

# %% [markdown]
# ## Exercises
#
# 1. **Reverse KL.** `distill(..., reverse=True)` trains on
#    $\mathrm{KL}(q \,\|\, p)$, which punishes the student for putting mass
#    where the teacher has little ("mode-seeking") rather than for missing
#    mass the teacher has. Check first that `distill_forward(s, s + 3.0, None,
#    2.0, 1.0, reverse=True)` is 0 with a zero gradient; then run (b) with
#    `reverse=True` and compare its validation loss and the entropy of its
#    predictions with the forward-KL student's.
# 2. **Half the heads.** Make a student with `n_head=1` and $C = 32$: its one
#    head has 32 dimensions, wider than the teacher's 16, so
#    `make_student(..., init="teacher")` leaves attention random. Check with
#    the report (`report["h.0.attn.c_attn.weight"] == "random"`) and that the
#    MLP is still copied; then run (c) with it. How much does the
#    teacher-initialised attention contribute?
# 3. **Longer budgets.** Run (a) and (b) for 4x the steps. Does the gap
#    between them grow or shrink? (Check that both runs saw the same batches:
#    the same seed gives the same `TeacherLogits` keys, so a second
#    distillation run with a shared cache reports only hits.)
# 4. **Hidden states.** `HiddenMatch(default_pairs(2, 1), 32, 64)` (from
#    `minigpt.distill.hidden`) matches the student's block output to the
#    teacher's last block through a learned 32 x 64 projection; pass it as
#    `distill(..., hidden=hm)`. Check first that `hm.kind == "mse"` and that
#    `hm.W["proj.0"]` changes during the run; then compare (b) with and
#    without it. (With `minigpt distill --hidden all` at 600 steps, T = 1,
#    alpha = 0.5, we measured 2.259 against 2.280 from random init, and no
#    gain from the teacher init: 1.954 against 1.946, on 40 validation batches.)
# 5. **Sequence-level distillation** (Kim & Rush 2016). `teacher_text_dataset(teacher,
#    dataset, 600 * 16 * 64, temperature=0.8)` is a Dataset whose training
#    split the teacher wrote and whose validation split is the real one.
#    Check that `seq.val is dataset.val`, then train the student from
#    scratch on it with plain `train` for 600 steps: is text from the
#    teacher a better teacher than the corpus itself, for this student?
