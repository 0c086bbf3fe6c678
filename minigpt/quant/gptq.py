"""GPTQ (Frantar et al. 2023): quantize a layer's weights one input at a time,
letting the inputs not yet quantized absorb each rounding error.

A linear layer y = x @ W, W (K, N) stored (in, out). On calibration inputs
X (M, K) the output error of a quantized W_hat is

    E(W_hat) = ||X W - X W_hat||_F^2 = sum_n (w_n - w_hat_n)^T (X^T X) (w_n - w_hat_n)

over the output columns n, each the same quadratic form with the Hessian
H = 2 X^T X (K, K). Round to nearest (RTN) ignores H. GPTQ walks the K
inputs in order (the paper's "columns": its W is (out, in), ours the
transpose, so here they are rows of W). Having quantized row k, with error
e = w_k - w_hat_k (N,), the optimal change of the rows not yet quantized
(Optimal Brain Surgeon's update, with F the set of rows k..K-1) is

    W[F\\{k}] -= H_F^-1[F\\{k}, k] e / H_F^-1[k, k]

and H_F^-1 for the next step is H_F^-1 with row and column k eliminated.
All the rows these steps need come from one Cholesky factor: with
H^-1 = U^T U, U upper triangular,

    err_k = (w_k - w_hat_k) / U[k, k],    W[k+1:] -= outer(U[k, k+1:], err_k)

(the paper's Algorithm 1, in our layout). Lazy batches (block_size rows
at a time) apply the update to the rows past the block with one matrix
product per block instead of one outer product per row; the result is
the same.

Damping: H + lambda mean(diag H) I, lambda = 0.01 (the paper's default,
1% of the mean diagonal) keeps H invertible and the update tame when some
inputs are (nearly) linearly dependent. An input never seen non-zero in
calibration (H[k, k] = 0) gets H[k, k] = 1: rounded to nearest, its error
spread nowhere (the reference code zeroes such weights instead, which
would change the layer on other data).

Scales are those of minigpt's formats, from the one quantizer
(minigpt.kernels.quantizer): symmetric, one per group of g consecutive
inputs of each output (int4, 2-4 bits) or one per output (int8, 5-8 bits,
or group=None). A group's scale is fixed when the group starts, from its
rows as they are then, the earlier groups' updates included (the paper's
grouping); the rows of the group are then quantized on that grid one by
one. If H is a multiple of the identity no update happens and GPTQ is
exactly RTN.

A pruning mask (SparseGPT's joint mode, Frantar & Alistarh 2023) changes one
thing: a pruned weight's code is 0, so its whole current value (moved off 0 by
the earlier rows' updates) is that row's error, which the later rows absorb
like any rounding error; the scales cover the kept weights only. A pruned
checkpoint quantized this way keeps every zero (gptq_params' keep_zeros).

Whole model (gptq_model): block by block, the Hessians of a block's four
linear layers from their inputs in the model whose earlier blocks are
already quantized (so later blocks correct for earlier errors, as in the
paper), all four layers of a block from one pass (the reference code's
default; its "true sequential" mode is not done here). The calibration
sequences' hidden states are carried from block to block
(minigpt.blockwise), so no logits are computed and the inputs of one
block for one batch are in memory at a time: H is summed over batches.
The output is the plain-array format of quantize_params.
"""
from __future__ import annotations

import fnmatch

import numpy as np

from ..errors import ConfigError
from ..kernels.int_matmul_ref import pack_int4
from ..kernels.quantizer import int_range, quantize, quantize_tensor
from ..layers.block import LINEARS
from ..layers.quantized_linear import dequantize
from ..blockwise import BlockInputs
from ..model import GPT
from ..progress import tqdm
from .weights import BITS, check_scheme, is_quantized, weight_arrays

DAMP = 0.01
BLOCK_SIZE = 128
PROGRESS_DELAY = 2.0  # seconds: a small model finishes before any bar appears
KINDS = ("int8", "int4", "w8a8")  # the llama.cpp block formats have their own fixed grids


def hessian(x) -> np.ndarray:
    """H = 2 X^T X / M (K, K) float64 for inputs x (..., K): the Hessian of the
    output error, averaged over the M rows (the mean does not change GPTQ)."""
    x2 = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])  # (M, K)
    return 2.0 * (x2.T @ x2) / x2.shape[0]


def inverse_cholesky(H, damp=DAMP) -> np.ndarray:
    """U (K, K) upper triangular with U^T U = (H + damp mean(diag H) I)^-1 (dead inputs set to H_kk = 1)."""
    H = np.array(H, dtype=np.float64)
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    H[np.diag_indices_from(H)] += damp * np.mean(np.diag(H))
    # With J the flip (reversal) matrix, J H J = M M^T (M lower) gives H = V V^T, V = J M J upper,
    # so H^-1 = V^-T V^-1 = U^T U with U = V^-1 = J M^-1 J: one Cholesky and one triangular inverse
    M = cholesky(H[::-1, ::-1])  # (K, K) lower
    return np.ascontiguousarray(lower_inverse(M)[::-1, ::-1])


_LEAF = 256  # below this size LAPACK is called directly


def cholesky(A) -> np.ndarray:
    """Lower L with L L^T = A (symmetric positive definite), recursively in halves:

        [A11 A21^T]   [L11  0 ] [L11^T L21^T]     L11 = chol(A11), L21 = A21 L11^-T,
        [A21 A22  ] = [L21 L22] [ 0    L22^T],    L22 = chol(A22 - L21 L21^T)

    so the work is in matrix products. (OpenBLAS's own potrf on two threads of a
    busy machine took 5-7 s for K = 3072, ten times its one-thread time; this takes
    well under a second either way.)"""
    n = A.shape[0]
    if n <= _LEAF:
        return np.linalg.cholesky(A)
    k = n // 2
    L11 = cholesky(A[:k, :k])
    L21 = A[k:, :k] @ lower_inverse(L11).T  # (n - k, k)
    L = np.zeros_like(A)
    L[:k, :k], L[k:, :k] = L11, L21
    L[k:, k:] = cholesky(A[k:, k:] - L21 @ L21.T)
    return L


def lower_inverse(L) -> np.ndarray:
    """L^-1 of a lower-triangular L, recursively: [[A, 0], [B, C]]^-1 = [[A^-1, 0], [-C^-1 B A^-1, C^-1]]."""
    n = L.shape[0]
    if n <= _LEAF:
        return np.tril(np.linalg.inv(L))
    k = n // 2
    Ai, Ci = lower_inverse(L[:k, :k]), lower_inverse(L[k:, k:])
    out = np.zeros_like(L)
    out[:k, :k], out[k:, k:] = Ai, Ci
    out[k:, :k] = -Ci @ (L[k:, :k] @ Ai)
    return out


def _up_to_date(W, Err, U, b0, i, b1, rows_end):
    """Rows i..rows_end-1 of W with every update from rows b0..i-1 applied:
    rows inside the block (< b1) have them already, rows past it still owe them."""
    inside = W[i:min(rows_end, b1)]
    if rows_end <= b1:
        return inside
    past = W[b1:rows_end] - U[b0:i, b1:rows_end].T @ Err[: i - b0]  # (rows, N)
    return np.concatenate([inside, past])


def gptq_quantize(w, H, bits=4, group=None, damp=DAMP, block_size=BLOCK_SIZE, mask=None):
    """(q, scales): GPTQ of one weight w (K, N) against the Hessian H (K, K).

    q (K, N) int8 codes in [-(2^(b-1) - 1), 2^(b-1) - 1]; scales (K / g, N) in
    w's dtype (g = K when group is None); W_hat[k, n] = q[k, n] * scales[k // g, n].

    mask (K, N) bool, True where a weight is kept (SparseGPT's joint mode):
    q is 0 wherever mask is False, and that row's error, the whole current
    value there, goes to the later rows like any rounding error, so they
    compensate the pruning too. A group's scales come from its kept weights.
    An all-True mask is plain GPTQ.
    """
    w = np.asarray(w)
    dtype = w.dtype if w.dtype.kind == "f" else np.dtype(np.float64)
    K, N = w.shape
    g = K if group is None else int(group)
    if g <= 0 or K % g:
        raise ConfigError(f"group size {group} does not divide the {K} inputs of this weight")
    if mask is not None and np.shape(mask) != (K, N):
        raise ConfigError(f"mask of shape {np.shape(mask)} for a weight of shape {(K, N)}")
    keep = None if mask is None else np.asarray(mask, dtype=bool)
    q_min, q_max = int_range(bits, symmetric=True)
    U = inverse_cholesky(H, damp)
    W = w.astype(np.float64)  # (K, N), updated in place as rows are quantized
    q = np.zeros((K, N), dtype=np.int8)
    scales = np.zeros((K // g, N), dtype=dtype)
    for b0 in range(0, K, block_size):
        b1 = min(b0 + block_size, K)
        Err = np.zeros((b1 - b0, N))  # (rows of the block, N): scaled errors
        for i in range(b0, b1):
            if i % g == 0:  # the group's grid, from its rows as they are now
                rows = _up_to_date(W, Err, U, b0, i, b1, i + g)
                if keep is not None:
                    rows = rows * keep[i:i + g]  # the grid covers what is stored, not what is pruned
                scales[i // g] = quantize_tensor(rows.astype(dtype), bits, symmetric=True, axis=1).scale
            s = scales[i // g]
            q[i] = quantize(W[i].astype(dtype), s, 0, q_min, q_max)  # in w's dtype, as RTN rounds
            if keep is not None:
                q[i] *= keep[i]  # pruned: stored as 0, its whole value is this row's error
            Err[i - b0] = (W[i] - q[i] * s.astype(np.float64)) / U[i, i]
            W[i + 1:b1] -= np.outer(U[i, i + 1:b1], Err[i - b0])  # (rows left in the block, N)
        W[b1:] -= U[b0:b1, b1:].T @ Err  # the lazy update of every later row
    return q, scales


def stored_arrays(q, scales, kind, group) -> dict:
    """The arrays of format `kind` (minigpt.layers.quantized_linear) for codes q (K, N) and scales."""
    if kind in ("int8", "w8a8"):
        return {kind: np.ascontiguousarray(q.T), "scale": scales[0]}  # (N, K): rows are output channels
    g = q.shape[0] if group is None else int(group)
    return {"int4": pack_int4(q, g), "scales": scales, "group": np.array(g, dtype=np.int64)}


def output_error(w, w_hat, H) -> float:
    """||X W - X W_hat||_F^2 / M from H = 2 X^T X / M: sum_n d_n^T H d_n / 2, d = W - W_hat."""
    d = np.asarray(w, dtype=np.float64) - np.asarray(w_hat, dtype=np.float64)  # (K, N)
    return float(np.sum(d * (H @ d)) / 2.0)


def gptq_params(model: GPT, batches, kind="int4", bits=None, group=32, damp=DAMP, block_size=BLOCK_SIZE,
                keep_float=(), progress=False, keep_zeros=False) -> tuple[dict, dict]:
    """(params, errors): model's block linears quantized with GPTQ, in the format
    quantize_params(model.params, kind, group, bits) writes; errors is
    {layer: {"rtn": E, "gptq": E}}, the output error ||X W - X W_hat||^2 / M on
    the calibration inputs that layer saw, for RTN's and GPTQ's W_hat.

    batches: calibration token ids, each (B, T) (minigpt.quant.rescale.calibration_batches).
    progress: a bar over the blocks, shown once the run has taken PROGRESS_DELAY seconds.
    keep_zeros: every weight that is exactly 0 (a pruned checkpoint's) stays 0, its error
    compensated by the later rows (gptq_quantize's mask, SparseGPT's joint mode).
    """
    bits = bits or max(BITS.get(kind, (8,)))
    if kind not in KINDS:
        raise ConfigError(f"GPTQ writes {' / '.join(KINDS)} weights, not {kind!r}")
    check_scheme(kind, bits, group)
    if is_quantized(model.params):
        raise ConfigError("these weights are quantized already; quantize the float checkpoint instead")
    batches = [np.asarray(b) for b in batches]
    if not batches:
        raise ConfigError("GPTQ needs at least one calibration batch")
    g = None if kind != "int4" else group
    out, work, errors = dict(model.params), dict(model.params), {}
    runner = BlockInputs(model, batches)  # hidden states block by block: no logits, one block's caches
    L = model.config.n_layer
    for i in tqdm(range(L), desc="GPTQ", unit="block", delay=PROGRESS_DELAY, disable=not progress):
        layers = [f"h.{i}.{n}" for n in LINEARS if f"h.{i}.{n}.weight" in model.params  # not sparse
                  and not any(fnmatch.fnmatchcase(f"h.{i}.{n}", p) for p in keep_float)]
        if layers:
            _quantize_block(model, runner, i, layers, work, out, errors, kind, bits, g, damp, block_size,
                            keep_zeros)
        if i + 1 < L:
            runner.advance(i, work)  # later blocks see this block's quantized output
    return out, errors


def _quantize_block(model, runner, i, layers, work, out, errors, kind, bits, g, damp, block_size, keep_zeros):
    """GPTQ of block i's layers from their Hessians; out gets the stored arrays, work the dequantized weights."""
    H = _block_hessians(runner, i, work, layers)
    for layer in layers:
        w = model.params[layer + ".weight"]
        try:
            q, scales = gptq_quantize(w, H[layer], bits, g, damp, block_size, mask=(w != 0) if keep_zeros else None)
        except ConfigError as e:
            raise ConfigError(f"{layer}: {e}") from None
        arrays = stored_arrays(q, scales, kind, g)
        w_hat = dequantize({"format": kind, **arrays}).astype(w.dtype)
        rtn = dequantize({"format": kind, **weight_arrays(w, kind, bits, g)})
        errors[layer] = {"rtn": output_error(w, rtn, H[layer]), "gptq": output_error(w, w_hat, H[layer])}
        del out[layer + ".weight"]
        out.update({f"{layer}.weight.{k}": a for k, a in arrays.items()})
        work[layer + ".weight"] = w_hat  # the next blocks' inputs come through the quantized block


def _block_hessians(runner, i, params, layers) -> dict:
    """{layer: H (K, K)} of block i's layers from their inputs over all batches (a mean over
    every token), summed batch by batch: one batch's inputs in memory, never all of them."""
    sums, count = {}, 0
    for acts in runner.inputs(i, params):
        for layer in layers:
            x = acts[layer[len(f"h.{i}."):]]
            x = x.reshape(-1, x.shape[-1])  # (B T, K)
            # X^T X in the model's dtype, summed in float64: a float32 product of one batch
            # (rel. error ~1e-6) is far inside the 1% damping, and at GPT-2 small's mlp.c_proj
            # (K = 3072) it is twice as fast as float64
            sums[layer] = sums.get(layer, 0.0) + (x.T @ x).astype(np.float64)
        count += x.shape[0]
    return {layer: 2.0 * s / count for layer, s in sums.items()}


def gptq_model(model: GPT, batches, kind="int4", bits=None, group=32, damp=DAMP, block_size=BLOCK_SIZE,
               keep_float=(), keep_zeros=False) -> tuple[GPT, dict]:
    """(quantized GPT, errors): gptq_params wrapped in a model with model's config, tokenizer and backend."""
    params, errors = gptq_params(model, batches, kind, bits, group, damp, block_size, keep_float,
                                 keep_zeros=keep_zeros)
    return GPT(model.config, params=params, backend=model.backend, tokenizer=model.tokenizer), errors
