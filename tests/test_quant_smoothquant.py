"""SmoothQuant and the input-channel rescaling under it: the scales against the
formula, the float model unchanged by the folding (float64, to rounding), the
balance alpha = 0.5 strikes, the activation maxima, and W8A8 error with
outlier channels, with and without smoothing."""
import numpy as np
import pytest

from minigpt import GPT, GPTConfig
from minigpt.errors import ConfigError
from minigpt.kernels.int_matmul_ref import w8a8_matmul_ref
from minigpt.quant import quantize_model
from minigpt.quant.rescale import activation_maxima, channel_stats, scale_input_channels
from minigpt.quant.smoothquant import smooth_model, smooth_params, smoothing_scales, w8a8_output_error
from minigpt.quant.weights import weight_arrays

CFG64 = GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=4, n_embd=32, dtype="float64")
CFG32 = GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=4, n_embd=64, dtype="float32")


def model_of(cfg, seed=0, outliers=0.0, gates=False):
    """O(1) random weights; outliers > 0 multiplies a few channels of every LayerNorm's gamma
    by it (the outlier channels trained LLMs show, in every token); gates adds head gates."""
    model = GPT(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    dt = np.dtype(cfg.dtype)
    for name, p in model.params.items():
        if p.ndim == 2:
            model.params[name] = rng.normal(0, 1 / np.sqrt(p.shape[0]), p.shape).astype(dt)
        elif ".ln_" in name:  # gamma and beta away from 1 and 0, so folding into them is tested
            model.params[name] = (p + rng.normal(0, 0.3, p.shape)).astype(dt)
            if outliers and name.endswith(".weight"):
                model.params[name][[3, 17, 29]] *= outliers
    if gates:
        for i in range(cfg.n_layer):
            model.params[f"h.{i}.attn.head_gate"] = rng.uniform(0.5, 1.5, cfg.n_head).astype(dt)
    return model


def batches(n=2, seed=1, cfg=CFG64):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, cfg.vocab_size, (3, cfg.block_size)) for _ in range(n)]


def test_smoothing_scales_are_the_formula():
    rng = np.random.default_rng(0)
    x_max = rng.uniform(0.1, 50, 6)
    w = rng.standard_normal((6, 9))
    for alpha in (0.0, 0.3, 0.5, 1.0):
        want = [x_max[j] ** alpha / np.abs(w[j]).max() ** (1 - alpha) for j in range(6)]
        np.testing.assert_allclose(smoothing_scales(x_max, w, alpha), want, rtol=1e-14)
    # a channel that never moves, or whose weight row is all zero, is left alone
    x_max[1] = 0.0
    w[4] = 0.0
    s = smoothing_scales(x_max, w, 0.5)
    assert s[1] == 1.0 and s[4] == 1.0 and np.all(np.isfinite(s))
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(ConfigError, match="alpha"):
            smoothing_scales(x_max, w, bad)


def test_alpha_half_balances_activation_and_weight_maxima():
    # after smoothing, max|X_j / s_j| = max|X_j|^(1-a) max|W_j|^(1-a) and max|s_j W_j| =
    # max|X_j|^a max|W_j|^a: at a = 0.5 both are sqrt(max|X_j| max|W_j|) (the paper's balance)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((100, 8)) * rng.uniform(0.1, 30, 8)
    w = rng.standard_normal((8, 5))
    x_max = np.abs(x).max(axis=0)
    s = smoothing_scales(x_max, w, 0.5)
    np.testing.assert_allclose(np.abs(x / s).max(axis=0), np.abs(w * s[:, None]).max(axis=1), rtol=1e-12)
    np.testing.assert_allclose(np.abs(x / s).max(axis=0), np.sqrt(x_max * np.abs(w).max(axis=1)), rtol=1e-12)
    np.testing.assert_allclose((x / s) @ (w * s[:, None]), x @ w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer", ["h.0.attn.c_attn", "h.1.mlp.c_fc", "h.1.attn.c_proj", "h.0.attn.c_proj"])
def test_folding_leaves_the_float_model_unchanged(layer):
    # float64: the rescaled model differs from the original only by rounding (one multiply
    # and one divide per weight), ~1e-15 relative; 1e-12 leaves room for the sums after
    model = model_of(CFG64, gates=True)
    rng = np.random.default_rng(2)
    K = model.params[layer + ".weight"].shape[0]
    s = rng.uniform(0.05, 20.0, K)
    scaled = GPT(CFG64, params=scale_input_channels(model.params, layer, s), backend="numpy")
    model.backend = "numpy"
    idx = batches()[0]
    np.testing.assert_allclose(scaled.forward(idx)[0], model.forward(idx)[0], rtol=1e-12, atol=1e-12)
    # and the layer really sees X / s, with its weight rows multiplied by s
    np.testing.assert_allclose(scaled.activations(idx)[layer], model.activations(idx)[layer] / s, rtol=1e-12,
                               atol=1e-13)
    np.testing.assert_allclose(scaled.params[layer + ".weight"], model.params[layer + ".weight"] * s[:, None],
                               rtol=1e-15)
    assert model.params[layer + ".weight"] is not scaled.params[layer + ".weight"]  # the input is not modified


def test_folding_refuses_what_it_cannot_fold():
    model = model_of(CFG64)
    with pytest.raises(ConfigError, match="GELU"):
        scale_input_channels(model.params, "h.0.mlp.c_proj", np.ones(4 * 32))
    with pytest.raises(ConfigError, match="positive"):
        scale_input_channels(model.params, "h.0.mlp.c_fc", -np.ones(32))
    with pytest.raises(ConfigError, match="32 positive"):
        scale_input_channels(model.params, "h.0.mlp.c_fc", np.ones(31))
    with pytest.raises(ConfigError, match="quantized already"):
        scale_input_channels(quantize_model(model_of(CFG32), "int8").params, "h.0.mlp.c_fc", np.ones(64))


def test_activation_maxima_and_means_are_over_every_token():
    model = model_of(CFG64)
    bs = batches(3)
    stats = channel_stats(model, bs)
    for layer in ("h.0.attn.c_attn", "h.1.mlp.c_proj"):
        xs = np.concatenate([model.activations(b)[layer].reshape(-1, stats[layer]["max"].size) for b in bs])
        np.testing.assert_array_equal(stats[layer]["max"], np.abs(xs).max(axis=0))
        np.testing.assert_allclose(stats[layer]["mean"], np.abs(xs).mean(axis=0), rtol=1e-12)
    maxima = activation_maxima(model, bs)
    assert set(maxima) == {f"h.{i}.{n}" for i in range(2) for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                                     "mlp.c_proj")}


def test_smooth_model_is_exact_and_smooths_only_layernorm_fed_layers():
    model = model_of(CFG64, outliers=30.0)
    model.backend = "numpy"
    smoothed, scales = smooth_model(model, batches(), alpha=0.5)
    assert set(scales) == {"h.0.attn.c_attn", "h.0.mlp.c_fc", "h.1.attn.c_attn", "h.1.mlp.c_fc"}
    idx = batches(seed=9)[0]
    np.testing.assert_allclose(smoothed.forward(idx)[0], model.forward(idx)[0], rtol=1e-12, atol=1e-12)
    before, after = activation_maxima(model, batches()), activation_maxima(smoothed, batches())
    for layer in scales:  # the outlier channels are flattened: the largest over the median shrinks
        ratio = lambda m: m.max() / np.median(m)  # noqa: E731
        assert ratio(after[layer]) < ratio(before[layer]) / 2, layer
    for layer in ("h.0.attn.c_proj", "h.1.mlp.c_proj"):  # untouched
        np.testing.assert_array_equal(smoothed.params[layer + ".weight"], model.params[layer + ".weight"])
    with pytest.raises(ConfigError, match="LayerNorm-fed"):
        smooth_params(model.params, before, 0.5, layers=["h.0.mlp.c_proj"])


def test_smoothing_lowers_w8a8_error_of_a_layer_with_outlier_channels():
    # per-token int8: one outlier channel sets every token's scale and the other channels keep a
    # few levels; smoothed, the activation range is shared with the weights
    rng = np.random.default_rng(3)
    K, N = 64, 48
    x = rng.standard_normal((256, K))
    x[:, [5, 40]] *= 60.0  # outlier channels, in every token
    w = rng.normal(0, 1 / np.sqrt(K), (K, N))
    exact = x @ w
    a = weight_arrays(w, "w8a8")
    plain = np.linalg.norm(w8a8_matmul_ref(x, a["w8a8"], a["scale"]) - exact) / np.linalg.norm(exact)
    assert w8a8_output_error(x, w) == pytest.approx(plain, rel=1e-12)
    s = smoothing_scales(np.abs(x).max(axis=0), w, 0.5)
    a = weight_arrays(w * s[:, None], "w8a8")
    smooth = np.linalg.norm(w8a8_matmul_ref(x / s, a["w8a8"], a["scale"]) - exact) / np.linalg.norm(exact)
    assert w8a8_output_error(x, w, 0.5) == pytest.approx(smooth, rel=1e-12)
    assert smooth < plain / 3, (smooth, plain)  # measured: 0.0042 vs 0.0164


def test_smoothquant_lowers_the_w8a8_models_error_with_outlier_channels():
    model = model_of(CFG32, outliers=40.0)
    cal, idx = batches(4, cfg=CFG32), batches(1, seed=7, cfg=CFG32)[0]
    want = model.forward(idx)[0]
    plain = quantize_model(model, "w8a8").forward(idx)[0]
    smoothed, _ = smooth_model(model, cal, alpha=0.5)
    smooth = quantize_model(smoothed, "w8a8").forward(idx)[0]
    err = lambda got: np.abs(got - want).max() / np.abs(want).max()  # noqa: E731
    assert err(smooth) < err(plain) / 2, (err(smooth), err(plain))  # measured: 0.11 vs 0.79
