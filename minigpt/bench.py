"""``minigpt bench``: the kernels side by side with the NumPy reference and,
when it is installed, PyTorch, in one run: a header line naming the CPU
(model and cores), threads and versions, then one table per section. Every
table compares its rows with one baseline that is always there (the NumPy
reference, or float32), named in its title, and as a speed-up: baseline
time / row time, so higher is better everywhere.

Every row is the median of several timed repeats after one untimed warm-up
(which also pays any numba compilation). Threads: numba and torch are given
the same count (NUMBA_NUM_THREADS, default all cores); NumPy's BLAS uses its
own default (OPENBLAS_NUM_THREADS); OpenMP waits passively (see run_bench). Peak memory is the rise of the process's resident-set
high-water mark during one call (Linux /proc; '-' elsewhere).

Sections (shapes from the issue that asked for this benchmark):
- attention, forward and forward+backward: B=16, 4 heads, head size 32, float32;
- integer matmul, GOPS = 2 M K N / time, at the base model's shapes and
  GPT-2-small's, and one decoding row (M = 1);
- sparse x dense (CSR, numba) against the dense float32 product at
  768 x 3072, one decoding row and 512 rows, across sparsities (crossover);
- structured pruning: a GPT-2-small block's MLP with half its neurons
  removed and its attention with half its heads removed, against the dense
  ones, with the NumPy reference ops and the numba ops;
- one training step (forward, backward, clipping, AdamW) of the base preset
  and of a small char-level shape (block 64, batch 12), implementations interleaved;
- each numba op's time inside training steps against the same calls alone;
- generation with a KV cache, batch 1, at GPT-2-small's shape with float32,
  int8 and int4 weights.
"""
from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time
import warnings

import numpy as np

from .errors import MinigptError


# ----------------------------------------------------------------- helpers
def _cpuinfo(path="/proc/cpuinfo"):
    """The first processor's fields of /proc/cpuinfo, and every processor's (physical id, core id)."""
    first, cores = {}, set()
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return first, cores
    for block in text.strip().split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        first = first or fields
        cores.add((fields.get("physical id"), fields.get("core id", fields.get("processor"))))
    return first, cores


def cpu_model(path="/proc/cpuinfo"):
    """The CPU's name as the kernel reports it, with family/model numbers (a
    virtual machine's name is often generic: "Intel(R) Xeon(R) Processor"
    is family 6 model 207, Emerald Rapids) and AVX-512 VNNI when present.
    Falls back to platform.processor() / platform.machine()."""
    import platform

    info, _ = _cpuinfo(path)
    name = " ".join(info.get("model name", "").split()) or platform.processor() or platform.machine() or "unknown CPU"
    if "cpu family" in info and "model" in info:
        name += f" (family {info['cpu family']} model {info['model']})"
    if "avx512_vnni" in info.get("flags", "").split():
        name += ", AVX-512 VNNI"
    return name


def cpu_cores(path="/proc/cpuinfo"):
    """Physical cores (distinct physical id/core id pairs), else os.cpu_count()."""
    _, cores = _cpuinfo(path)
    return len(cores) or os.cpu_count() or 1


def machine_info():
    """What the numbers depend on besides the CPU's name: {"simd": extensions the
    kernels may use (LLVM compiles numba's kernels for this host), "llvm_cpu":
    LLVM's name for the CPU, "numba_threading": numba's threading layer,
    "blas": [the BLAS libraries NumPy loaded, with threading and kernel set],
    "blas_threads": their thread count ("default" if unknown)}."""
    from .kernels import threads as T

    llvm_cpu, simd = T.simd_features()
    blas = T.blas_threads()
    counts = sorted({str(b["threads"]) for b in blas})
    return {"simd": simd, "llvm_cpu": llvm_cpu, "numba_threading": T.numba_threading(), "blas": blas,
            "blas_threads": "/".join(counts) or "default", "split_products": T.blas_is_single()}


def _blas_text(info):
    """ "OpenBLAS 0.3.31 pthreads, SkylakeX kernels, 2 threads" (or the thread count alone)."""
    libs = [f"{b['library']} {b['version']} {b['threading'] or ''}".replace("openblas", "OpenBLAS").strip()
            + (f", {b['kernels']} kernels" if b.get("kernels") else "") for b in info.get("blas") or []]
    split = ""
    if info.get("split_products"):
        split = (f" in each piece of the numba backend's products, split over {info['threads']} threads"
                 if info["threads"] > 1 else " (the numba backend's products unsplit)")
    return f"BLAS threads {info['blas_threads']}" + (f" ({'; '.join(libs)})" if libs else "") + split


def _torch():
    """The torch module if it imports, else None (torch is optional)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def time_call(fn, repeats):
    """Median wall time of fn() over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _set_mmap_threshold(nbytes):
    """glibc's mallopt(M_MMAP_THRESHOLD): allocations above nbytes get their own mmap.

    Setting it also stops glibc from raising the threshold by itself after
    big frees (the default behaviour, under which later big arrays reuse
    heap pages already counted in RSS and stay invisible to peak_extra_mb).
    """
    try:
        import ctypes

        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, int(nbytes))
        libc.mallopt(M_TRIM_THRESHOLD, 2 * int(nbytes))  # what glibc's own adjustment pairs with it
    except (OSError, AttributeError):
        pass


def _release_free_heap():
    """glibc's malloc_trim(0): hand freed heap pages back to the OS, so that
    reusing them during a peak measurement counts in RSS again."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# During a peak measurement every array above 256 KB is a fresh mmap, so it
# shows in RSS; afterwards the threshold goes to 32 MB (glibc's own upper
# limit) because page-faulting every temporary in again made a training
# step 2.2x slower and would distort the timings.
PEAK_MMAP_THRESHOLD, TIMING_MMAP_THRESHOLD = 256 * 1024, 32 * 2**20


def peak_extra_mb(fn):
    """Rise of the resident-set high-water mark during one fn() call, in MB (None if unmeasurable).

    Writing 5 to /proc/self/clear_refs resets the high-water mark to the
    current RSS, so the mark afterwards minus RSS before is what fn() added
    at its peak (big arrays come from fresh mmaps, so reuse of freed memory
    does not hide them).
    """
    _set_mmap_threshold(PEAK_MMAP_THRESHOLD)
    try:
        gc.collect()
        _release_free_heap()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kb("VmRSS")
        fn()
        return (_status_kb("VmHWM") - before) / 1024
    except (OSError, KeyError):
        return None
    finally:
        _set_mmap_threshold(TIMING_MMAP_THRESHOLD)


def _row(section, about, case, impl, seconds, baseline, speedup, rate=None, unit="", peak=None):
    """One timing. about: what the section's cases share (its table's title);
    speedup = baseline's time / this time: how many times faster than baseline."""
    return {"section": section, "about": about, "case": case, "impl": impl, "ms": seconds * 1e3, "rate": rate,
            "unit": unit, "speedup": speedup, "baseline": baseline, "peak_mb": peak}


# --------------------------------------------------------------- attention
def bench_attention(quick, torch):
    from .kernels.attention import attention_backward, attention_forward
    from .layers.attention import causal_attention_backward, causal_attention_forward

    B, H, D = 16, 4, 32
    Ts = (128, 256) if quick else (128, 256, 512, 1024)
    repeats = 3 if quick else 5
    rows = []
    rng = np.random.default_rng(0)
    for T in Ts:
        q, k, v, dout = (rng.standard_normal((B, H, T, D)).astype(np.float32) for _ in range(4))
        impls = {}
        for name, fwd, bwd in (("numpy", causal_attention_forward, causal_attention_backward),
                               ("numba", attention_forward, attention_backward)):
            impls[name] = (lambda f=fwd: f(q, k, v),
                           lambda f=fwd, b=bwd: b(dout, f(q, k, v)[1]))
        if torch is not None:
            sdpa = torch.nn.functional.scaled_dot_product_attention
            tq, tk, tv, tdo = (torch.from_numpy(a) for a in (q, k, v, dout))

            def t_fwd():
                with torch.no_grad():
                    return sdpa(tq, tk, tv, is_causal=True)

            def t_fwdbwd():
                qq, kk, vv = (a.detach().requires_grad_() for a in (tq, tk, tv))
                sdpa(qq, kk, vv, is_causal=True).backward(tdo)
                return qq.grad, kk.grad, vv.grad

            impls["torch sdpa"] = (t_fwd, t_fwdbwd)
        for which, section in ((0, "attention fwd"), (1, "attention fwd+bwd")):
            # interleaved: a burst of load from other processes falls on every implementation alike
            times = _interleaved_medians({name: fns[which] for name, fns in impls.items()}, repeats)
            peaks = {name: peak_extra_mb(fns[which]) for name, fns in impls.items()}  # after all timings
            for name in impls:
                # the NumPy reference is the baseline: it is there with or without torch
                rows.append(_row(section, f"B={B}, {H} heads, head size {D}, float32", f"T={T}", name,
                                 times[name], "numpy", times["numpy"] / times[name], peak=peaks[name]))
    return rows


# ----------------------------------------------------------- integer matmul
def _without_f32_gemm(fn, *args):
    """fn(*args) with the weight-only float32 GEMM switched off: dequantize + BLAS, the path
    of CPUs without AVX2 + FMA (and of float64)."""
    from .kernels import int_matmul as K

    K.USE_F32_GEMM = False
    try:
        return fn(*args)
    finally:
        K.USE_F32_GEMM = True


def bench_int_matmul(quick, torch):
    from .kernels import int_matmul as K
    from .kernels import int_matmul_ref as R
    from .kernels.matmul import matmul

    shapes = [("base c_attn", 2048, 128, 384), ("base mlp.c_proj", 2048, 512, 128),
              ("gpt2 768x768", 512, 768, 768), ("gpt2 768x3072", 512, 768, 3072),
              ("gpt2 3072x768", 512, 3072, 768), ("gpt2 decode 768x3072", 1, 768, 3072),
              ("gpt2 decode 3072x768", 1, 3072, 768)]
    if quick:
        shapes = [shapes[0], shapes[3], shapes[5]]
    repeats = 5 if quick else 20
    rng = np.random.default_rng(0)
    rows = []
    for label, M, Kd, N in shapes:
        x = rng.standard_normal((M, Kd)).astype(np.float32)
        w = (rng.standard_normal((Kd, N)) / np.sqrt(Kd)).astype(np.float32)
        w_q, w_s = R.quantize_per_channel(w)
        p4, s4 = R.quantize_int4_groupwise(w, 32)
        impls = {
            "numpy float32 @": lambda: x @ w,
            "float32 linear's product (split over threads)": lambda: matmul(x, w),  # BLAS on 1 thread in each
            "numba int8 x int8": lambda: K.quantized_linear_int8(x, w_q, w_s),  # x quantized per token inside
            "numba int8 weights": lambda: K.int8_weight_matmul(x, w_q, w_s),
            "numba int4 weights": lambda: K.int4_weight_matmul(x, p4, s4, 32),
        }
        if K.USE_F32_GEMM and M >= K.DEQUANT_MIN_ROWS:  # a batch: also the other CPUs' path (the one before)
            impls["numba int8 weights, dequantize + BLAS"] = lambda: _without_f32_gemm(K.int8_weight_matmul,
                                                                                        x, w_q, w_s)
            impls["numba int4 weights, dequantize + BLAS"] = lambda: _without_f32_gemm(K.int4_weight_matmul,
                                                                                        x, p4, s4, 32)
        if torch is not None:
            lin = torch.nn.Linear(Kd, N, bias=False)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w.T.copy()))
            with warnings.catch_warnings():  # torch's notice that its quantized tensors are deprecated
                warnings.filterwarnings("ignore", message=".*quantize_per_tensor", category=UserWarning)
                qlin = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear},
                                                              dtype=torch.qint8)
            tx = torch.from_numpy(x)

            def t_q(m=qlin, tx=tx):
                with torch.no_grad():
                    return m(tx)

            impls["torch dynamic int8 Linear"] = t_q
        times = _interleaved_medians(impls, repeats)  # a burst of load falls on every row alike
        ops = 2.0 * M * Kd * N
        about = ("M x K x N, GOPS = 2 M K N / time; int8 x int8 (W8A8) and torch's dynamic Linear "
                 "include quantizing x per call")
        for name in impls:
            rows.append(_row("int matmul", about, f"{label} (M={M})", name,
                             times[name], "numpy float32 @", times["numpy float32 @"] / times[name],
                             rate=ops / times[name] / 1e9, unit="GOPS"))
    return rows



# ---------------------------------------------------------- sparse products
def crossover(points):
    """The sparsity from which the sparse product is faster than dense, from
    [(sparsity, speed-up over dense)] (any order): the point where the
    speed-up reaches 1 and stays above it, interpolated linearly in
    log(speed-up) between the two measured sparsities around it. Returns
    (value, text): (s, "~s%"), (None, "below s%") if sparse wins at every
    measured sparsity, (None, "above s%") if at none."""
    points = sorted(points)
    wins = [r >= 1.0 for _, r in points]
    if all(wins):
        return None, f"below {points[0][0]:.0%}"
    if not wins[-1]:
        return None, f"above {points[-1][0]:.0%}"
    i = len(wins) - wins[::-1].index(False)  # first sparsity of the final run of wins
    (s0, r0), (s1, r1) = points[i - 1], points[i]
    s = s0 + (s1 - s0) * (-np.log(r0)) / (np.log(r1) - np.log(r0))
    return s, f"~{s:.0%}"


def _interleaved_medians(fns, repeats):
    """{name: median seconds}: one untimed call each, then `repeats` rounds that
    time every fn once in turn, so a burst of load from other processes falls on
    all of them alike instead of on whichever ran during it (the ratios are what
    these sections report)."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def _pruned_weight(rng, K, N, sparsity):
    """A (K, N) float32 weight with round(sparsity K N) zeros at random places."""
    w = (rng.standard_normal((K, N)) / np.sqrt(K)).astype(np.float32)
    w.reshape(-1)[rng.permutation(K * N)[: round(sparsity * K * N)]] = 0
    return w


SPARSE_SHAPE, SPARSE_BATCH = (768, 3072), 512  # GPT-2-small's mlp.c_fc (K, N); rows of the batch product


def bench_sparse(quick, torch):
    """CSR x dense (numba) against the dense float32 product (BLAS) of the same
    pruned matrix, zeros included, at GPT-2-small's 768 x 3072: one decoding
    row and a batch of 512 rows, across sparsities; the crossover is in each title."""
    from .kernels.sparse import sparse_matmul, threads_used
    from .layers.sparse_linear import csr_from_dense
    from .prune.sparse import csr_nbytes

    K, N = SPARSE_SHAPE
    sparsities = (0.5, 0.7, 0.8, 0.9, 0.95) if quick else (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
    rng = np.random.default_rng(0)
    weights = {s: _pruned_weight(rng, K, N, s) for s in sparsities}
    rows = []
    for section, M, repeats in (("sparse matvec", 1, 50 if quick else 200),
                                ("sparse matmul", SPARSE_BATCH, 3 if quick else 10)):
        x = rng.standard_normal((M, K)).astype(np.float32)
        times, labels = {}, {}
        for s, w in weights.items():
            c = csr_from_dense(w)
            n = threads_used(M, c["values"].size)
            labels[s] = f"numba CSR, {n} thread{'s' if n > 1 else ''} ({csr_nbytes(c) / 2**20:.1f} MB)"
            times[s] = _interleaved_medians({
                "dense": lambda x=x, w=w: x @ w,
                "csr": lambda x=x, c=c: sparse_matmul(x, c["values"], c["indices"], c["indptr"])}, repeats)
        speedups = {s: t["dense"] / t["csr"] for s, t in times.items()}
        _, where = crossover(list(speedups.items()))
        about = (f"{K} x {N} float32, {'one decoding row' if M == 1 else f'{M} rows'} (M={M}); dense multiplies "
                 f"the zeros too ({K * N * 4 / 2**20:.1f} MB); sparse faster from {where} sparsity")
        for s, t in times.items():
            case = f"{s:.0%} zeros"
            dense = "numpy float32 @ (dense)"
            rows.append(_row(section, about, case, dense, t["dense"], dense, 1.0))
            rows.append(_row(section, about, case, labels[s], t["csr"], dense, speedups[s]))
    return rows


# ------------------------------------------------------- structured pruning
def _mlp_forward(u, p, ops):
    """The block's MLP branch, mlp(u) = c_proj(gelu(c_fc(u))), through the op table ops."""
    m, _ = ops["linear"][0](u, p["mlp.c_fc.weight"], p["mlp.c_fc.bias"])  # (B, T, F)
    m, _ = ops["gelu"][0](m)
    return ops["linear"][0](m, p["mlp.c_proj.weight"], p["mlp.c_proj.bias"])[0]  # (B, T, C)


def _attention_forward(u, p, ops, head_size):
    """The block's attention branch, c_proj(heads(c_attn(u))), through the op table ops."""
    from .layers.attention import multihead_attention_forward
    from .layers.block import block_heads

    a, _ = ops["linear"][0](u, p["attn.c_attn.weight"], p["attn.c_attn.bias"])  # (B, T, 3 H D)
    a, _ = multihead_attention_forward(a, block_heads(p, head_size), ops["attention"])  # (B, T, H D)
    return ops["linear"][0](a, p["attn.c_proj.weight"], p["attn.c_proj.bias"])[0]  # (B, T, C)


STRUCTURED_BLOCK = {"n_head": 12, "n_embd": 768}  # GPT-2-small's block
STRUCTURED_TOKENS = {False: (4, 256), True: (2, 256)}  # (B, T) by quick


def bench_structured(quick, torch):
    """A GPT-2-small block's MLP and attention before and after removing half of
    its neurons / heads (minigpt.prune: smaller matrices), each through the
    NumPy reference ops and the numba ops; speed-up over the dense layer with the same ops."""
    from .config import GPTConfig
    from .model import init_params
    from .ops import op_table
    from .prune import remove_heads, remove_neurons

    cfg = GPTConfig(vocab_size=96, block_size=256, n_layer=1, **STRUCTURED_BLOCK)
    B, T = STRUCTURED_TOKENS[quick]
    H, F = cfg.n_head, 4 * cfg.n_embd
    dense = init_params(cfg, seed=0)
    rng = np.random.default_rng(0)
    pruned = {
        "mlp": remove_neurons(dense, cfg, {0: sorted(rng.permutation(F)[: F // 2].tolist())}),
        "attention": remove_heads(dense, cfg, {0: sorted(rng.permutation(H)[: H // 2].tolist())}),
    }
    u = rng.standard_normal((B, T, cfg.n_embd)).astype(np.float32)  # a LayerNorm's output: unit scale
    block = {name: {k[len("h.0."):]: v for k, v in P.items() if k.startswith("h.0.")}
             for name, P in (("dense", dense), *pruned.items())}
    labels = {"mlp": (f"dense ({F} neurons)", f"half the neurons removed ({F // 2})"),
              "attention": (f"dense ({H} heads)", f"half the heads removed ({H // 2})")}
    rows = []
    about = (f"a block {cfg.n_embd} wide, {H} heads of {cfg.head_size}, MLP {F} (GPT-2-small's), B={B} x T={T}, "
             "float32; each layer's forward, pruned vs dense with the same ops")
    for part, forward in (("mlp", _mlp_forward), ("attention", _attention_forward)):
        for backend in ("numpy", "numba"):
            ops = op_table(backend)
            args = (ops, cfg.head_size) if part == "attention" else (ops,)
            times = _interleaved_medians({
                "dense": lambda p=block["dense"], a=args, f=forward: f(u, p, *a),
                "pruned": lambda p=block[part], a=args, f=forward: f(u, p, *a)}, 3 if quick else 10)
            case = f"{'MLP' if part == 'mlp' else 'attention'}, {backend} ops"
            for which, label in zip(("dense", "pruned"), labels[part]):
                rows.append(_row("structured", about, case, label, times[which], "the dense layer",
                                 times["dense"] / times[which]))
    return rows


# ------------------------------------------------------------ training step
def _torch_gpt(torch, cfg):
    """The same GPT-2 architecture in PyTorch eager (for timing only)."""
    nn, F = torch.nn, torch.nn.functional

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            C = cfg.n_embd
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.c_attn, self.attn_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (a.view(B, T, cfg.n_head, C // cfg.n_head).transpose(1, 2) for a in (q, k, v))
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
            x = x + self.attn_proj(a)
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
            self.h = nn.ModuleList(Block() for _ in range(cfg.n_layer))
            self.ln_f = nn.LayerNorm(cfg.n_embd)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for block in self.h:
                x = block(x)
            logits = self.ln_f(x) @ self.wte.weight.T  # tied head
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    model = GPT()
    model.config = cfg
    return model


def bench_train_to(target, torch, **settings):
    """Rows of the time minigpt and (if installed) PyTorch eager take to reach
    val loss `target` with one recipe (minigpt.train_to; settings: its options)."""
    from .train_to import run_train_to

    results, meta = run_train_to(target, None if torch is None else (lambda cfg: _torch_gpt(torch, cfg)), **settings)
    base = results["minigpt numba"][1]
    return [_row("train to loss", meta["about"], "", f"{name}: {'reached' if ok else 'NOT reached'} at step {steps} "
                 f"(val {val:.4f})", seconds, "minigpt numba", base / seconds,
                 rate=steps * meta["tokens_per_step"] / seconds, unit="tok/s")
            for name, (steps, seconds, val, ok) in results.items()]


# The shapes of the training-step rows: the base preset, and the small
# char-level shape of the issue that asked for them (4 layers, 128 wide,
# block 64, batch 12), where per-call overheads weigh most.
TRAIN_SHAPES = {"base": ("base", None, None), "small": ("base", 64, 12)}  # (preset, block_size, batch)


def _train_setup(shape):
    """(cfg, tcfg, x, y) for one of TRAIN_SHAPES, vocabulary 96."""
    from .config import preset

    name, block, batch = TRAIN_SHAPES[shape]
    cfg, tcfg = preset(name, 96, block_size=block, batch_size=batch)
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.vocab_size, (tcfg.batch_size, cfg.block_size))
    y = rng.integers(0, cfg.vocab_size, (tcfg.batch_size, cfg.block_size))
    return cfg, tcfg, x, y


def _minigpt_step(cfg, tcfg, x, y, backend):
    """One training step of minigpt (forward, backward, clipping, AdamW) as a function."""
    from .model import GPT
    from .optim import AdamW, clip_grad_norm

    model = GPT(cfg, seed=0, backend=backend)
    model.training = True
    opt = AdamW(model.params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)

    def step():
        model.forward(x, y)
        grads = model.backward()
        clip_grad_norm(grads, tcfg.grad_clip)
        opt.step(grads, tcfg.lr)

    return step


def bench_train_step(quick, torch):
    repeats = 3 if quick else 10
    rows = []
    for shape in TRAIN_SHAPES:
        cfg, tcfg, x, y = _train_setup(shape)
        B, T = x.shape
        steps = {f"minigpt {b}": _minigpt_step(cfg, tcfg, x, y, b) for b in ("numpy", "numba")}
        if torch is not None:
            tm = _torch_gpt(torch, cfg)
            topt = torch.optim.AdamW(tm.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
            tx, ty = torch.from_numpy(x), torch.from_numpy(y)

            def t_step(tm=tm, topt=topt, tx=tx, ty=ty):
                topt.zero_grad()
                tm(tx, ty).backward()
                torch.nn.utils.clip_grad_norm_(tm.parameters(), tcfg.grad_clip)
                topt.step()

            steps["torch eager"] = t_step
        times = _interleaved_medians(steps, repeats)  # a burst of load falls on every implementation alike
        case = f"{shape}: {cfg.n_layer}L {cfg.n_embd}w T={T} B={B}"
        rows += [_row("train step", "forward, backward, clipping, AdamW", case, name, t, "minigpt numpy",
                      times["minigpt numpy"] / t, rate=B * T / t, unit="tok/s") for name, t in times.items()]
    return rows


KERNEL_OPS = ("attention", "gelu", "layernorm", "linear")  # the numba backend's ops in a training step


def l2_cache_bytes(root="/sys/devices/system/cpu/cpu0/cache"):
    """This CPU's per-core level-2 cache in bytes, read from the kernel (Linux), else 4 MB."""
    try:
        for index in sorted(os.listdir(root)):
            d = os.path.join(root, index)
            with open(os.path.join(d, "level")) as f:
                if f.read().strip() != "2":
                    continue
            with open(os.path.join(d, "size")) as f:
                size = f.read().strip().upper()
            units = {"K": 2**10, "M": 2**20, "G": 2**30}
            return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
    except (OSError, ValueError):
        pass
    return 4 * 2**20


def _cache_evictor():
    """A function that pushes the calling core's caches out (by writing a
    buffer four times this CPU's L2): afterwards a kernel's arguments come
    from L3 or memory, as a training step's do (a step's arrays are many
    times the L2). A second thread's core keeps its own L2."""
    buf = np.zeros(4 * l2_cache_bytes() // 8)

    def evict():
        buf[::8] += 1.0  # one write per 64-byte line: every line is fetched and dirtied

    return evict


def bench_kernels_in_step(quick, torch):
    """Each numba op's time inside training steps (the small shape) against the
    same calls, same arguments, repeated alone: the two thread pools (numba's
    and the products') taking cores from each other would show as a ratio
    well below 1. Per op: the sum over one step's calls, median over steps;
    alone: the sum of the same calls run again right after each step, median over steps.

    Run again right away, a call finds its arguments (and the memory its
    outputs reuse) in cache, which inside a step they mostly are not: a
    third row runs each call alone after evicting the caches (_cache_evictor),
    the other bound. A kernel slowed only by where its data was sits between
    the two; one slower than both is slowed by something else (threads)."""
    from . import model as M

    cfg, tcfg, x, y = _train_setup("small")
    table = M.op_table("numba")
    last = {}  # (op, "fwd" | "bwd") -> [(args, seconds)] of the current step

    def timed(key, fn):
        def call(*args):
            t0 = time.perf_counter()
            out = fn(*args)
            last.setdefault(key, []).append((fn, args, time.perf_counter() - t0))
            return out

        return call

    def timed_pair(op):  # attention's pair also carries its packed-qkv twin (kernels.attention.AttentionKernel)
        pair = table[op]
        wrapped = (timed((op, "fwd"), pair[0]), timed((op, "bwd"), pair[1]))
        on_qkv = getattr(pair, "on_qkv", None)
        if on_qkv is None:
            return wrapped
        return type(pair)(wrapped, (timed((op, "fwd"), on_qkv[0]), timed((op, "bwd"), on_qkv[1])))

    ops = {**table, **{op: timed_pair(op) for op in KERNEL_OPS}}
    original = M.op_table
    M.op_table = lambda backend: ops  # the model asks the table at every forward
    in_step, alone, cold = {}, {}, {}
    evict = _cache_evictor()
    try:
        step = _minigpt_step(cfg, tcfg, x, y, "numba")
        step()
        # Interleaved: each step, then each of its calls again, alone, with the
        # same arguments; a burst of load from other processes falls on both.
        for _ in range(5 if quick else 20):
            last.clear()
            step()
            for key, calls in last.items():
                in_step.setdefault(key, []).append(sum(t for _, _, t in calls))
                seconds = 0.0
                for fn, args, _ in calls:
                    t0 = time.perf_counter()
                    fn(*args)
                    seconds += time.perf_counter() - t0
                alone.setdefault(key, []).append(seconds)
                seconds = 0.0
                for fn, args, _ in calls:
                    evict()
                    t0 = time.perf_counter()
                    fn(*args)
                    seconds += time.perf_counter() - t0
                cold.setdefault(key, []).append(seconds)
    finally:
        M.op_table = original
    rows = []
    about = (f"small shape ({cfg.n_layer}L {cfg.n_embd}w T={cfg.block_size} B={tcfg.batch_size}), the sum of one "
             "step's calls, and of the same calls again right after the step, alone (data in cache), and alone "
             f"with the caches evicted before each call (a {4 * l2_cache_bytes() // 2**20} MB buffer written: "
             "data from L3/memory, as in a step); medians over steps")
    for (op, which), calls in last.items():
        t_alone, t_in = statistics.median(alone[(op, which)]), statistics.median(in_step[(op, which)])
        t_cold = statistics.median(cold[(op, which)])
        case = f"{op} {'forward' if which == 'fwd' else 'backward'} ({len(calls)} calls)"
        rows.append(_row("kernels in step", about, case, "alone", t_alone, "alone", 1.0))
        rows.append(_row("kernels in step", about, case, "inside the training step", t_in, "alone", t_alone / t_in))
        rows.append(_row("kernels in step", about, case, "alone, caches evicted", t_cold, "alone", t_alone / t_cold))
    return rows


# --------------------------------------------------------------- generation
GENERATE_VOCAB = 50257  # GPT-2's


def bench_generation(quick, torch):
    from .config import GPTConfig
    from .quant import quantize_model, weight_bytes
    from .model import GPT

    # GPT-2 small itself, vocab included (random weights): the tied head (50257 x 768,
    # kept in float32 by quantize_model) is a fixed cost every precision pays per token,
    # about half of an int4 token here; the "+ int8 head" rows store it as int8 too (opt-in)
    cfg = GPTConfig(vocab_size=GENERATE_VOCAB, block_size=256, n_layer=12, n_head=12, n_embd=768)
    n_new = 16 if quick else 64
    model = GPT(cfg, seed=0)
    models = {"float32": model, "int8 weights": quantize_model(model, "int8"),
              "int4 weights": quantize_model(model, "int4"),
              "int8 weights + int8 head": quantize_model(model, "int8", head="int8"),
              "int4 weights + int8 head": quantize_model(model, "int4", head="int8")}
    times = _interleaved_medians({name: lambda m=m: m.generate([0], n_new, temperature=0)
                                  for name, m in models.items()}, 1 if quick else 3)
    about = (f"GPT-2-small shape (12L 768w, vocab {GENERATE_VOCAB}, float32 head unless + int8 head), KV cache, "
             f"batch 1, {n_new} tokens")
    return [_row("generate", about, "", f"{name} ({weight_bytes(m.params) / 2**20:.0f} MB)", times[name], "float32",
                 times["float32"] / times[name], rate=n_new / times[name], unit="tok/s")
            for name, m in models.items()]


# ------------------------------------------------------------------ driver
# The sections of a run, in the order they run and print (minigpt bench --sections picks some).
SECTIONS = ("attention", "int_matmul", "sparse", "structured", "train", "kernels_in_step", "generate")


def run_bench(quick=False, sections=SECTIONS, log=sys.stderr):
    import numba

    from . import kernels  # sets OMP_WAIT_POLICY=PASSIVE before torch's OpenMP starts

    # torch before numba's first parallel kernel (the warm-up): imported after numba's
    # OpenMP pool had started, torch on two threads ran SDPA ~10x slower (49 against
    # 5 ms, B=16, T=256, 4 heads of 32; Xeon family 6 model 207)
    torch = _torch()
    if log is not None and {"attention", "structured", "train", "kernels_in_step"} & set(sections):
        kernels.warm_up("float32")  # a cold numba cache compiles here, announced, not in a silent first row

    # Three thread pools share the cores here: numba's and torch's OpenMP
    # and NumPy's BLAS. OpenMP workers that spin after their loop keep the
    # cores from the others (measured: a float32 matvec took 8 ms instead of
    # 0.06 ms after a torch call), so every pool waits passively; that costs
    # each library a little wake-up latency and keeps the comparison fair.
    _set_mmap_threshold(TIMING_MMAP_THRESHOLD)  # the same allocator behaviour for every timing
    threads = numba.get_num_threads()
    if torch is not None:
        torch.set_num_threads(threads)
    info = {"cpu": cpu_model(), "cores": cpu_cores(), "threads": threads, **machine_info(),
            "numpy": np.__version__, "numba": numba.__version__,
            "torch": None if torch is None else torch.__version__, "quick": quick}
    funcs = {"attention": bench_attention, "int_matmul": bench_int_matmul, "sparse": bench_sparse,
             "structured": bench_structured, "train": bench_train_step, "kernels_in_step": bench_kernels_in_step,
             "generate": bench_generation}
    rows = []
    for name in sections:
        t0 = time.perf_counter()
        rows += funcs[name](quick, torch)
        if log is not None:
            print(f"bench: {name} done in {time.perf_counter() - t0:.1f} s", file=log)
    info.update(machine_info())  # BLAS goes to one thread once the numba backend's products run (kernels/matmul.py)
    return info, rows


def _columns(header, rows, right):
    """Lines of a plain-text table: every column as wide as its widest cell,
    two spaces between columns; right[i] right-aligns column i (numbers)."""
    widths = [max(len(str(line[i])) for line in [header, *rows]) for i in range(len(header))]

    def fmt(cells):
        return "  ".join(str(c).rjust(w) if r else str(c).ljust(w)
                         for c, w, r in zip(cells, widths, right)).rstrip()

    return [fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]


def _section_table(rows):
    """One section's rows as a titled table; every speed-up is over the one baseline named in the title."""
    first = rows[0]
    baselines = {r["baseline"] for r in rows}
    assert len(baselines) == 1, f"one baseline per table, got {baselines}"
    title = (f"{first['section']}: {first['about']}; speed-up = x faster than {first['baseline']} "
             "(higher is better)")
    show_case = any(r["case"] for r in rows)
    show_rate = any(r["rate"] is not None for r in rows)
    show_peak = any(r["peak_mb"] is not None for r in rows)
    header = (["case"] if show_case else []) + ["impl", "ms"] + ([first["unit"]] if show_rate else []) \
        + ["speed-up"] + (["peak MB"] if show_peak else [])
    right = [False] * show_case + [False, True] + [True] * show_rate + [True] + [True] * show_peak
    body, last_case = [], None
    for r in rows:
        line = []
        if show_case:
            line.append(r["case"] if r["case"] != last_case else "")  # a case's first row names it
            last_case = r["case"]
        line += [r["impl"], f"{r['ms']:.2f}"]
        if show_rate:
            line.append(f"{r['rate']:,.1f}" if r["rate"] is not None else "")
        line.append(f"{r['speedup']:.2f}x")
        if show_peak:
            line.append(f"{r['peak_mb']:.0f}" if r["peak_mb"] is not None else "-")
        body.append(line)
    return [title, *_columns(header, body, right)]


def format_table(info, rows):
    """The header line (CPU, threads, versions), then one table per section."""
    torch = info["torch"]
    threads = f"{info['threads']} thread{'s' if info['threads'] != 1 else ''}"
    simd = f" (SIMD: {', '.join(info['simd'])})" if info.get("simd") else ""
    layer = f" ({info['numba_threading']})" if info.get("numba_threading") else ""
    head = (f"minigpt bench on {info['cpu']}, {info['cores']} cores{simd}; {threads} for "
            f"numba{layer}{' and torch' if torch else ''}, {_blas_text(info)}; numpy {info['numpy']}, "
            f"numba {info['numba']}, torch {torch or 'not installed'}; median of repeats, warm-up excluded"
            + ("; --quick" if info.get("quick") else ""))
    lines = [head]
    sections = list(dict.fromkeys(r["section"] for r in rows))  # in run order
    for name in sections:
        lines += ["", *_section_table([r for r in rows if r["section"] == name])]
    return "\n".join(lines)


def cmd_bench(args):
    if args.train_to is not None:
        if args.sections:
            raise MinigptError("--sections picks tables; --train-to runs instead of them: give one of the two")
        return _cmd_train_to(args)
    sections = tuple(s for s in SECTIONS if s in (args.sections or SECTIONS))  # the run's own order
    info, rows = run_bench(quick=args.quick, sections=sections)
    return _report(info, rows, args.json)


def _report(info, rows, json_path):
    """Print the tables; with --json, also write {"info", "rows"} to that file. Returns 0."""
    print(format_table(info, rows))
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=1)
    return 0


def _cmd_train_to(args):
    """--train-to LOSS: only the time-to-quality table (minigpt.train_to)."""
    for name in ("train_to", "max_steps", "eval_every", "batch_size", "block_size"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise MinigptError(f"--{name.replace('_', '-')} must be positive, got {value}")
    info, _ = run_bench(sections=(), log=None)
    rows = bench_train_to(args.train_to, _torch(), preset_name=args.preset or "tiny", text=args.text,
                          block_size=args.block_size, batch_size=args.batch_size, max_steps=args.max_steps,
                          eval_every=args.eval_every or 50)
    info.update(machine_info())
    return _report(info, rows, args.json)


def register(sub):
    """Add the ``bench`` subcommand to the CLI's subparsers."""
    p = sub.add_parser("bench", help="time the kernels against NumPy (and PyTorch if installed)",
                       description="Attention, integer matmul, a training step and generation, each "
                                   "implementation timed side by side in one run; prints a table per section, "
                                   "each as speed-ups over one named baseline.")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats (under a minute)")
    p.add_argument("--json", metavar="FILE", help="also write the numbers to FILE as JSON")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, metavar="NAME",
                   help=f"run only these sections (default: all): {', '.join(SECTIONS)}")
    g = p.add_argument_group("time to quality (instead of the tables above)")
    g.add_argument("--train-to", type=float, metavar="LOSS",
                   help="train minigpt and the same recipe in PyTorch eager (same init, batches, AdamW, schedule) "
                        "until the validation loss is at most LOSS; report the training time of each")
    g.add_argument("--preset", choices=["tiny", "small", "base"], help="model and recipe (default: tiny)")
    g.add_argument("--text", metavar="FILE", help="UTF-8 text to train on (default: the embedded corpus)")
    g.add_argument("--block-size", type=int, help="context length (default: the preset's)")
    g.add_argument("--batch-size", type=int, help="sequences per step (default: the preset's)")
    g.add_argument("--max-steps", type=int, help="give up after this many steps (default: the preset's steps)")
    g.add_argument("--eval-every", type=int, help="steps between validations (default: 50)")
    p.set_defaults(func=cmd_bench)
