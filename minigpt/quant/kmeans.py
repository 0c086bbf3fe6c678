"""K-means (non-uniform) weight quantization: weight sharing, as in Deep Compression.

    q = kmeans_quantize(w, bits=4)          # {"kmeans_idx": (K, N) uint8, "codebook": (16,) float}
    w_hat = kmeans_dequantize(q)            # codebook[kmeans_idx]
    qmodel = kmeans_model(model, bits=4)    # every block linear shared this way; saves/loads as arrays
    qmodel, losses = finetune_centroids(qmodel, batches, steps=50, lr=1e-3)

Linear quantization puts its 2^b levels on an even grid; k-means puts them
where the weights are. Each tensor W gets a codebook c of k = 2^b values
(b = 1..8) and every weight stores only the index of its value:

    W_hat[i] = c[a_i],   a_i = argmin_j |W[i] - c_j|

The codebook minimises sum_i (W[i] - c[a_i])^2 by Lloyd's iterations, from
k values spread evenly over [min W, max W] (the linear initialisation Han et
al. 2016 found best: it keeps centroids on the rare large weights):

    assign:  a_i = nearest centroid of W[i]
    update:  c_j = mean of {W[i] : a_i = j}   (an empty cluster keeps its c_j)

until no assignment changes (a fixed point of both steps) or max_iter.

Fine-tuning the centroids: W_hat[i] = c[a_i] with the assignments a frozen, so

    dL/dc_j = sum_{i : a_i = j} dL/dW_hat[i]

the sum of the member weights' gradients, which the model's hand-written
backward gives as dL/dW for the dequantized weight (centroid_gradients).

Bytes: indices are held as uint8 (the parameter dict has no sub-byte array);
packed, they take b bits each (kmeans_nbytes(q, packed=True)), and Huffman
coding (minigpt.quant.huffman) takes fewer when some centroids are common.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError
from ..model import GPT
from .weights import is_quantizable, quantized_layers


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise ConfigError(f"k-means bits must be an integer from 1 to 8, got {bits!r}")
    return int(bits)


def assign(w, codebook) -> np.ndarray:
    """Index of the nearest centroid of every entry of w (ties: the smaller centroid), uint8, w's shape."""
    order = np.argsort(codebook, kind="stable")
    c = np.asarray(codebook, dtype=np.float64)[order]  # sorted centroids (k,)
    mids = (c[1:] + c[:-1]) / 2  # (k-1,) boundaries between neighbouring centroids
    j = np.searchsorted(mids, np.asarray(w, dtype=np.float64), side="left")  # w == mid goes below
    return order[j].astype(np.uint8)


def lloyd_update(w, idx, codebook) -> np.ndarray:
    """c_j = mean of the entries assigned to j (float64); an empty cluster keeps its centroid."""
    k = len(codebook)
    sums = np.bincount(idx.ravel(), weights=np.asarray(w, dtype=np.float64).ravel(), minlength=k)  # (k,)
    counts = np.bincount(idx.ravel(), minlength=k)  # (k,)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.asarray(codebook, dtype=np.float64))


def kmeans_codebook(w, bits: int, max_iter=300) -> tuple[np.ndarray, np.ndarray, int]:
    """(codebook (2^b,) float64, idx uint8 of w's shape, iterations run): Lloyd's k-means on
    the entries of w from 2^b centroids spread linearly over [min w, max w]."""
    return _lloyd(w, 2 ** _check_bits(bits), max_iter)


def _lloyd(w, k: int, max_iter: int):
    w = np.asarray(w)
    if w.size == 0:
        raise ConfigError("cannot k-means quantize an empty tensor")
    c = np.linspace(float(w.min()), float(w.max()), k)  # (k,) the linear initialisation
    idx = assign(w, c)
    for it in range(1, max_iter + 1):
        c = lloyd_update(w, idx, c)
        new = assign(w, c)
        if np.array_equal(new, idx):  # no assignment changed: c is the mean of its members, a fixed point
            return c, idx, it
        idx = new
    return lloyd_update(w, idx, c), idx, max_iter


def kmeans_quantize(w, bits: int, max_iter=300, mask=None) -> dict:
    """{"kmeans_idx": (K, N) uint8, "codebook": (2^b,) in w's dtype}: the arrays that store W.

    mask (bool, w's shape, True = alive): a pruned weight. Then codebook[0] = 0 holds the
    pruned entries (index 0) and the 2^b - 1 other centroids are k-means of the alive ones
    only, so quantizing never brings a pruned weight back (Deep Compression's order)."""
    w = np.asarray(w)
    if mask is None:
        c, idx, _ = kmeans_codebook(w, bits, max_iter)
        return {"kmeans_idx": idx, "codebook": c.astype(w.dtype)}
    mask = np.asarray(mask, dtype=bool)
    k = 2 ** _check_bits(bits)
    idx = np.zeros(w.shape, dtype=np.uint8)
    c = np.zeros(k)
    if mask.any():
        c_alive, idx_alive, _ = _lloyd(w[mask], k - 1, max_iter)
        c[1:] = c_alive
        idx[mask] = idx_alive + 1
    return {"kmeans_idx": idx, "codebook": c.astype(w.dtype)}


def kmeans_dequantize(q: dict) -> np.ndarray:
    """W_hat = codebook[kmeans_idx]."""
    return q["codebook"][q["kmeans_idx"]]


def kmeans_nbytes(q: dict, packed=True) -> int:
    """Bytes of one k-means weight: indices at b = log2(k) bits each if packed (else one
    uint8 each, as held in memory), plus the codebook."""
    k = len(q["codebook"])
    bits = max(1, math.ceil(math.log2(k)))
    idx_bytes = math.ceil(q["kmeans_idx"].size * bits / 8) if packed else q["kmeans_idx"].nbytes
    return int(idx_bytes + q["codebook"].nbytes)


def centroid_gradients(idx, dW, k: int) -> np.ndarray:
    """dL/dc (k,) float64: dL/dc_j = sum of dL/dW_hat over the entries with idx == j."""
    return np.bincount(np.asarray(idx).ravel(), weights=np.asarray(dW, dtype=np.float64).ravel(), minlength=k)


def kmeans_params(params: dict, bits: int, keep_float=(), max_iter=300, masks=None) -> dict:
    """A parameter dict with every block linear's float weight NAME.weight replaced by
    NAME.weight.kmeans_idx and NAME.weight.codebook (layers named in keep_float stay float).
    masks: {NAME.weight: bool, True = alive} of pruned weights (see kmeans_quantize)."""
    bits = _check_bits(bits)
    masks = masks or {}
    out = {}
    for name, w in params.items():
        if is_quantizable(name) and name[: -len(".weight")] not in keep_float:
            q = kmeans_quantize(w, bits, max_iter, masks.get(name))
            out.update({f"{name}.{k}": a for k, a in q.items()})
        else:
            out[name] = w
    return out


def kmeans_model(model: GPT, bits: int, keep_float=(), max_iter=300, masks=None) -> GPT:
    """A copy of model whose block linears are k-means quantized (the float model is unchanged)."""
    params = kmeans_params(model.params, bits, keep_float, max_iter, masks)
    return GPT(model.config, params=params, backend=model.backend, tokenizer=model.tokenizer)


def kmeans_layers(params: dict) -> list[str]:
    """Names of the linear layers stored as k-means weights."""
    return [layer for layer, fmt in quantized_layers(params).items() if fmt == "kmeans"]


def finetune_centroids(model: GPT, batches, steps: int, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, keep_zero=False):
    """(a new k-means GPT, training losses): Adam on the codebooks only, the assignments frozen.
    keep_zero: centroids exactly 0 (a pruned weight's, kmeans_quantize(mask=...)) stay 0.

    batches: a list of (x, y) token arrays (B, T), used in turn. Each step runs the
    forward and backward of the dequantized model and folds each weight's dL/dW into
    its centroids (centroid_gradients); every other parameter stays as it was.
    """
    layers = kmeans_layers(model.params)
    if not layers:
        raise ConfigError("finetune_centroids needs a model with k-means weights (kmeans_model)")
    books = {n: model.params[n + ".weight.codebook"].astype(np.float64) for n in layers}
    floats = {k: v for k, v in model.params.items() if not any(k.startswith(n + ".weight.") for n in layers)}
    m = {n: np.zeros_like(c) for n, c in books.items()}
    v = {n: np.zeros_like(c) for n, c in books.items()}
    losses = []
    for t in range(1, steps + 1):
        x, y = batches[(t - 1) % len(batches)]
        seen = dict(floats)
        for n in layers:
            dtype = model.params[n + ".bias"].dtype
            seen[n + ".weight"] = books[n][model.params[n + ".weight.kmeans_idx"]].astype(dtype)  # (K, N)
        fmodel = GPT(model.config, params=seen, backend=model.backend)
        _, loss = fmodel.forward(x, y)
        grads = fmodel.backward()
        losses.append(float(loss))
        for n in layers:
            g = centroid_gradients(model.params[n + ".weight.kmeans_idx"], grads[n + ".weight"], len(books[n]))
            if keep_zero:
                g[books[n] == 0.0] = 0.0  # Adam's step is then 0 there: m and v stay 0
            m[n] = betas[0] * m[n] + (1 - betas[0]) * g
            v[n] = betas[1] * v[n] + (1 - betas[1]) * g * g
            mhat, vhat = m[n] / (1 - betas[0] ** t), v[n] / (1 - betas[1] ** t)
            books[n] = books[n] - lr * mhat / (np.sqrt(vhat) + eps)
    params = dict(model.params)
    for n in layers:
        params[n + ".weight.codebook"] = books[n].astype(model.params[n + ".weight.codebook"].dtype)
    return GPT(model.config, params=params, backend=model.backend, tokenizer=model.tokenizer), losses
