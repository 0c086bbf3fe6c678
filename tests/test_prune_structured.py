"""Structured pruning: head and neuron importance are gate gradients (checked
against finite differences), and removing heads / neurons gives a smaller
model with the gated-to-zero model's logits that trains, samples, saves and
loads.

float64 throughout for the math: centered differences with h = 1e-5 are
accurate to ~1e-10 relative here, so 1e-6 is only missed by a wrong
derivative; logits of the removed and the gated model differ only by the
order of float64 sums (~1e-15 relative), checked at 1e-12.
"""
import numpy as np
import pytest

from minigpt import GPT, GPTConfig, load_checkpoint
from minigpt.gradcheck import relative_error
from minigpt.model import layer_shapes
from minigpt.prune import (
    PruneError,
    gate_heads,
    gate_neurons,
    head_importance,
    lowest,
    magnitude_masks,
    neuron_importance,
    remove_heads,
    remove_neurons,
)

CFG = GPTConfig(vocab_size=13, block_size=9, n_layer=2, n_head=4, n_embd=16, dtype="float64")  # head size 4
FD_TOL = 1e-6


def perturbed(seed=0, backend="numpy", cfg=CFG):
    model = GPT(cfg, seed=seed, backend=backend)
    rng = np.random.default_rng(seed + 1)
    for p in model.params.values():
        p += 0.2 * rng.standard_normal(p.shape)
    return model


def batches(n=2, B=2, T=7, seed=0, cfg=CFG):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))) for _ in range(n)]


def centered(loss, set_value, h=1e-5):
    set_value(1 + h)
    up = loss()
    set_value(1 - h)
    down = loss()
    set_value(1.0)
    return (up - down) / (2 * h)


def test_head_importance_is_the_gate_gradient_by_finite_differences():
    model = perturbed()
    data = batches()
    importance = head_importance(model, data)
    assert "h.0.attn.head_gate" not in model.params  # the model is left as it was
    gated = GPT(CFG, params=gate_heads(model.params, CFG, {}), backend="numpy")
    for i, (H, _) in enumerate(model.layer_shapes()):
        fd = np.zeros(H)
        for h in range(H):
            g = gated.params[f"h.{i}.attn.head_gate"]

            def set_value(v, g=g, h=h):
                g[h] = v

            fd[h] = np.mean([abs(centered(lambda: gated.loss(x, y), set_value)) for x, y in data])
        assert relative_error(importance[i], fd) < FD_TOL, (i, importance[i], fd)


def test_neuron_importance_is_the_gradient_of_a_row_scale():
    model = perturbed()
    data = batches()
    importance = neuron_importance(model, data)
    w2 = model.params["h.1.mlp.c_proj.weight"]
    original = w2.copy()
    for n in (0, 5, 63):
        def set_value(v, n=n):
            w2[n] = v * original[n]  # a gate m_n on neuron n = scaling its row of c_proj

        fd = np.mean([abs(centered(lambda: model.loss(x, y), set_value)) for x, y in data])
        assert relative_error(np.array([importance[1][n]]), np.array([fd])) < FD_TOL
    np.testing.assert_array_equal(w2, original)


def test_head_gate_gradient_equals_the_c_proj_row_identity():
    """dL/dg_h = sum over head h's rows of attn.c_proj of W * dL/dW: the same
    identity neuron importance uses, here checked against the gate itself."""
    model = perturbed()
    model.params.update(gate_heads(model.params, CFG, {}))
    x, y = batches(1)[0]
    model.forward(x, y)
    g = model.backward()
    D = CFG.head_size
    w, dw = model.params["h.0.attn.c_proj.weight"], g["h.0.attn.c_proj.weight"]
    by_rows = (w * dw).reshape(4, D, -1).sum(axis=(1, 2))
    np.testing.assert_allclose(by_rows, g["h.0.attn.head_gate"], rtol=1e-10, atol=1e-14)


def test_lowest_picks_global_or_per_layer():
    scores = [np.array([0.5, 0.1, 0.9, 0.3]), np.array([0.2, 0.05, 0.7, 0.8])]
    assert lowest(scores, 0.5) == {0: [1, 3], 1: [0, 1]}  # the 4 lowest of all 8
    assert lowest(scores, 0.25, scope="layer") == {0: [1], 1: [1]}
    assert lowest([np.ones(3), np.ones(3)], 0.5) == {0: [0, 1, 2]}  # ties: earlier layer, lower index
    with pytest.raises(PruneError):
        lowest(scores, 1.0)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_removing_heads_gives_the_gated_models_logits(backend):
    model = perturbed(backend=backend)
    heads = {0: [1, 3], 1: [0]}
    x, _ = batches(1)[0]
    gated = GPT(CFG, params=gate_heads(model.params, CFG, heads), backend=backend)
    small = GPT(CFG, params=remove_heads(model.params, CFG, heads), backend=backend)
    assert small.layer_shapes() == [(2, 64), (3, 64)]
    assert small.params["h.0.attn.c_attn.weight"].shape == (16, 3 * 2 * 4)
    np.testing.assert_allclose(small.forward(x)[0], gated.forward(x)[0], rtol=0, atol=1e-12)
    # the gates travel with their heads
    regated = remove_heads(gated.params, CFG, heads)
    assert regated["h.0.attn.head_gate"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_removing_neurons_gives_the_gated_models_logits(backend):
    model = perturbed(backend=backend)
    neurons = {0: list(range(0, 64, 3)), 1: [7]}
    x, _ = batches(1)[0]
    gated = GPT(CFG, params=gate_neurons(model.params, neurons), backend=backend)
    small = GPT(CFG, params=remove_neurons(model.params, CFG, neurons), backend=backend)
    assert small.layer_shapes() == [(4, 64 - 22), (4, 63)]
    np.testing.assert_allclose(small.forward(x)[0], gated.forward(x)[0], rtol=0, atol=1e-12)


def test_float32_removal_matches_to_float32_rounding():
    cfg = CFG.replace(dtype="float32")
    model = perturbed(cfg=cfg, backend="numba")
    heads, neurons = {0: [2]}, {1: list(range(32))}
    x, _ = batches(1, cfg=cfg)[0]
    gated = GPT(cfg, params=gate_neurons(gate_heads(model.params, cfg, heads), neurons), backend="numba")
    small = GPT(cfg, params=remove_neurons(remove_heads(model.params, cfg, heads), cfg, neurons), backend="numba")
    ref = gated.forward(x)[0]
    # a few float32 roundings of O(1) logits apart: 1e-5 of the largest logit
    np.testing.assert_allclose(small.forward(x)[0], ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_the_smaller_model_trains_samples_saves_and_loads(tmp_path):
    from test_prune import tiny_setup
    from minigpt.train import train

    model, ds, tcfg = tiny_setup(steps=20)
    cfg = model.config
    heads = lowest(head_importance(model, [ds.get_batch("train", 4, np.random.default_rng(0))]), 0.5, "layer")
    small = GPT(cfg, params=remove_heads(model.params, cfg, heads), tokenizer=model.tokenizer, backend="numpy")
    small.params = remove_neurons(small.params, cfg, {0: range(10), 1: range(20, 40)})
    assert sum(h for h, _ in small.layer_shapes()) == 2 and [f for _, f in small.layer_shapes()] == [54, 44]
    masks = magnitude_masks(small.params, 0.3)  # unstructured on top of structured
    result = train(small, ds, tcfg, out=tmp_path / "s.npz", progress=False, masks=masks)
    assert result.val_losses[-1][1] < result.val_losses[0][1] + 1.0 and np.isfinite(result.val_losses[-1][1])
    ckpt = load_checkpoint(tmp_path / "s.npz")
    assert ckpt.model.layer_shapes() == small.layer_shapes()
    assert all(np.array_equal(ckpt.masks[k], m) for k, m in masks.items())
    np.testing.assert_array_equal(ckpt.model.generate([1, 2], 12, temperature=0),
                                  small.generate([1, 2], 12, temperature=0))


def test_removal_refuses_what_cannot_be_done():
    model = perturbed()
    with pytest.raises(PruneError, match="all 4 heads of layer 1"):
        remove_heads(model.params, CFG, {1: [0, 1, 2, 3]})
    assert layer_shapes(remove_heads(model.params, CFG, {1: [0, 1, 2, 3]}, allow_empty=True), CFG)[1] == (0, 64)
    with pytest.raises(PruneError, match="all 64 neurons of layer 0"):
        remove_neurons(model.params, CFG, {0: range(64)})
    with pytest.raises(PruneError, match="cannot remove head 4"):
        remove_heads(model.params, CFG, {0: [4]})
    # masks of the same weights shrink the same way
    masks = magnitude_masks(model.params, 0.5)
    small_masks = remove_heads(masks, CFG, {0: [1]})
    small = remove_heads(model.params, CFG, {0: [1]})
    assert all(small_masks[k].shape == small[k].shape for k in small_masks)
    from minigpt.quant import quantize_model

    q = quantize_model(GPT(CFG.replace(dtype="float32"), seed=0), "int8")
    with pytest.raises(PruneError, match="float weights"):
        neuron_importance(q, batches(1))
