"""AWQ: the scales against the formula, alpha = 0 is RTN bit for bit, the folded
float model is unchanged (float64), the search picks the grid's least error
(never above RTN), and it helps a layer with salient input channels."""
import numpy as np
import pytest

from minigpt import GPT, GPTConfig
from minigpt.errors import ConfigError
from minigpt.quant import quantize_params
from minigpt.quant.awq import ALPHAS, awq_model, awq_params, awq_scales, scaled_error, search_alpha
from minigpt.quant.rescale import channel_stats

CFG64 = GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=4, n_embd=32, dtype="float64")
CFG32 = GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=4, n_embd=32, dtype="float32")


def model_of(cfg, seed=0):
    model = GPT(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    for name, p in model.params.items():
        if p.ndim == 2:
            model.params[name] = rng.normal(0, 1 / np.sqrt(p.shape[0]), p.shape).astype(cfg.dtype)
        elif ".ln_" in name:  # uneven channels, so the mean |X_j| differ
            model.params[name] = (p * rng.uniform(0.2, 3.0, p.shape)).astype(cfg.dtype)
    return model


def batches(n=2, seed=1, cfg=CFG32):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, cfg.vocab_size, (3, cfg.block_size)) for _ in range(n)]


def test_scales_are_the_formula():
    m = np.array([0.5, 2.0, 8.0, 0.0])
    for alpha in (0.0, 0.4, 1.0):
        raw = np.array([0.5, 2.0, 8.0, 0.5]) ** alpha  # a channel with mean 0 takes the smallest other
        np.testing.assert_allclose(awq_scales(m, alpha), raw / np.sqrt(raw.max() * raw.min()), rtol=1e-14)
    np.testing.assert_array_equal(awq_scales(m, 0.0), np.ones(4))
    np.testing.assert_array_equal(awq_scales(np.zeros(3), 0.7), np.ones(3))


@pytest.mark.parametrize("kind, bits, group", [("int4", 4, 16), ("int4", 3, None), ("int8", 8, None)])
def test_alpha_zero_is_rtn_bit_for_bit(kind, bits, group):
    model = model_of(CFG32)
    params, report = awq_params(model, batches(), kind, bits, group, alphas=[0.0])
    got = quantize_params(params, kind, group=group, bits=bits)
    want = quantize_params(model.params, kind, group=group, bits=bits)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    for r in report.values():
        assert r["alpha"] == 0.0 and r["awq"] == r["rtn"]


def test_folded_float_model_is_unchanged():
    # float64: only rounding separates the two (~1e-15 relative); the folds into ln_1, ln_2 and
    # c_attn's value columns are exact
    model = model_of(CFG64)
    model.backend = "numpy"
    params, report = awq_params(model, batches(cfg=CFG64), "int4", 3, 16)
    assert set(report) == {f"h.{i}.{n}" for i in range(2) for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc")}
    assert any(r["alpha"] > 0 for r in report.values())  # something was scaled
    folded = GPT(CFG64, params=params, backend="numpy")
    idx = batches(seed=5, cfg=CFG64)[0]
    np.testing.assert_allclose(folded.forward(idx)[0], model.forward(idx)[0], rtol=1e-12, atol=1e-12)


def test_search_picks_the_least_error_never_above_rtn():
    model = model_of(CFG32)
    bs = batches(3)
    params, report = awq_params(model, bs, "int4", 4, 16)
    x = np.concatenate([model.activations(b)["h.1.mlp.c_fc"].reshape(-1, 32) for b in bs]).astype(np.float64)
    w = model.params["h.1.mlp.c_fc.weight"]
    r = report["h.1.mlp.c_fc"]
    assert len(r["errors"]) == len(ALPHAS)
    for a, e in zip(ALPHAS, r["errors"]):  # each candidate's error is the formula's
        assert e == pytest.approx(scaled_error(x, w, awq_scales(np.abs(x).mean(axis=0), a), "int4", 4, 16), rel=1e-12)
    assert r["awq"] == min(r["errors"]) and r["alpha"] == ALPHAS[int(np.argmin(r["errors"]))]
    for layer, rep in report.items():
        assert rep["awq"] <= rep["rtn"] == rep["errors"][0], layer  # alpha = 0 is in the grid


def test_salient_channels_are_protected():
    # a few input channels with large mean |x| (the "salient" ones the paper finds): scaling their
    # weight rows up before rounding cuts the output error well below RTN's
    rng = np.random.default_rng(4)
    K, N = 64, 32
    x = rng.standard_normal((512, K))
    x[:, [3, 20, 50]] *= 25.0
    w = rng.normal(0, 1 / np.sqrt(K), (K, N)).astype(np.float32)
    alpha, s, errors = search_alpha(x, w, "int4", 3, 32)
    assert alpha > 0 and errors.min() < 0.5 * errors[0], (alpha, errors.min(), errors[0])  # measured: alpha 0.3, 0.25x


def test_awq_model_quantizes_every_layer_and_refuses_bad_requests():
    model = model_of(CFG32)
    bs = batches()
    q, report = awq_model(model, bs, "int4", 4, 16, keep_float=("h.0.attn.c_attn",))
    assert "h.0.attn.c_attn.weight" in q.params and "h.0.attn.c_attn" not in report
    assert "h.1.mlp.c_proj.weight.int4" in q.params  # not scaled (the GELU), still quantized: RTN
    assert q.forward(bs[0])[0].shape == (3, 16, 40)
    with pytest.raises(ConfigError, match="not 'w8a8'"):
        awq_params(model, bs, "w8a8")
    with pytest.raises(ConfigError, match="not h.0.mlp.c_proj"):
        awq_params(model, bs, "int4", layers=["h.0.mlp.c_proj"])
    with pytest.raises(ConfigError, match="alpha grid"):
        awq_params(model, bs, "int4", alphas=[0.0, 1.5])
    with pytest.raises(ConfigError, match="calibration batch"):
        awq_params(model, [], "int4")
    with pytest.raises(ConfigError, match="quantized already"):
        awq_params(q, bs, "int4")


def test_channel_means_feed_the_scales():
    # AWQ's statistic is the mean |X_j| over every calibration token (minigpt.quant.rescale)
    model = model_of(CFG32)
    bs = batches(2)
    mean = channel_stats(model, bs, ["h.0.mlp.c_fc"])["h.0.mlp.c_fc"]["mean"]
    x = np.concatenate([model.activations(b)["h.0.mlp.c_fc"].reshape(-1, 32) for b in bs])
    np.testing.assert_allclose(mean, np.abs(x.astype(np.float64)).mean(axis=0), rtol=1e-12)
