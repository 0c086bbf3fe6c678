"""The Deep Compression pipeline (Han et al. 2016), chained from minigpt's pieces:

    prune (masks) -> fine-tune with the masks -> k-means quantize the alive weights
    -> fine-tune the centroids -> Huffman code the indices and the sparse gaps

    masks = sensitivity_masks(...) or magnitude_masks(model.params, 0.7)   # minigpt.prune
    rows, qmodel, packed = deep_compression(model, dataset, masks, bits=4, tcfg=TrainConfig(steps=200))
    for r in rows: print(r["stage"], r["val_loss"], r["bytes"], r["ratio"])

Each row is one stage: its validation loss (mean over the same validation
batches for every stage) and the bytes that store the block linears' weights
at that stage; ratio = their float bytes / those bytes. Only the matrices the
pipeline compresses are counted (the embeddings, also the tied output head,
LayerNorms and biases stay float and are left out of both sides).

    dense      4 bytes a weight (float32)
    pruned     CSR (minigpt.prune.sparse): float values, uint16 row indices, int64 column pointers
    k-means    the same positions, and a b-bit index a nonzero instead of its value, + the codebook
    Huffman    the indices and the gaps between positions Huffman coded (minigpt.quant.huffman),
               + code lengths, column pointers and codebook

The Huffman stage is lossless: `packed` holds its arrays and huffman_unpack
rebuilds the k-means weights from them exactly, which the pipeline checks.
"""
from __future__ import annotations

import math

import numpy as np

from ..data import Dataset
from ..config import TrainConfig
from ..layers.sparse_linear import csr_from_dense
from ..model import GPT
from ..prune.masks import apply
from ..prune.sparse import csr_nbytes
from ..train import train
from .huffman import huffman_decode, huffman_encode, huffman_nbytes, indices_from_gaps, sparse_gaps
from .kmeans import finetune_centroids, kmeans_dequantize, kmeans_model
from .weights import is_quantizable


def _positions(alive):
    """(rows, cols, indptr) of the alive entries of a (K, N) mask in CSR-by-column order."""
    cols, rows = np.nonzero(np.asarray(alive).T)  # column by column, rows ascending
    indptr = np.zeros(alive.shape[1] + 1, dtype=np.int64)
    np.cumsum(np.bincount(cols, minlength=alive.shape[1]), out=indptr[1:])
    return rows, cols, indptr


def kmeans_sparse_nbytes(q: dict, alive) -> int:
    """Bytes of a pruned k-means weight: uint16 row indices and int64 column pointers of the alive
    entries, a b-bit index each, and the codebook."""
    rows, _, indptr = _positions(alive)
    bits = math.ceil(math.log2(len(q["codebook"])))
    return int(rows.size * 2 + indptr.nbytes + math.ceil(rows.size * bits / 8) + q["codebook"].nbytes)


def huffman_pack(q: dict, alive) -> dict:
    """Plain arrays of a pruned k-means weight, Huffman coded: "idx_*" the alive entries' indices,
    "gap_*" the gaps between their rows (minigpt.quant.huffman.sparse_gaps), "indptr", "codebook"."""
    rows, cols, indptr = _positions(alive)
    idx = huffman_encode(q["kmeans_idx"][rows, cols], len(q["codebook"]))
    gaps = huffman_encode(sparse_gaps({"indices": rows, "indptr": indptr}))
    return {**{f"idx_{k}": a for k, a in idx.items()}, **{f"gap_{k}": a for k, a in gaps.items()},
            "indptr": indptr, "codebook": q["codebook"], "shape": np.array(alive.shape, dtype=np.int64)}


def huffman_unpack(p: dict) -> np.ndarray:
    """W_hat (K, N) from huffman_pack's arrays: decode, place, look up (pruned entries 0)."""
    indptr = p["indptr"]
    rows = indices_from_gaps(huffman_decode({k[4:]: a for k, a in p.items() if k.startswith("gap_")}), indptr)
    cols = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))  # (nnz,)
    idx = np.zeros(tuple(p["shape"]), dtype=np.uint8)
    idx[rows, cols] = huffman_decode({k[4:]: a for k, a in p.items() if k.startswith("idx_")})
    return p["codebook"][idx]  # (K, N); codebook[0] = 0 is the pruned entries' value


def packed_nbytes(p: dict) -> int:
    """Bytes of huffman_pack's arrays (the shape's two int64 left out, as CSR's are)."""
    return int(huffman_nbytes({"bits": p["idx_bits"], "lengths": p["idx_lengths"]})
               + huffman_nbytes({"bits": p["gap_bits"], "lengths": p["gap_lengths"]})
               + p["indptr"].nbytes + p["codebook"].nbytes)


def deep_compression(model: GPT, dataset: Dataset, masks: dict, bits: int, tcfg: TrainConfig,
                     centroid_steps=50, centroid_lr=1e-3, eval_batches=8, seed=0):
    """(rows, k-means model, {weight name: huffman_pack arrays}): the five stages on a copy of model.

    masks: {block linear weight name: bool (K, N), True = alive} (minigpt.prune); tcfg: the
    masked fine-tuning (minigpt.train.train); centroid_steps, centroid_lr: finetune_centroids
    on training batches. The model passed in is not changed.
    """
    names = sorted(masks)
    rng = np.random.default_rng(seed)
    val = [dataset.get_batch("val", tcfg.batch_size, rng) for _ in range(eval_batches)]
    rows = []

    def row(stage, m, nbytes):
        loss = float(np.mean([m.loss(x, y) for x, y in val]))
        rows.append({"stage": stage, "val_loss": loss, "bytes": int(nbytes), "ratio": dense / nbytes})

    dense = sum(model.params[n].nbytes for n in names)
    row("dense", model, dense)
    pruned = GPT(model.config, params=apply(model.params, masks), backend=model.backend, tokenizer=model.tokenizer)
    row("pruned", pruned, sum(csr_nbytes(csr_from_dense(pruned.params[n])) for n in names))
    train(pruned, dataset, tcfg, progress=False, masks=masks)
    row("fine-tuned with masks", pruned, sum(csr_nbytes(csr_from_dense(pruned.params[n])) for n in names))
    q = kmeans_model(pruned, bits, keep_float=_unmasked(pruned.params, names), masks=masks)
    qs = {n: {"kmeans_idx": q.params[n + ".kmeans_idx"], "codebook": q.params[n + ".codebook"]} for n in names}
    row(f"k-means {bits}-bit", q, sum(kmeans_sparse_nbytes(qs[n], masks[n]) for n in names))
    train_batches = [dataset.get_batch("train", tcfg.batch_size, rng) for _ in range(centroid_steps)]
    if centroid_steps:
        q, _ = finetune_centroids(q, train_batches, centroid_steps, centroid_lr, keep_zero=True)
    qs = {n: {"kmeans_idx": q.params[n + ".kmeans_idx"], "codebook": q.params[n + ".codebook"]} for n in names}
    row("centroids fine-tuned", q, sum(kmeans_sparse_nbytes(qs[n], masks[n]) for n in names))
    packed = {n: huffman_pack(qs[n], masks[n]) for n in names}
    for n in names:  # lossless: the coded arrays give back exactly the weights the model runs
        if not np.array_equal(huffman_unpack(packed[n]), kmeans_dequantize(qs[n])):
            raise RuntimeError(f"Huffman round trip of {n} is not exact")
    row("Huffman coded", q, sum(packed_nbytes(packed[n]) for n in names))
    return rows, q, packed


def _unmasked(params: dict, names) -> tuple[str, ...]:
    """Block linears without a mask stay float: the pipeline compresses only what was pruned."""
    return tuple(n[: -len(".weight")] for n in params if is_quantizable(n) and n not in names)
