"""The Deep Compression pipeline (minigpt.quant.deep_compression): the stages in order,
their bytes, pruned weights that stay 0, and a Huffman stage that is exactly lossless."""
import numpy as np

from minigpt import GPT, GPTConfig, TrainConfig
from minigpt.data import Dataset
from minigpt.layers.sparse_linear import csr_from_dense
from minigpt.prune import magnitude_masks
from minigpt.prune.sparse import csr_nbytes
from minigpt.quant import dequantize_params
from minigpt.quant.deep_compression import (
    deep_compression,
    huffman_pack,
    huffman_unpack,
    kmeans_sparse_nbytes,
    packed_nbytes,
)
from minigpt.quant.kmeans import kmeans_quantize

CFG = GPTConfig(vocab_size=12, block_size=16, n_layer=2, n_head=2, n_embd=32, dtype="float32")


def dataset(seed=0):
    """A learnable stream: a repeating pattern with some noise."""
    rng = np.random.default_rng(seed)
    ids = np.tile(np.arange(12), 400)
    noise = rng.random(ids.size) < 0.1
    ids[noise] = rng.integers(0, 12, noise.sum())
    return Dataset(ids[:4000], ids[4000:], CFG.block_size)


def test_huffman_pack_is_lossless_and_counted_right():
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((64, 48)) * 0.05).astype(np.float32)
    alive = rng.random(w.shape) < 0.3
    q = kmeans_quantize(w * alive, 4, mask=alive)
    p = huffman_pack(q, alive)
    np.testing.assert_array_equal(huffman_unpack(p), q["codebook"][q["kmeans_idx"]])
    nnz = int(alive.sum())
    # CSR positions (uint16 rows, int64 pointers) + 4 bits a nonzero + 16 float32 centroids
    assert kmeans_sparse_nbytes(q, alive) == 2 * nnz + 8 * 49 + (4 * nnz + 7) // 8 + 64
    assert packed_nbytes(p) < kmeans_sparse_nbytes(q, alive)


def test_pipeline_stages_bytes_and_losses():
    model = GPT(CFG, seed=0)
    ds = dataset()
    tcfg = TrainConfig(steps=60, batch_size=8, lr=1e-2, warmup_steps=5, eval_every=1000, checkpoint_every=1000)
    from minigpt.train import train
    train(model, ds, tcfg, progress=False)  # a trained-ish model to compress
    before = {k: v.copy() for k, v in model.params.items()}
    masks = magnitude_masks(model.params, 0.6)
    masks = {n: m for n, m in masks.items() if n.startswith("h.")}  # the block linears
    rows, q, packed = deep_compression(model, ds, masks, bits=4,
                                       tcfg=TrainConfig(steps=10, batch_size=8, lr=3e-3, warmup_steps=0,
                                                        eval_every=1000, checkpoint_every=1000),
                                       centroid_steps=10, centroid_lr=1e-3, eval_batches=4)
    assert [r["stage"] for r in rows] == ["dense", "pruned", "fine-tuned with masks", "k-means 4-bit",
                                          "centroids fine-tuned", "Huffman coded"]
    for k, v in before.items():  # the model passed in is untouched
        np.testing.assert_array_equal(model.params[k], v)
    dense = sum(model.params[n].nbytes for n in masks)
    assert rows[0]["bytes"] == dense and rows[0]["ratio"] == 1.0
    assert rows[1]["bytes"] == sum(csr_nbytes(csr_from_dense(model.params[n] * masks[n])) for n in masks)
    b = [r["bytes"] for r in rows]
    assert b[1] < b[0] and b[3] < b[2] and b[5] < b[4]  # each compressing stage saves bytes
    assert rows[5]["val_loss"] == rows[4]["val_loss"]  # Huffman coding is lossless
    for r in rows:
        assert abs(r["ratio"] - dense / r["bytes"]) < 1e-12
    deq = dequantize_params(q.params)
    for n, m in masks.items():
        assert not deq[n][~m].any()  # pruned weights stayed 0 through every stage
        np.testing.assert_array_equal(huffman_unpack(packed[n]), deq[n])
    print()
    for r in rows:
        print(f"{r['stage']:24s} val {r['val_loss']:.4f}  {r['bytes']:7d} B  x{r['ratio']:.2f}")
