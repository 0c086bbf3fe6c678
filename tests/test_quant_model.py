"""Quantized models: every format runs the model, matches the dequantize-then-float
model, generates, saves and loads, and is validated on load."""
import numpy as np
import pytest

from minigpt import GPT, CheckpointError, GPTConfig, load_checkpoint
from minigpt.checkpoint import save_checkpoint
from minigpt.errors import ConfigError
from minigpt.quant import (
    bits_per_weight,
    dequantize_params,
    is_quantized,
    quantize_model,
    quantize_params,
    quantized_layers,
    weight_bytes,
)

import trained_weights

# C = 64 and an MLP 256 wide: every layer's K is a multiple of 32 (the block formats' block)
CFG = GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=4, n_embd=64, dtype="float32")
# (kind, bits, group)
SCHEMES = [("int8", 8, None), ("int8", 6, None), ("int4", 4, 32), ("int4", 4, None), ("int4", 3, 16),
           ("int4", 2, 32), ("w8a8", 8, None), ("q8_0", 8, None), ("q4_0", 4, None)]


def trained_like(seed=0):
    return trained_weights.trained_like(CFG, seed)


def batch(seed=1, B=3, T=16):
    rng = np.random.default_rng(seed)
    return rng.integers(0, CFG.vocab_size, (B, T))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("kind, bits, group", SCHEMES)
def test_quantized_logits_equal_the_dequantized_float_model(kind, bits, group, backend):
    model = trained_like()
    q = quantize_model(model, kind, group=group, bits=bits)
    q.backend = backend
    assert set(quantized_layers(q.params)) == {f"h.{i}.{n}" for i in range(2)
                                               for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    deq = GPT(CFG, params=dequantize_params(q.params), backend="numpy")
    idx = batch()
    got, _ = q.forward(idx)
    want, _ = deq.forward(idx)
    if kind == "w8a8":
        # the activations are rounded to int8 too: close to the float model at int8 precision
        # (the two backends differ by more than float rounding: a LayerNorm output that lands
        # on the other side of a rounding boundary moves a code by one step)
        assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    else:
        # the same weights, summed in another order: float32 rounding of a depth-2 model
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    out = q.generate(idx[0, :3], 5, temperature=0.0)
    assert out.shape == (8,)


@pytest.mark.parametrize("kind, bits, group", SCHEMES)
def test_quantized_checkpoint_saves_loads_and_reports_bytes(kind, bits, group, tmp_path):
    model = trained_like()
    q = quantize_model(model, kind, group=group, bits=bits)
    q.save(tmp_path / "q.npz")
    back = load_checkpoint(tmp_path / "q.npz").model
    assert set(back.params) == set(q.params)
    for k in q.params:
        assert back.params[k].dtype == q.params[k].dtype
        np.testing.assert_array_equal(back.params[k], q.params[k])
    idx = batch()
    np.testing.assert_array_equal(back.forward(idx)[0], q.forward(idx)[0])
    assert back.num_params() == model.num_params()  # an integer weight counts as the weights it stands for
    assert weight_bytes(q.params) < weight_bytes(model.params)
    expected_bits = {"int8": 8 + 32 / 64, "w8a8": 8 + 32 / 64, "q8_0": 8.5, "q4_0": 4.5}
    if kind in expected_bits:  # per channel: one float32 scale per K (64 or 256) weights
        assert bits_per_weight(q.params) <= expected_bits[kind] + 1e-12
        assert bits_per_weight(q.params) > {"int8": 8, "w8a8": 8}.get(kind, expected_bits[kind] - 1e-12)
    else:
        # 4 bits a weight (whatever the bits: a nibble each) + a float32 scale per group of g
        # (per channel: g = K, 64 or 256) + 8 bytes of group size per layer
        weights = sum(p.size for n, p in model.params.items() if n.startswith("h.") and p.ndim == 2)
        scales = sum(p.size for n, p in q.params.items() if n.endswith(".scales"))
        assert bits_per_weight(q.params) == (4 * weights + 32 * scales + 8 * 8 * 8) / weights
        assert scales == weights // group if group else scales == 2 * (192 + 64 + 256 + 64)


def test_chosen_layers_stay_float_and_quantizing_twice_is_refused():
    model = trained_like()
    q = quantize_params(model.params, "int4", keep_float=("h.0.*", "*.mlp.c_proj"))
    assert set(quantized_layers(q)) == {"h.1.attn.c_attn", "h.1.attn.c_proj", "h.1.mlp.c_fc"}
    assert q["wte.weight"] is model.params["wte.weight"]  # embeddings (and the tied head) stay float
    assert is_quantized(q) and not is_quantized(model.params)
    with pytest.raises(ConfigError, match="quantized already"):
        quantize_params(q, "int8")


@pytest.mark.parametrize("kind, kwargs, match", [
    ("int4", dict(group=24), "group size 24 does not divide the 64 inputs"),
    ("int4", dict(group=7), "positive even integer"),
    ("int4", dict(bits=5), "int4 holds 2 / 3 / 4 bits, not 5"),
    ("int8", dict(bits=4), "int8 holds 5 / 6 / 7 / 8 bits, not 4"),
    ("float16", dict(), "kind must be one of"),
])
def test_bad_schemes_are_named(kind, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        quantize_params(trained_like().params, kind, **kwargs)


def test_block_formats_need_blocks_of_32():
    cfg = CFG.replace(n_embd=48, n_head=4)  # K = 48 is not a multiple of 32
    with pytest.raises(ConfigError, match="h.0.attn.c_attn.weight: q4_0 needs the inputs in blocks of 32"):
        quantize_params(GPT(cfg).params, "q4_0")


@pytest.mark.parametrize("key, bad, match", [
    ("h.0.mlp.c_fc.weight.w8a8", lambda a: a[:, :-1], "needs int8"),
    ("h.0.mlp.c_fc.weight.q4_0", lambda a: a[:, :-18], "needs uint8"),
    ("h.1.attn.c_proj.weight.q8_0", lambda a: a.astype(np.int8), "needs uint8"),
])
def test_new_formats_are_checked_on_load(key, bad, match, tmp_path):
    kind = key.rsplit(".", 1)[1]
    q = quantize_model(trained_like(), kind)
    q.params[key] = bad(q.params[key])
    save_checkpoint(tmp_path / "bad.npz", q)
    with pytest.raises(CheckpointError, match=f"quantized parameter {key} is .* {match}"):
        load_checkpoint(tmp_path / "bad.npz")


@pytest.mark.parametrize("M, K, N", [(1, 64, 256), (37, 256, 64), (5, 3, 7)])
def test_w8a8_op_numba_equals_reference_bit_for_bit(M, K, N):
    from minigpt.kernels.int_matmul_ref import quantize_per_channel
    from minigpt.ops import op_table

    rng = np.random.default_rng(M)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w_q, w_s = quantize_per_channel(rng.standard_normal((K, N)).astype(np.float32))
    ref = op_table("numpy")["w8a8_matmul"][0](x, w_q, w_s)
    # the same codes (one quantizer), exact int32 sums, the rescale in the same order
    np.testing.assert_array_equal(op_table("numba")["w8a8_matmul"][0](x, w_q, w_s), ref)
    # and by the definition: per-token int8 activations times int8 weights
    a = np.abs(x).max(axis=1, keepdims=True) / 127
    w_hat = (w_q.astype(np.float64) * w_s[:, None]).T
    np.testing.assert_allclose(ref, (np.rint(x / a) * a) @ w_hat, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_float_parts_of_a_w8a8_model_get_gradients():
    q = quantize_model(trained_like(), "w8a8")
    idx = batch()
    q.forward(idx, np.roll(idx, -1, axis=1))
    grads = q.backward()
    assert set(grads) == {k for k in q.params if not k.endswith((".w8a8", ".scale"))}
    assert all(np.all(np.isfinite(g)) for g in grads.values())


@pytest.mark.parametrize("vnni", [True, False])
@pytest.mark.parametrize("M, K, N", [(1, 1000, 5), (7, 64, 33), (3, 777, 4)])
def test_int32_accumulation_equals_numpys_int64_product(M, K, N, vnni, monkeypatch):
    from minigpt.kernels import int_matmul
    from minigpt.kernels.vnni import HAS_VNNI

    if vnni and not HAS_VNNI:
        pytest.skip("this CPU has no AVX-512 VNNI")
    monkeypatch.setattr(int_matmul, "USE_VNNI", vnni)
    rng = np.random.default_rng(K)
    a = rng.integers(-128, 128, (M, K)).astype(np.int8)
    w = rng.integers(-128, 128, (N, K)).astype(np.int8)
    a[0], w[0] = -128, -128  # the largest product, K times: 128 * 128 * 1000 < 2^31
    exact = a.astype(np.int64) @ w.astype(np.int64).T  # no overflow possible in int64
    got = int_matmul.int8_matmul_int32(a, w)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got.astype(np.int64), exact)
