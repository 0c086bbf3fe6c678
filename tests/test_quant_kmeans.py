"""K-means weight quantization (minigpt.quant.kmeans): Lloyd's fixed point, at most
2^b values, the centroid gradient against finite differences, and a model that
runs, saves and loads its k-means weights."""
import numpy as np
import pytest

from minigpt import GPT, CheckpointError, GPTConfig, load_checkpoint
from minigpt.checkpoint import save_checkpoint
from minigpt.errors import ConfigError
from minigpt.quant import dequantize_params, quantize_tensor, quantized_layers
from minigpt.quant.kmeans import (
    centroid_gradients,
    finetune_centroids,
    kmeans_codebook,
    kmeans_dequantize,
    kmeans_model,
    kmeans_nbytes,
    kmeans_quantize,
)

import trained_weights

CFG = GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=4, n_embd=64, dtype="float32")


def trained_like_tensor(shape=(256, 256), seed=0):
    """Heavy-tailed like a trained weight (Student t, 4 degrees of freedom), float64."""
    return np.random.default_rng(seed).standard_t(4, size=shape) * 0.02


def trained_like(cfg=CFG, seed=0):
    return trained_weights.trained_like(cfg, seed)


def batch(seed=1, B=3, T=16, V=40):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 6, 8])
def test_kmeans_is_a_fixed_point_of_lloyds_update(bits):
    w = trained_like_tensor((64, 96), seed=bits)
    c, idx, iters = kmeans_codebook(w, bits)
    assert iters < 300  # converged: the assignments stopped changing
    # one Lloyd step by brute force, independent of the library's sorted search
    nearest = np.argmin(np.abs(w[..., None] - c), axis=-1)  # (K, N)
    np.testing.assert_array_equal(nearest, idx)
    for j in range(len(c)):
        members = w[idx == j]
        if members.size:  # float64 means of the same numbers, summed in another order
            assert abs(members.mean() - c[j]) <= 1e-12 * max(1.0, abs(c[j]))


@pytest.mark.parametrize("bits", range(1, 9))
def test_at_most_two_to_the_bits_distinct_values(bits):
    w = trained_like_tensor((32, 48), seed=10 + bits).astype(np.float32)
    q = kmeans_quantize(w, bits)
    assert q["kmeans_idx"].dtype == np.uint8 and q["kmeans_idx"].shape == w.shape
    assert q["codebook"].shape == (2 ** bits,) and q["codebook"].dtype == np.float32
    assert len(np.unique(kmeans_dequantize(q))) <= 2 ** bits
    assert int(q["kmeans_idx"].max()) < 2 ** bits


def test_few_distinct_values_and_a_constant_tensor_are_exact():
    w = np.array([[-1.0, 0.5, 2.0], [0.5, 2.0, -1.0]])  # 3 values, 8 centroids: empty clusters
    np.testing.assert_array_equal(kmeans_dequantize(kmeans_quantize(w, 3)), w)
    const = np.full((4, 5), 0.25)
    np.testing.assert_array_equal(kmeans_dequantize(kmeans_quantize(const, 2)), const)


@pytest.mark.parametrize("bits", [0, 9, 2.0, True])
def test_bad_bits_are_named(bits):
    with pytest.raises(ConfigError, match="bits must be an integer from 1 to 8"):
        kmeans_quantize(np.ones((2, 2)), bits)


def test_centroid_gradient_is_the_sum_of_member_gradients():
    # float64 model: central differences of the loss w.r.t. one centroid have error
    # O(h^2) + O(eps/h), about 1e-9 relative at h = 1e-5
    cfg = GPTConfig(vocab_size=17, block_size=8, n_layer=1, n_head=2, n_embd=16, dtype="float64")
    q = kmeans_model(trained_like(cfg, seed=3), bits=2)
    x, y = batch(seed=4, B=2, T=8, V=17)
    name = "h.0.mlp.c_fc.weight"
    idx, book = q.params[name + ".kmeans_idx"], q.params[name + ".codebook"]

    def loss_with(codebook):
        p = dequantize_params({**q.params, name + ".codebook": codebook})
        return GPT(cfg, params=p, backend="numpy").forward(x, y)[1]

    f = GPT(cfg, params=dequantize_params(q.params), backend="numpy")
    f.forward(x, y)
    dW = f.backward()[name]  # (K, N): dL/dW_hat from the hand-written backward
    g = centroid_gradients(idx, dW, len(book))
    for j in range(len(book)):
        np.testing.assert_allclose(g[j], dW[idx == j].sum(), rtol=1e-12)
        h = 1e-5
        up, down = book.copy(), book.copy()
        up[j] += h
        down[j] -= h
        fd = (loss_with(up) - loss_with(down)) / (2 * h)
        assert abs(fd - g[j]) <= 1e-6 * max(abs(fd), 1e-8), (j, fd, g[j])


def test_finetuning_the_centroids_lowers_the_loss_and_keeps_the_assignments():
    q = kmeans_model(trained_like(), bits=2)
    batches = [batch(seed=s) for s in range(2)]
    before = np.mean([q.loss(x, y) for x, y in batches])
    tuned, losses = finetune_centroids(q, batches, steps=20, lr=3e-3)
    after = np.mean([tuned.loss(x, y) for x, y in batches])
    assert after < before and len(losses) == 20
    for k, a in q.params.items():
        if not k.endswith(".codebook"):
            assert tuned.params[k] is a  # indices, embeddings, LayerNorms, biases: untouched


def test_kmeans_model_runs_saves_loads_and_evaluates_the_same(tmp_path):
    model = trained_like()
    q = kmeans_model(model, bits=4)
    assert set(quantized_layers(q.params).values()) == {"kmeans"} and len(quantized_layers(q.params)) == 8
    x, y = batch()
    deq = GPT(CFG, params=dequantize_params(q.params), backend="numpy")
    # the same weights through the same float32 product
    np.testing.assert_allclose(q.forward(x)[0], deq.forward(x)[0], rtol=1e-5, atol=1e-5)
    q.save(tmp_path / "k.npz")
    back = load_checkpoint(tmp_path / "k.npz").model
    for k in q.params:
        assert back.params[k].dtype == q.params[k].dtype
        np.testing.assert_array_equal(back.params[k], q.params[k])
    assert back.loss(x, y) == q.loss(x, y)
    assert back.num_params() == model.num_params()
    assert abs(q.loss(x, y) - model.loss(x, y)) < 0.1  # 16 shared values a tensor: close to the float model


@pytest.mark.parametrize("edit, match", [
    (lambda p: p.__setitem__("h.0.mlp.c_fc.weight.codebook", p["h.0.mlp.c_fc.weight.codebook"][:4]),
     "kmeans_idx holds index 1[0-9], but the codebook has 4 values"),
    (lambda p: p.pop("h.1.attn.c_proj.weight.codebook"), "h.1.attn.c_proj.weight.codebook must be a 1-D array"),
    (lambda p: p.__setitem__("h.0.attn.c_attn.weight.kmeans_idx",
                             p["h.0.attn.c_attn.weight.kmeans_idx"].astype(np.int16)), "needs uint8"),
])
def test_bad_kmeans_arrays_are_named_on_load(edit, match, tmp_path):
    q = kmeans_model(trained_like(), bits=4)
    edit(q.params)
    save_checkpoint(tmp_path / "bad.npz", q)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path / "bad.npz")


def test_bytes_and_error_against_linear_quantization():
    """Report (run with -s): at the same bits, k-means against the existing linear quantizer."""
    w = trained_like_tensor((256, 256)).astype(np.float32)
    print(f"\n{'bits':>4} {'k-means MSE':>12} {'linear/tensor':>14} {'linear/channel':>15} "
          f"{'k-means B':>10} {'lin/tensor B':>13} {'lin/channel B':>14}  (float32: {w.nbytes} B)")
    for bits in (2, 3, 4):
        q = kmeans_quantize(w, bits)
        err_k = float(np.mean((kmeans_dequantize(q) - w) ** 2))
        t = quantize_tensor(w, bits, symmetric=False)  # one (scale, zero point) for the tensor
        c = quantize_tensor(w, bits, symmetric=True, axis=1)  # one scale per output channel
        err_t = float(np.mean((t.dequantize() - w) ** 2))
        err_c = float(np.mean((c.dequantize() - w) ** 2))
        packed = w.size * bits // 8
        bytes_t, bytes_c = packed + 8, packed + c.scale.nbytes
        print(f"{bits:>4} {err_k:12.3e} {err_t:14.3e} {err_c:15.3e} {kmeans_nbytes(q):10d} {bytes_t:13d} {bytes_c:14d}")
        # Lloyd's steps never raise the squared error of the linear grid they start from,
        # which is the per-tensor linear quantizer's grid (up to its zero point's rounding)
        assert err_k < err_t
        assert kmeans_nbytes(q) == packed + 4 * 2 ** bits


def test_a_pruned_weight_keeps_its_zeros_through_kmeans_and_finetuning():
    model = trained_like()
    rng = np.random.default_rng(5)
    masks = {n: rng.random(p.shape) < 0.4 for n, p in model.params.items() if n.startswith("h.") and p.ndim == 2}
    for n, m in masks.items():
        model.params[n] = model.params[n] * m
    q = kmeans_model(model, bits=3, masks=masks)
    for n, m in masks.items():
        idx, book = q.params[n + ".kmeans_idx"], q.params[n + ".codebook"]
        assert book[0] == 0.0 and not idx[~m].any() and idx[m].min() >= 1  # index 0 is the pruned weights'
        w = model.params[n].astype(np.float64)
        for j in range(1, 8):  # the other 7 centroids: a fixed point of Lloyd's update on the alive weights
            if (idx == j).any():
                assert abs(w[idx == j].mean() - book[j]) <= 1e-6 * abs(book[j])  # float32 codebook
    tuned, _ = finetune_centroids(q, [batch()], steps=5, lr=1e-2, keep_zero=True)
    deq = dequantize_params(tuned.params)
    for n, m in masks.items():
        assert not deq[n][~m].any() and tuned.params[n + ".codebook"][0] == 0.0
