# %% [markdown]
# # Chapter 9: Putting it together: distill, prune, quantize, and the frontier
#
# Chapters 6, 7 and 8 each measured one way of shrinking a model. The
# question a reader actually has is another one: *for the loss I can accept,
# what should I combine, and in which order, to get the smallest or the
# fastest model?* This chapter answers it for our tiny model by measuring,
# not by recipe. From one trained teacher (the tiny model of chapter 1,
# cached and shared with chapters 6-8) it makes a grid of compressed
# variants with the `minigpt` commands themselves, so every point comes with
# the command line that makes it:
#
# 1. the commands compose: a chain from a teacher to a distilled, pruned,
#    fine-tuned, quantized model, each checkpoint saying which steps made
#    it, and the orders that cannot work refused in one line;
# 2. the grid: each method alone at several strengths, and the chains
#    distill -> prune -> quantize and prune -> quantize, with and without
#    fine-tuning;
# 3. every variant measured the same way, in one run: validation loss (and
#    bits per character), bytes on disk, parameters, generation tokens/s;
# 4. loss against bytes with the Pareto frontier drawn, and loss against speed;
# 5. the frontier's points, the commands that make them, and samples;
# 6. what worked best here and why, computed from this run, and where it may
#    not carry over to large models;
# 7. exercises with checks.
#
# *Fast mode (`MINIGPT_FAST=1`, for the tests) runs the same grid with a
# teacher trained for 30 steps and every training run cut to a few steps, so
# its losses are close together and its frontier means little. Every number
# this chapter states is printed by the run that states it.*

# %%
import contextlib
import hashlib
import io
import math
import os
import shutil
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from minigpt.bench import cpu_model
from minigpt.checkpoint import save_checkpoint
from minigpt.cli import main as minigpt
from minigpt.compose import lineage, pareto_front, stored_as
from minigpt.model import load_checkpoint
from minigpt.pretrained import cache_dir, fast_mode, trained_model
from minigpt.sampling import generation_speeds
from minigpt.tour import save_figure
from minigpt.train import evaluate

FAST = fast_mode()
T0 = time.perf_counter()
teacher, dataset, teacher_ckpt = trained_model("tiny")  # chapter 1's model, from the cache
WORK = cache_dir() / "09_compression" / ("fast" if FAST else "full")
WORK.mkdir(parents=True, exist_ok=True)
# the teacher as an inference checkpoint, with its training settings (distill and QAT derive theirs from them)
save_checkpoint(WORK / "teacher.npz", teacher, step=teacher_ckpt.step, train_config=teacher_ckpt.train_config,
                extra={"corpus": teacher_ckpt.meta.get("corpus")})
EVAL_BATCHES = 4 if FAST else 20  # validation batches of 32 windows, the same windows for every variant
FT = 5 if FAST else 150  # fine-tuning steps after pruning (with the masks)
DISTILL = 10 if FAST else 400  # distillation steps
QAT = 5 if FAST else 100  # quantization-aware training steps
BENCH_TOKENS, ROUNDS = (10, 2) if FAST else (100, 5)
c = teacher.config
print(f"teacher: {c.n_layer} blocks, C = {c.n_embd}, {c.n_head} heads, {teacher.num_params():,} parameters, "
      f"trained {teacher_ckpt.step} steps; work directory {WORK}")


@contextlib.contextmanager
def inside(path):
    """Run in `path` (so the commands and their provenance name files as a user would), then come back."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run(argv) -> tuple[int, str]:
    """`minigpt ARGV` in this process, in WORK; (exit status, what it printed)."""
    buf = io.StringIO()
    with inside(WORK), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = minigpt([str(a) for a in argv])
    return code, buf.getvalue()


# %% [markdown]
# ## 1. The commands compose, and the orders that do not
#
# Each compression command reads a checkpoint and writes one, so they chain.
# Every command appends one line to the checkpoint's provenance
# (`meta["provenance"]`), and `minigpt eval` prints it, so a file says how it
# was made. A short chain: distill a student, remove half of its MLP
# neurons and fine-tune with the masks, quantize it to 4 bits with GPTQ,
# then fine-tune the integer weights with quantization-aware training.
#
# What a checkpoint's weights are stored as decides what can follow it
# (`minigpt.compose`): float weights (dense, or pruned with masks) can go
# anywhere; CSR storage (`prune --sparse-storage`) is frozen float values for
# inference, so it is the last step; integer weights can be evaluated,
# sampled and QAT-fine-tuned, but not pruned or quantized again. Those
# orders are refused before any work, in one line that says what to do instead.

# %%
REPORT = {  # options that only shorten each command's own before/after report (the chapter measures apart)
    "prune": ["--eval-batches", 2, "--bench-tokens", 5, "--no-progress"],
    "distill": ["--eval-batches", 2, "--bench-tokens", 5, "--no-progress"],
    "quantize": ["--max-batches", 2, "--tokens", 5],
    "train": ["--no-progress"],
}
ART = {}  # artefact name -> (command, the artefact it reads, options)


def add(name, command, source, *options):
    ART[name] = (command, source, [str(o) for o in options])


def command_line(name) -> str:
    """The command that makes artefact `name` from its source, as a user types it."""
    command, source, options = ART[name]
    src = f"--resume {source}.npz" if command == "train" else f"{source}.npz"
    return " ".join(["minigpt", command, src, *options, "--out", f"{name}.npz"])


def commands(name) -> list[str]:
    """Every command from the teacher to `name`, in order."""
    out = []
    while name != "teacher":
        out.append(command_line(name))
        name = ART[name][1]
    return out[::-1]


def _cached_student(name):
    """Distilled students are the costliest artefacts: reuse one made from the same teacher with the same
    options, like the chapters' shared teacher (the key: the teacher's weights and the command)."""
    h = hashlib.sha256(command_line(name).encode())
    for k in sorted(teacher.params):
        h.update(teacher.params[k].tobytes())
    return WORK / f"cache-{name}-{h.hexdigest()[:12]}.npz"


MADE = {"teacher": 0.0}  # artefact -> seconds its command took
REUSED = set()  # distilled students copied from the cache


def make(name):
    if name in MADE:
        return
    command, source, options = ART[name]
    make(source)
    cached = _cached_student(name) if command == "distill" else None
    t0 = time.perf_counter()
    if cached is not None and cached.exists():
        shutil.copyfile(cached, WORK / f"{name}.npz")
        REUSED.add(name)
    else:
        argv = command_line(name).split()[1:] + REPORT[command]
        code, out = run(argv)
        if code != 0:
            raise RuntimeError(f"{command_line(name)} exited with {code}:\n{out[-2000:]}")
        if cached is not None:
            shutil.copyfile(WORK / f"{name}.npz", cached)
    MADE[name] = time.perf_counter() - t0


add("s64", "distill", "teacher", "--n-layer", 1, "--n-embd", 64, "--n-head", 4, "--steps", DISTILL)
add("s64-n50ft", "prune", "s64", "--method", "neurons", "--sparsity", 0.5, "--finetune-steps", FT)
add("s64-n50ft-g4", "quantize", "s64-n50ft", "--bits", 4, "--method", "gptq")
add("s64-n50ft-r4", "quantize", "s64-n50ft", "--bits", 4)
add("s64-n50ft-r4-qat", "train", "s64-n50ft-r4", "--qat", "--steps", QAT)
make("s64-n50ft-r4-qat")  # and the four artefacts it is made from
chain = load_checkpoint(WORK / "s64-n50ft-r4-qat.npz")
print("\n".join(commands("s64-n50ft-r4-qat")))
print("its provenance, as minigpt eval prints it:")
for i, step in enumerate(lineage(chain.meta, chain.step)):
    print(f"  {i}. {step}")
code, out = run(["eval", "s64-n50ft-r4-qat.npz", "--max-batches", 2])
print(out.strip())
assert code == 0 and len(lineage(chain.meta)) == 5  # trained, distilled, pruned, quantized, QAT
assert stored_as(chain.model.params) == "int4"

# %%
add("m50ft-csr", "prune", "teacher", "--method", "magnitude", "--sparsity", 0.5, "--finetune-steps", FT,
    "--sparse-storage")
make("m50ft-csr")
refused = {}
for argv in (["prune", "s64-n50ft-r4.npz", "--method", "heads", "--sparsity", 0.5, "--out", "x.npz"],
             ["quantize", "m50ft-csr.npz", "--bits", 4, "--out", "x.npz"],
             ["train", "--resume", "s64-n50ft-r4.npz", "--steps", 500, "--out", "x.npz"],
             ["train", "--resume", "m50ft-csr.npz", "--qat", "--out", "x.npz"]):
    code, out = run(argv)
    refused[" ".join(map(str, argv))] = (code, out.strip())
    print(f"$ minigpt {' '.join(map(str, argv))}\n  exit {code}: {out.strip()}")
assert all(code == 2 and msg.startswith("minigpt: error:") and "\n" not in msg for code, msg in refused.values())

# %% [markdown]
# ## 2. The grid
#
# From the one teacher: each method alone at several strengths, then the
# chains. Unstructured pruning (magnitude) is stored as CSR, the only way its
# zeros save bytes here; structured pruning (heads, MLP neurons) shrinks the
# matrices themselves. Pruning is measured one-shot and after fine-tuning
# with its masks. Quantization is round to nearest (RTN) at 8 and 4 bits,
# GPTQ at 4 and 3 bits (3-bit codes are stored in the packed 4-bit format,
# so they cost loss and save no bytes here), and 4-bit RTN followed by QAT. Distillation trains a
# 1-block student of the teacher's width, and a 2-block student of half its
# width. Then the chains: distill -> quantize, distill -> prune -> quantize
# (with QAT or not), prune -> quantize after fine-tuning or one-shot.

# %%
for s in (0.5, 0.7, 0.9):
    tag = f"m{round(s * 100)}"
    add(f"{tag}-csr", "prune", "teacher", "--method", "magnitude", "--sparsity", s, "--sparse-storage")
    add(f"{tag}ft-csr", "prune", "teacher", "--method", "magnitude", "--sparsity", s, "--finetune-steps", FT,
        "--sparse-storage")
for method, tag, s in (("heads", "h", 0.25), ("neurons", "n", 0.5), ("neurons", "n", 0.75)):
    add(f"{tag}{round(s * 100)}", "prune", "teacher", "--method", method, "--sparsity", s)
    add(f"{tag}{round(s * 100)}ft", "prune", "teacher", "--method", method, "--sparsity", s, "--finetune-steps", FT)
add("r8", "quantize", "teacher", "--bits", 8)
add("r4", "quantize", "teacher", "--bits", 4)
add("g4", "quantize", "teacher", "--bits", 4, "--method", "gptq")
add("g3", "quantize", "teacher", "--bits", 3, "--method", "gptq")
add("r4-qat", "train", "r4", "--qat", "--steps", QAT)
add("s32x2", "distill", "teacher", "--n-layer", 2, "--n-embd", 32, "--n-head", 4, "--steps", DISTILL)
# chains
add("s64-r8", "quantize", "s64", "--bits", 8)
add("s64-g4", "quantize", "s64", "--bits", 4, "--method", "gptq")
add("s64-n50ft-r8", "quantize", "s64-n50ft", "--bits", 8)
add("s64-m50ft-csr", "prune", "s64", "--method", "magnitude", "--sparsity", 0.5, "--finetune-steps", FT,
    "--sparse-storage")
add("n50ft-g4", "quantize", "n50ft", "--bits", 4, "--method", "gptq")
add("n50ft-r8", "quantize", "n50ft", "--bits", 8)
add("n50-g4", "quantize", "n50", "--bits", 4, "--method", "gptq")  # one-shot pruning, then quantization
add("h25ft-g4", "quantize", "h25ft", "--bits", 4, "--method", "gptq")  # 48-wide attention: groups of 16
add("m50ft", "prune", "teacher", "--method", "magnitude", "--sparsity", 0.5, "--finetune-steps", FT)
add("m50ft-g4", "quantize", "m50ft", "--bits", 4, "--method", "gptq")  # unstructured zeros, then integers
add("s32x2-g4", "quantize", "s32x2", "--bits", 4, "--method", "gptq")
t_grid = time.perf_counter()
for name in ART:
    make(name)
grid_seconds = time.perf_counter() - t_grid
print(f"{len(ART)} artefacts, one command each ({len(REUSED)} distilled students reused from the cache: "
      f"{', '.join(sorted(REUSED)) or 'none'}); {grid_seconds:.0f} s for the grid after section 1")


def family(name) -> str:
    """The order of methods that made `name`: e.g. 'distill > prune > quantize'."""
    kinds = []
    for line in commands(name):
        kind = {"distill": "distill", "prune": "prune", "quantize": "quantize", "train": "quantize"}[line.split()[1]]
        if not kinds or kinds[-1] != kind:
            kinds.append(kind)
    return " > ".join(kinds) if kinds else "teacher"


def fine_tuned(name) -> bool:
    return any("--finetune-steps" in line or "--qat" in line for line in commands(name))


# %% [markdown]
# ## 3. Every variant measured the same way, in one run
#
# * **validation loss**: mean cross-entropy (nats per character) over the
#   same validation windows for every model ($\text{bits per character} =
#   \text{loss} / \ln 2$);
# * **bytes on disk**: the size of the model written as an inference
#   checkpoint (its weights in their stored format, the vocabulary and the
#   metadata; no optimizer moments and no masks, which the training
#   checkpoints that `prune` and `distill` write also carry);
# * **parameters**: the weights stored (a CSR matrix stores its non-zeros;
#   an integer weight counts as one);
# * **generation tokens/s**: greedy decoding with the KV cache, every
#   variant timed in turn within each round, the median over the rounds, so
#   a burst of load from other programs falls on all of them alike.

# %%
def stored_parameters(params) -> int:
    """Weights stored: a CSR matrix's non-zeros, an integer code one each (GPT.num_params counts K x N)."""
    n = 0
    for k, a in params.items():
        if k.endswith((".csr_indptr", ".csr_indices", ".csr_shape", ".scale", ".scales", ".group")):
            continue  # structure and scales, not weights
        n += a.size * (2 if k.endswith(".int4") else 1)
    return n


def inference_bytes(name, ckpt) -> int:
    path = WORK / "inference" / f"{name}.npz"
    save_checkpoint(path, ckpt.model, step=ckpt.step, extra={"corpus": ckpt.meta.get("corpus"),
                                                              "provenance": lineage(ckpt.meta, ckpt.step)})
    return path.stat().st_size


NAMES = ["teacher", *ART]
models, rows = {}, {}
for name in NAMES:
    ck = load_checkpoint(WORK / f"{name}.npz")
    models[name] = ck.model
    loss = evaluate(ck.model, dataset, "val", 32, EVAL_BATCHES)
    rows[name] = {"loss": loss, "bpc": loss / math.log(2), "bytes": inference_bytes(name, ck),
                  "params": stored_parameters(ck.model.params), "stored": stored_as(ck.model.params),
                  "family": family(name), "fine-tuned": fine_tuned(name)}
LOAD = os.getloadavg()[0]
BLAS_THREADS = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "default"
speeds = generation_speeds([models[n] for n in NAMES], BENCH_TOKENS, rounds=ROUNDS)
for name, s in zip(NAMES, speeds):
    rows[name]["tok/s"] = s
CPU = cpu_model()
print(f"timed on {CPU}, load average {LOAD:.1f}, BLAS threads {BLAS_THREADS}, {BENCH_TOKENS} tokens greedy, "
      f"median of {ROUNDS} rounds")
T_LOSS, T_BYTES = rows["teacher"]["loss"], rows["teacher"]["bytes"]
front_b = [NAMES[i] for i in pareto_front([rows[n]["bytes"] for n in NAMES], [rows[n]["loss"] for n in NAMES])]
front_s = [NAMES[i] for i in pareto_front([-rows[n]["tok/s"] for n in NAMES], [rows[n]["loss"] for n in NAMES])]


def show(names):
    print(f"{'variant':<18}{'made by':<32}{'stored':>7}{'loss':>8}{'bits/ch':>8}{'bytes':>9}{'x smaller':>10}"
          f"{'params':>9}{'tok/s':>8}  frontier")
    for n in names:
        r = rows[n]
        mark = ("bytes " if n in front_b else "") + ("speed" if n in front_s else "")
        print(f"{n:<18}{r['family'] + (' +ft' if r['fine-tuned'] else ''):<32}{r['stored']:>7}{r['loss']:>8.4f}"
              f"{r['bpc']:>8.3f}{r['bytes']:>9,}{T_BYTES / r['bytes']:>10.2f}{r['params']:>9,}{r['tok/s']:>8,.0f}  "
              f"{mark}")


show(sorted(NAMES, key=lambda n: rows[n]["bytes"]))

# %% [markdown]
# ## 4. Loss against bytes, and the Pareto frontier
#
# A variant is on the frontier when no other variant is at least as small
# *and* at least as good, and better in one of the two: variant $j$
# dominates $i$ when $b_j \le b_i$ and $L_j \le L_i$ with one inequality
# strict. Sorting by bytes, the frontier is the running minimum of the loss:
# a point joins it exactly when its loss is below that of every smaller
# point (`minigpt.compose.pareto_front`, checked against the definition by
# the chapter's test). Everything above the staircase is beaten by a point
# on it. The dashed line is the teacher's loss plus 0.1 nats.

# %%
YSPAN = 0.6  # nats above the teacher drawn
COLORS = {"teacher": "black", "prune": "tab:orange", "quantize": "tab:blue", "distill": "tab:green",
          "distill > quantize": "tab:olive", "distill > prune": "tab:brown",
          "distill > prune > quantize": "tab:red", "prune > quantize": "tab:purple"}


def draw(ax, xkey, front, xlabel, logx):
    for fam in COLORS:
        ns = [n for n in NAMES if rows[n]["family"] == fam]
        if ns:
            ax.scatter([rows[n][xkey] for n in ns], [rows[n]["loss"] for n in ns], c=COLORS[fam], label=fam,
                       marker="*" if fam == "teacher" else "o", s=120 if fam == "teacher" else 30, zorder=3)
    # left to right: a frontier point's loss holds from it towards worse x (larger bytes, fewer tokens/s)
    line = sorted(front, key=lambda n: rows[n][xkey])
    fx, fy = [rows[n][xkey] for n in line], [rows[n]["loss"] for n in line]
    ax.plot(fx, fy, "k-", drawstyle="steps-post" if xkey == "bytes" else "steps-pre", lw=1, alpha=0.6,
            label="Pareto frontier", zorder=2)
    for n in front:
        ax.annotate(n, (rows[n][xkey], rows[n]["loss"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(T_LOSS + 0.1, ls="--", c="gray", lw=0.8, label="teacher + 0.1 nats")
    top = T_LOSS + YSPAN  # one-shot pruning at high sparsity is far worse: those points are listed, not drawn
    above = [n for n in NAMES if rows[n]["loss"] > top]
    ax.set_ylim(T_LOSS - 0.05, top)
    if above:
        ax.text(0.01, 0.98, f"off the top: {', '.join(above)}", transform=ax.transAxes, fontsize=7, va="top")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation loss (nats per character)")
    ax.legend(fontsize=7, loc="upper right")


fig, ax = plt.subplots(figsize=(8, 4.8))
draw(ax, "bytes", front_b, "bytes on disk (inference checkpoint, log scale)", True)
ax.set_title(f"the teacher and {len(ART)} compressed variants: loss against size", fontsize=10)
fig.tight_layout()
save_figure(fig, "09_compression_bytes")

# %% [markdown]
# ## 5. Loss against generation speed
#
# The same variants against tokens/s (more is better, so the frontier runs
# from the fastest point back to the best loss). Size and speed are not the
# same axis: at this scale a token's time is mostly fixed per-token work
# (the Python around each layer, the softmax over the vocabulary), so a
# matrix that is 4 or 8 times smaller in bytes is not 4 or 8 times faster
# to multiply, and unpacking integers or walking CSR indices can cost more
# than the float matrix product it replaces.

# %%
fig, ax = plt.subplots(figsize=(8, 4.8))
draw(ax, "tok/s", front_s, f"generation tokens/s (greedy, KV cache; {CPU.split(',')[0]})", False)
ax.set_title("loss against speed", fontsize=10)
fig.tight_layout()
save_figure(fig, "09_compression_speed")
print("speed frontier, fastest first: " + ", ".join(f"{n} ({rows[n]['tok/s']:,.0f} tok/s, {rows[n]['loss']:.3f})"
                                                     for n in front_s))

# %% [markdown]
# ## 6. The frontier's points and the commands that make them
#
# Each command is run exactly as printed (in the directory holding
# `teacher.npz`); the chapter adds only options that shorten each command's
# own before/after report (`--eval-batches`, `--bench-tokens`,
# `--max-batches`, `--tokens`, `--no-progress`).

# %%
show(front_b)
for n in front_b:
    print(f"\n{n}:")
    for line in commands(n) or ["(the teacher: minigpt train, chapter 1)"]:
        print(f"  {line}")

# %% [markdown]
# Samples from three points on the frontier (the largest, one from the
# middle and the smallest), from the same prompt, temperature 0.8, same seed.

# %%
PROMPT = "    def __init__(self, "
picked = [front_b[-1], front_b[len(front_b) // 2], front_b[0]]
samples = {n: models[n].generate_text(PROMPT, 40 if FAST else 120, temperature=0.8, seed=0) for n in picked}
for n, text in samples.items():
    print(f"--- {n} ({rows[n]['bytes']:,} bytes, loss {rows[n]['loss']:.3f})\n{text}")

# %% [markdown]
# ## 7. What worked best here, and why
#
# The statements below are computed from this run's table: a budget of 0.1
# nats above the teacher, the smallest variant within it for each order of
# methods, what fine-tuning bought, and what each method alone reached.

# %%
BUDGET = 0.1


def within(names, budget=BUDGET):
    return [n for n in names if rows[n]["loss"] <= T_LOSS + budget]


best = min(within(NAMES), key=lambda n: rows[n]["bytes"])
print(f"teacher: loss {T_LOSS:.4f}, {T_BYTES:,} bytes. Smallest within {BUDGET} nats: {best} "
      f"({rows[best]['family']}), {rows[best]['bytes']:,} bytes = {T_BYTES / rows[best]['bytes']:.1f}x smaller, "
      f"loss {rows[best]['loss']:.4f} ({rows[best]['loss'] - T_LOSS:+.4f})")
by_family = {}
for fam in COLORS:
    ok = within([n for n in NAMES if rows[n]["family"] == fam])
    if ok and fam != "teacher":
        by_family[fam] = min(ok, key=lambda n: rows[n]["bytes"])
print(f"smallest within {BUDGET} nats, by order of methods:")
for fam, n in sorted(by_family.items(), key=lambda kv: rows[kv[1]]["bytes"]):
    print(f"  {fam:<28} {n:<18} {T_BYTES / rows[n]['bytes']:5.1f}x smaller, loss {rows[n]['loss'] - T_LOSS:+.4f}")
beyond = [n for n in front_b if rows[n]["loss"] > T_LOSS + BUDGET]
print(f"beyond the budget the frontier continues with: " + ", ".join(f"{n} ({rows[n]['family']}, "
      f"{T_BYTES / rows[n]['bytes']:.1f}x, {rows[n]['loss'] - T_LOSS:+.3f})" for n in beyond))
missing = [f for f in COLORS if f != "teacher" and f not in by_family and any(rows[n]["family"] == f for n in NAMES)]
print("  no variant within the budget: " + (", ".join(missing) or "(none)"))

pairs = [(n, n + "ft") for n in ("h25", "n50", "n75")] + [(f"m{s}-csr", f"m{s}ft-csr") for s in (50, 70, 90)]
gains = {a: rows[a]["loss"] - rows[b]["loss"] for a, b in pairs}
print("fine-tuning with the masks (" + f"{FT} steps): loss one-shot -> fine-tuned: " +
      ", ".join(f"{a} {rows[a]['loss']:.3f} -> {rows[b]['loss']:.3f}" for a, b in pairs))
print(f"  it lowered the loss in {sum(g > 0 for g in gains.values())} of {len(gains)} pairs, by "
      f"{min(gains.values()):+.3f} to {max(gains.values()):+.3f} nats")
chain_gain = rows["n50-g4"]["loss"] - rows["n50ft-g4"]["loss"]
print(f"prune -> quantize, one-shot against fine-tuned before quantizing: {rows['n50-g4']['loss']:.4f} against "
      f"{rows['n50ft-g4']['loss']:.4f} ({chain_gain:+.4f})")
print(f"quantization alone: int8 {rows['r8']['loss'] - T_LOSS:+.4f}, int4 RTN {rows['r4']['loss'] - T_LOSS:+.4f}, "
      f"int4 GPTQ {rows['g4']['loss'] - T_LOSS:+.4f}, int4 RTN + QAT {rows['r4-qat']['loss'] - T_LOSS:+.4f}, "
      f"int3 GPTQ {rows['g3']['loss'] - T_LOSS:+.4f} nats, at {T_BYTES / rows['r8']['bytes']:.1f}x, "
      f"{T_BYTES / rows['r4']['bytes']:.1f}x and {T_BYTES / rows['g3']['bytes']:.1f}x smaller")
print(f"unstructured zeros under integers: m50ft-g4 {rows['m50ft-g4']['bytes']:,} bytes against g4 "
      f"{rows['g4']['bytes']:,} (int4 stores every weight, zero or not), loss {rows['m50ft-g4']['loss']:.4f} "
      f"against {rows['g4']['loss']:.4f}")
def zero_fraction(name):
    """The fraction of the block linears' weights that are exactly 0 (integer weights dequantized first)."""
    from minigpt.quant.weights import dequantize_params, is_quantizable

    ws = [w for k, w in dequantize_params(models[name].params).items() if is_quantizable(k)]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.size for w in ws)


def pruned_kept(pruned, quantized):
    """The fraction of `pruned`'s zero weights that are still exactly 0 in `quantized` (dequantized)."""
    from minigpt.quant.weights import dequantize_params, is_quantizable

    p, q = models[pruned].params, dequantize_params(models[quantized].params)
    zero = [(p[k] == 0, q[k]) for k in p if is_quantizable(k)]
    return sum(int((w[z] == 0).sum()) for z, w in zero) / sum(int(z.sum()) for z, _ in zero)


zeros = {n: zero_fraction(n) for n in ("m50ft", "m50ft-g4", "g4")}
kept = pruned_kept("m50ft", "m50ft-g4")
print("zeros in the block linears: " + ", ".join(f"{n} {z:.1%}" for n, z in zeros.items())
      + f"; of m50ft's pruned weights, {kept:.1%} are still 0 after GPTQ (its updates of later rows move the "
        f"rest off 0), and int4 rounds small surviving weights to 0")
print(f"distillation alone: s64 {rows['s64']['loss'] - T_LOSS:+.4f} nats at {T_BYTES / rows['s64']['bytes']:.1f}x "
      f"smaller; s32x2 {rows['s32x2']['loss'] - T_LOSS:+.4f} at {T_BYTES / rows['s32x2']['bytes']:.1f}x")
fastest = front_s[0]
print(f"fastest: {fastest} at {rows[fastest]['tok/s']:,.0f} tokens/s against the teacher's "
      f"{rows['teacher']['tok/s']:,.0f} (x{rows[fastest]['tok/s'] / rows['teacher']['tok/s']:.2f}), loss "
      f"{rows[fastest]['loss'] - T_LOSS:+.4f}")
print(f"chapter time so far: {time.perf_counter() - T0:.0f} s")

# %% [markdown]
# How to read it. Each method attacks a different factor of the bytes:
# quantization the bits per weight (32 -> 8 or 4, plus the scales),
# distillation and structured pruning the number of weights while keeping a
# dense format, and unstructured pruning the number of weights at the price
# of an index per survivor: CSR stores a 4-byte float32 value and a 2-byte
# input index (uint16) for each non-zero, plus an 8-byte pointer per output
# column, so a $K \times N$ matrix at sparsity $s$ takes
# $6(1-s)KN + 8(N+1)$ bytes against $4KN$ dense, a ratio of about
# $1.5\,(1-s)$: break-even at a third of zeros, 0.75 at 50%, 0.15 at 90%
# (the check below compares the formula with the stored arrays of `m50-csr`,
# `m70-csr` and `m90-csr`). The factors multiply only when the later step
# keeps what the earlier one saved: a distilled or structurally pruned model is an
# ordinary dense model, so quantization applies to it unchanged and the
# ratios compound, which is why the chains that end in quantization sit at
# the small end of the frontier. Unstructured pruning does not compose with
# our integer formats: the zeros are stored like any other weight (and
# GPTQ's error updates move some of them off zero, as printed above), so
# `m50ft-g4` costs as many bytes as `g4` while its loss pays for the pruning. The order is forced, not only better:
# quantize last, because nothing can be pruned or trained the ordinary way
# after it (QAT being the exception that fine-tunes the integer model
# itself), and fine-tune after each lossy step while the weights are still
# float.
#
# **Where this may not carry over.**
#
# * *Deep Compression* (Han, Mao & Dally, ICLR 2016) prunes, then
#   quantizes by weight sharing, then Huffman-codes, and reports 35x (AlexNet)
#   and 49x (VGG-16) with no loss of accuracy: there, the zeros survive
#   quantization because the format stores the sparse pattern (relative
#   indices) next to the shared-weight codes. With such a sparse-and-quantized
#   format (chapter 7 builds one), unstructured pruning followed by
#   quantization does compound, which it cannot with our dense int4.
# * *SparseGPT* (Frantar & Alistarh, ICML 2023) prunes GPT-family models
#   of 175B parameters to 50-60% unstructured sparsity in one shot with a
#   negligible rise in perplexity, and notes that larger models are easier
#   to prune; it also combines with weight quantization, pruning and
#   quantizing jointly so that the error updates respect the mask. A
#   100k-parameter model has little redundancy, so our one-shot pruning
#   costs far more than theirs, and fine-tuning matters more here than there.
# * *Sparse fine-tuning* (Kurtic, Kuznedelev, Frantar, Goin & Alistarh 2023,
#   "Sparse Fine-tuning for Inference Acceleration of Large Language
#   Models") fine-tunes sparse LLMs with a distillation loss on the teacher's
#   hidden states, and gets CPU speed-ups from sparsity, more with INT8
#   quantization on top, using kernels that exploit both at once. They point
#   out that generating with a large model is memory-bound, so fewer bytes
#   read per token means faster tokens. Our model fits in cache and per-token
#   overheads dominate, and our CSR kernel is float, so speed does not follow
#   bytes here: expect the speed frontier to look very different at scale.
# * *Non-orthogonality*: Harma et al. (ICLR 2025, "Effective Interplay
#   between Sparsity and Quantization") prove that the two errors do not
#   simply add, and show on OPT and LLaMA models that applying sparsity
#   before quantization is the better order, and that even then the
#   compounded error can be large. Kuzmin et al. (NeurIPS 2023, "Pruning vs
#   Quantization: Which is Better?") find quantization ahead of pruning at
#   equal compression in most of their cases. Here the order is not a
#   choice (these commands cannot prune integer weights), and a tiny model on
#   one corpus cannot say how large the interaction is at scale.
#
# The CSR formula against the stored arrays, and the numbers of one full
# run, printed in one place:

# %%
def csr_check(name):
    """(measured CSR bytes, 6 nnz + 8 (N + 1) + 16 summed over its matrices, the dense float32 bytes)."""
    p = models[name].params
    measured = formula = dense = 0
    for layer in [k[: -len(".csr_values")] for k in p if k.endswith(".csr_values")]:
        K, N = (int(d) for d in p[layer + ".csr_shape"])
        nnz = p[layer + ".csr_values"].size
        measured += sum(p[f"{layer}.{k}"].nbytes for k in ("csr_values", "csr_indices", "csr_indptr", "csr_shape"))
        formula += 6 * nnz + 8 * (N + 1) + 16  # values, indices, pointers, shape (two int64)
        dense += 4 * K * N
    return measured, formula, dense


csr_rows = {n: csr_check(n) for n in ("m50-csr", "m70-csr", "m90-csr")}
for n, (m, f, d) in csr_rows.items():
    print(f"{n}: CSR arrays {m:,} bytes (formula {f:,}), dense {d:,}: ratio {m / d:.3f}")
assert all(m == f for m, f, _ in csr_rows.values())
summary = {n: (rows[n]["loss"], rows[n]["bytes"], rows[n]["tok/s"]) for n in front_b}
print(f"CPU {CPU}, load {LOAD:.1f}; frontier (loss vs bytes), largest first:")
for n in front_b[::-1]:
    loss, b, s = summary[n]
    print(f"  {n:<18} loss {loss:.4f} ({loss / math.log(2):.3f} bits/char)  {b:>9,} bytes  {s:>7,.0f} tok/s")
print(f"chapter total: {time.perf_counter() - T0:.0f} s")

# %% [markdown]
# ## Exercises
#
# 1. **The smallest model within 0.1 nats under a byte budget.** Write
#    `smallest_within(rows, teacher_loss, nats, max_bytes)` returning the
#    name of the smallest variant whose loss is within `nats` of the teacher
#    and whose size is at most `max_bytes` (None when there is none). The
#    check below compares it with a brute-force answer for several budgets;
#    then try to beat the answer for a budget of a quarter of the teacher's
#    bytes with a chain of your own (hint: `s64-n50ft-r4-qat` is one command
#    away from several neighbours).
# 2. **Explain a point off the frontier.** Pick a variant that is not on
#    the frontier and find which frontier point dominates it and by how
#    much (the check prints one). Then explain *why* from how it was made:
#    which step cost loss without saving bytes? (`m50ft-g4` and `n50-g4` are
#    good candidates.)
# 3. **GPTQ that keeps the zeros.** Make GPTQ respect a pruning mask: when
#    row $i$ is quantized, set its pruned entries to 0 before the error
#    $(w_i - q_i)/U_{ii}$ is propagated, so the later rows compensate the
#    pruning too (SparseGPT's joint mode). Write it as
#    `fn(w, H, mask, bits, group) -> (q, scales)`, the shapes and meaning of
#    `minigpt.quant.gptq.gptq_quantize`'s result, and pass it to
#    `check_gptq_keeps_zeros` below: on every block linear of `m50ft`,
#    every pruned weight must be exactly 0 after quantize-dequantize, the
#    rest on the int4 grid, and the layer's output error no worse than RTN's.
#    Then compare the loss with `m50ft-g4`.
# 4. **Order.** Add `quantize --bits 8` before `prune --method neurons`
#    and read the refusal (`check_quantize_then_prune_refused`); then do the
#    reverse order with and without the fine-tuning, and check that
#    fine-tuning before quantizing beats QAT-fine-tuning after it for the
#    same number of steps (or does not).

# %%
def smallest_within(rows, teacher_loss, nats, max_bytes):
    ok = [n for n, r in rows.items() if r["loss"] <= teacher_loss + nats and r["bytes"] <= max_bytes]
    return min(ok, key=lambda n: (rows[n]["bytes"], rows[n]["loss"])) if ok else None


def check_smallest_within(fn):
    """Brute force: a variant within the loss budget and the byte budget, no other one smaller."""
    for max_bytes in (T_BYTES, T_BYTES // 2, T_BYTES // 4, T_BYTES // 8, T_BYTES // 50):
        got = fn(rows, T_LOSS, 0.1, max_bytes)
        fits = {n for n, r in rows.items() if r["loss"] <= T_LOSS + 0.1 and r["bytes"] <= max_bytes}
        if not fits:
            assert got is None, (max_bytes, got)
            continue
        assert got in fits and all(rows[got]["bytes"] <= rows[n]["bytes"] for n in fits), (max_bytes, got)
    return True


assert check_smallest_within(smallest_within)
quarter = smallest_within(rows, T_LOSS, 0.1, T_BYTES // 4)
print(f"smallest within 0.1 nats and a quarter of the teacher's bytes ({T_BYTES // 4:,}): {quarter}")
assert quarter is None or quarter in front_b  # the smallest within a budget is always on the frontier


def dominated_by(name):
    """The frontier point that dominates `name` with the smallest bytes (None if `name` is on the frontier)."""
    r = rows[name]
    better = [n for n in front_b if rows[n]["bytes"] <= r["bytes"] and rows[n]["loss"] <= r["loss"] and n != name]
    return min(better, key=lambda n: rows[n]["bytes"]) if better else None


off = [n for n in NAMES if n not in front_b]
example = "m50ft-g4" if "m50ft-g4" in off else off[0]
by = dominated_by(example)
print(f"{example} is off the frontier: {by} is {rows[example]['bytes'] / rows[by]['bytes']:.2f}x smaller and "
      f"{rows[example]['loss'] - rows[by]['loss']:.4f} nats better")
assert all(dominated_by(n) is not None for n in off) and all(dominated_by(n) is None for n in front_b)

# %% [markdown]
# **Exercise 3: the check, and a worked solution.** `check_gptq_keeps_zeros(fn)`
# runs `fn(w, H, mask, bits, group)` on each of `m50ft`'s eight block linears
# (mask: its weights that are not 0; $H = 2X^\top X/M$ from the inputs $X$ that
# layer sees in `m50ft` on the training windows GPTQ calibrates on), and asserts:
#
# * **the zeros**: every pruned weight is exactly 0 after the codes and scales
#   are stored in the int4 format and read back. Exact, not approximate: a
#   code of 0 times any scale is 0.
# * **the grid**: integer codes in $[-7, 7]$, one positive finite scale per
#   group of 32 inputs of each output, so every kept weight is
#   $q \cdot s$, what the int4 checkpoint stores.
# * **RTN when nothing correlates**: with $H$ a multiple of the identity, $U$
#   is diagonal, no row updates another, and the scales from the kept weights
#   are those of the whole weight (its pruned entries are 0 already), so the
#   codes must be exactly RTN's. This one is a theorem; it catches a wrong
#   grid or a rounding that is not RTN's.
# * **no worse than RTN**: the layer's output error
#   $E(\hat W) = \lVert XW - X\hat W\rVert_F^2/M$ on those inputs is at most
#   that of RTN of the same pruned weight (which keeps its zeros too:
#   rounding 0 gives 0). This is *not* a theorem: GPTQ is greedy. What holds
#   exactly is an identity: with the damped Hessian $H_\lambda = (U^\top U)^{-1}$
#   and $D = W - \hat W$, $\operatorname{tr}(D^\top H_\lambda D) = \sum_k
#   \lVert e_k\rVert^2$, where $e_k = (w'_k - \hat w_k)/U_{kk}$ is row $k$'s
#   own error at the value $w'_k$ the earlier updates left it (because
#   $D = U^\top E$ row by row). A kept weight adds at most half a grid step
#   there (unless the updates pushed it past the group's range, fixed when
#   the group started, and it was clipped); a pruned one adds its whole
#   drifted value. RTN's errors have no
#   such bound: they add up through correlated inputs. So GPTQ wins when
#   inputs correlate, as a layer's do, but on random weights with half of them
#   pruned masked GPTQ lost to RTN in 5 of 400 trials, by at most 1.1%
#   (`tests/test_quant_gptq.py`). The check asserts it per layer of this
#   model, and prints the ratios.
#
# Plain GPTQ (ignoring the mask) fails the check, as it must; zeroing its
# pruned codes *afterwards* passes it (the check cannot see how the zeros were
# made), so the ratio of that shortcut is printed next to the solution's:
# the propagated error is what makes the difference.

# %%
from minigpt.kernels.quantizer import int_range, quantize, quantize_tensor
from minigpt.layers.block import LINEARS
from minigpt.layers.quantized_linear import dequantize
from minigpt.quant.cli import CALIB_BATCH, DEFAULT_CALIB
from minigpt.quant.gptq import gptq_model, gptq_quantize, hessian, inverse_cholesky, output_error, stored_arrays
from minigpt.quant.rescale import calibration_batches
from minigpt.quant.weights import dequantize_params, weight_arrays

T_EX = time.perf_counter()
CAL = calibration_batches(dataset, DEFAULT_CALIB, CALIB_BATCH)  # training windows, as `minigpt quantize` draws them
PRUNED = models["m50ft"]


def layer_hessians(model, batches) -> dict:
    """{layer: H = 2 X^T X / M (K, K)} of every block linear, from its inputs in `model` over the batches."""
    acts = [model.activations(b) for b in batches]
    layers = [f"h.{i}.{n}" for i in range(model.config.n_layer) for n in LINEARS]
    return {L: hessian(np.concatenate([a[L].reshape(-1, a[L].shape[-1]) for a in acts])) for L in layers}


HESSIANS = layer_hessians(PRUNED, CAL)


def int4_weight(q, scales, group, dtype):
    """What the int4 checkpoint reads back for codes q (K, N) and scales (K / group, N)."""
    return dequantize({"format": "int4", **stored_arrays(np.asarray(q).astype(np.int8),
                                                         np.asarray(scales).astype(dtype), "int4", group)})


def check_gptq_keeps_zeros(fn, bits=4, group=32) -> dict:
    """fn(w, H, mask, bits, group) -> (q, scales) on every block linear of m50ft: pruned weights exactly 0,
    the rest on the int4 grid, RTN's codes when H is a multiple of I, output error at most RTN's.
    Returns {layer: E(fn) / E(RTN)}."""
    q_max = 2 ** (bits - 1) - 1
    ratios = {}
    for layer, H in HESSIANS.items():
        w = PRUNED.params[layer + ".weight"]  # (K, N), 0 where pruned
        K, N = w.shape
        mask = w != 0
        q, scales = (np.asarray(a) for a in fn(w, H, mask, bits, group))
        assert q.shape == (K, N) and q.dtype.kind in "iu", f"{layer}: codes {q.shape} {q.dtype}"
        assert np.abs(q.astype(np.int64)).max() <= q_max, f"{layer}: codes outside [-{q_max}, {q_max}]"
        assert scales.shape == (K // group, N) and np.all(np.isfinite(scales) & (scales > 0)), f"{layer}: scales"
        w_hat = int4_weight(q, scales, group, w.dtype)  # (K, N)
        moved = int((w_hat[~mask] != 0).sum())
        assert moved == 0, f"{layer}: {moved} of {int((~mask).sum())} pruned weights are not 0"
        rtn = dequantize({"format": "int4", **weight_arrays(w, "int4", bits, group)})  # keeps the zeros
        q_i, s_i = fn(w, np.mean(np.diag(H)) * np.eye(K), mask, bits, group)
        np.testing.assert_array_equal(int4_weight(q_i, s_i, group, w.dtype), rtn,
                                      err_msg=f"{layer}: with H a multiple of I the result must be RTN's")
        e, e_rtn = output_error(w, w_hat, H), output_error(w, rtn, H)
        assert e <= e_rtn, f"{layer}: output error {e:.4g} above RTN's {e_rtn:.4g}"
        ratios[layer] = e / e_rtn
    return ratios


def gptq_keep_zeros(w, H, mask, bits=4, group=32):
    """Worked solution: GPTQ row by row (no lazy blocks); a pruned weight's code is 0 and its whole
    current value is the error the later rows absorb."""
    K, N = w.shape
    U = inverse_cholesky(H)  # (K, K) upper: U^T U = (H + 1% damping)^-1
    W = w.astype(np.float64)  # (K, N), updated as rows are quantized
    q, scales = np.zeros((K, N), np.int8), np.zeros((K // group, N), w.dtype)
    q_min, q_max = int_range(bits, symmetric=True)
    for i in range(K):
        if i % group == 0:  # the group's grid, from its kept weights as they are now
            kept = (W[i:i + group] * mask[i:i + group]).astype(w.dtype)  # (group, N)
            scales[i // group] = quantize_tensor(kept, bits, symmetric=True, axis=1).scale
        s = scales[i // group]
        q[i] = quantize(W[i].astype(w.dtype), s, 0, q_min, q_max) * mask[i]  # pruned: code 0
        err = (W[i] - q[i] * s.astype(np.float64)) / U[i, i]  # (N,): at a pruned weight, all of its value
        W[i + 1:] -= np.outer(U[i, i + 1:], err)  # (K - i - 1, N): the later rows compensate
    return q, scales


def plain_gptq(w, H, mask, bits, group):
    return gptq_quantize(w, H, bits, group)  # ignores the mask


def zeroed_afterwards(w, H, mask, bits, group):
    q, s = gptq_quantize(w, H, bits, group)
    return q * mask, s  # the shortcut: the pruned weights' errors reach no other row


try:
    check_gptq_keeps_zeros(plain_gptq)
    raise RuntimeError("the check passed plain GPTQ, which moves pruned weights off 0")
except AssertionError as e:
    print(f"plain GPTQ fails the check, as it must: {e}")
mine = check_gptq_keeps_zeros(gptq_keep_zeros)
library = check_gptq_keeps_zeros(lambda w, H, mask, bits, group: gptq_quantize(w, H, bits, group, mask=mask))
shortcut = check_gptq_keeps_zeros(zeroed_afterwards)
print("output error against RTN's (both keep the zeros), per layer of m50ft: worked solution / library mask / "
      "plain GPTQ with pruned codes zeroed afterwards")
for layer in mine:
    print(f"  {layer:<16} {mine[layer]:.3f} / {library[layer]:.3f} / {shortcut[layer]:.3f}")

# %% [markdown]
# The whole model: GPTQ of `m50ft` with the mask (`gptq_model(...,
# keep_zeros=True)`, the library's form of the solution), against plain GPTQ
# on the same calibration windows (drawn as `minigpt quantize` draws them, so
# plain GPTQ here should give `m50ft-g4`'s loss; both are printed). The mask takes freedom from GPTQ, so
# keeping the zeros cannot be expected to lower the loss; what it buys is a
# weight whose zeros a format that stores the sparse pattern next to the
# codes could skip (Deep Compression's, above), which our dense int4 does not.

# %%
losses_kz, kept_kz = {}, {}
for keep in (False, True):
    qm, _ = gptq_model(PRUNED, CAL, "int4", 4, 32, keep_zeros=keep)
    losses_kz[keep] = evaluate(qm, dataset, "val", 32, EVAL_BATCHES)
    deq = dequantize_params(qm.params)
    zero_at = {k: PRUNED.params[k + ".weight"] == 0 for k in HESSIANS}  # layer -> (K, N): its pruned weights
    kept_kz[keep] = (sum(int((deq[k + ".weight"][z] == 0).sum()) for k, z in zero_at.items())
                     / sum(int(z.sum()) for z in zero_at.values()))
assert kept_kz[True] == 1.0
print(f"m50ft {rows['m50ft']['loss']:.4f}; GPTQ int4 of it, plain: {losses_kz[False]:.4f} ({kept_kz[False]:.1%} of "
      f"the pruned weights still 0), keeping the zeros: {losses_kz[True]:.4f} ({kept_kz[True]:.0%}), a difference "
      f"of {losses_kz[True] - losses_kz[False]:+.4f} nats; m50ft-g4 in the table: {rows['m50ft-g4']['loss']:.4f}")

# %% [markdown]
# **Exercise 4: the check, and the two orders.** Pruning integer weights is
# refused before any work: `check_quantize_then_prune_refused` runs
# `minigpt prune` on `r8.npz` (the teacher at 8 bits) in this process and
# expects exit status 2 and one line saying why. The reverse order is then
# measured with the same number of fine-tuning steps on both sides and the
# same peak learning rate (the pruning fine-tune's default, $3\times$ the
# teacher's final rate; QAT's own default is a tenth of the teacher's peak):
# prune, fine-tune with the masks, quantize (`n50ft-r4`), against prune,
# quantize, fine-tune the integer model with QAT (`n50-r4-qat`), with RTN at
# 4 bits on both sides so only the order differs.

# %%
def check_quantize_then_prune_refused(source="r8.npz") -> str:
    """`minigpt prune SOURCE --method neurons` on an integer checkpoint: exit 2, one line, says why."""
    (WORK / "x.npz").unlink(missing_ok=True)
    code, out = run(["prune", source, "--method", "neurons", "--sparsity", 0.5, "--out", "x.npz"])
    msg = out.strip()
    assert code == 2, (code, msg)
    assert msg.startswith("minigpt: error:") and "\n" not in msg, msg
    assert "pruning needs float weights" in msg and "then quantize the pruned one" in msg, msg
    assert not (WORK / "x.npz").exists(), "refused, yet it wrote x.npz"
    return msg


print(f"$ minigpt prune r8.npz --method neurons --sparsity 0.5\n  {check_quantize_then_prune_refused()}")
FT_LR = load_checkpoint(WORK / "n50ft.npz").train_config.lr  # the pruning fine-tune's peak learning rate
ORDER = {  # name -> the command that makes it (in WORK), each with the chapter's report-shortening options
    "n50ft-r4": ["quantize", "n50ft.npz", "--bits", 4, "--out", "n50ft-r4.npz", *REPORT["quantize"]],
    "n50-r4": ["quantize", "n50.npz", "--bits", 4, "--out", "n50-r4.npz", *REPORT["quantize"]],
    "n50-r4-qat": ["train", "--resume", "n50-r4.npz", "--qat", "--steps", FT, "--lr", FT_LR,
                   "--out", "n50-r4-qat.npz", *REPORT["train"]],
}
order_loss = {}
for name, argv in ORDER.items():
    code, out = run(argv)
    assert code == 0, f"minigpt {' '.join(map(str, argv))} exited with {code}:\n{out[-2000:]}"
    order_loss[name] = evaluate(load_checkpoint(WORK / f"{name}.npz").model, dataset, "val", 32, EVAL_BATCHES)
before, after = order_loss["n50ft-r4"], order_loss["n50-r4-qat"]
print(f"half the MLP neurons, int4 RTN, {FT} fine-tuning steps at peak lr {FT_LR:g} (validation loss):\n"
      f"  no fine-tuning (n50-r4)                   {order_loss['n50-r4']:.4f}\n"
      f"  fine-tuned before quantizing (n50ft-r4)   {before:.4f}\n"
      f"  QAT after quantizing (n50-r4-qat)         {after:.4f}\n"
      f"  -> here fine-tuning before quantizing {'beats' if before < after else 'does not beat'} QAT after it "
      f"(QAT after minus fine-tuning before: {after - before:+.4f} nats); the table's GPTQ pair, fine-tuned before "
      f"or not at all: n50ft-g4 {rows['n50ft-g4']['loss']:.4f}, n50-g4 {rows['n50-g4']['loss']:.4f}")
print(f"exercises 3 and 4: {time.perf_counter() - T_EX:.1f} s; chapter total with them: {time.perf_counter() - T0:.0f} s")
