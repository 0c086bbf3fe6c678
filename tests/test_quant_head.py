"""The opt-in int8 tied embedding / head (quantize_params(..., head="int8"), quantize --head int8):
its rows dequantize exactly, the model's logits equal the dequantize-then-float model's, it saves,
loads and is validated, and the steps that need a float wte refuse it in one line."""
import numpy as np
import pytest

from minigpt import GPT, CheckpointError, GPTConfig, load_checkpoint
from minigpt.checkpoint import save_checkpoint
from minigpt.cli import main
from minigpt.compose import ComposeError, check_prunable, lineage, stored_as, why_not_resumable
from minigpt.errors import ConfigError
from minigpt.layers.embedding import embedding_forward
from minigpt.layers.quantized_embedding import head_format, quantized_embedding_forward
from minigpt.model import KVCache
from minigpt.quant import bits_per_weight, dequantize_params, is_quantized, quantize_model, quantize_params
from minigpt.quant import quantized_layers, weight_bytes
from minigpt.quant.cli import scheme_of

import trained_weights

import char_checkpoint

CFG = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=64, dtype="float32")
LINEARS = {f"h.{i}.{n}" for i in range(2) for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}


def trained_like(seed=0):
    return trained_weights.trained_like(CFG, seed)


def batch(seed=1, B=3, T=16):
    return np.random.default_rng(seed).integers(0, CFG.vocab_size, (B, T))


def test_the_head_is_int8_with_one_scale_a_row_and_its_rows_dequantize_exactly():
    model = trained_like()
    wte = model.params["wte.weight"]
    p = quantize_params(model.params, "int4", head="int8")
    assert "wte.weight" not in p and head_format(p) == "int8" and set(quantized_layers(p)) == LINEARS
    q, s = p["wte.weight.int8"], p["wte.weight.scale"]
    assert q.dtype == np.int8 and q.shape == wte.shape and s.dtype == wte.dtype and s.shape == (CFG.vocab_size,)
    # the quantizer's symmetric per-channel formulas, channel = row of wte (in float32, as it computes)
    np.testing.assert_array_equal(s, np.abs(wte).max(axis=1) / np.float32(127))
    np.testing.assert_array_equal(q, np.clip(np.rint(wte / s[:, None]), -127, 127).astype(np.int8))
    assert (np.abs(q).max(axis=1) == 127).all()  # each row's largest weight lands on the grid's end
    err = np.abs(q * s[:, None] - wte)
    assert (err <= s[:, None] / 2 * (1 + 1e-6)).all()  # round to nearest: within half a step (+ float rounding)
    # the lookup converts only the looked-up rows, exactly as dequantizing all of wte would
    idx = batch(T=10)  # positions 3..12 of 16
    wpe = model.params["wpe.weight"]
    got, _ = quantized_embedding_forward(idx, q, s, wpe, 3)
    want, _ = embedding_forward(idx, dequantize_params(p)["wte.weight"], wpe, 3)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(dequantize_params(p)["wte.weight"], q.astype(np.float32) * s[:, None])


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("kind", ["int4", "int8", "float"])
def test_logits_equal_the_dequantized_float_model(kind, backend):
    model = trained_like()
    keep = ("h.*",) if kind == "float" else ()  # "float": only the head is integer
    q = quantize_model(model, "int8" if kind == "float" else kind, keep_float=keep, head="int8")
    q.backend = backend
    deq = GPT(CFG, params=dequantize_params(q.params), backend="numpy")
    assert "wte.weight" in deq.params and not is_quantized(deq.params)
    idx = batch()
    got, loss = q.forward(idx, idx)
    want, want_loss = deq.forward(idx, idx)
    # the same weights: the numba head sums its 64 products in float32 in another order than BLAS,
    # so the logits differ by float32 rounding of a depth-2 model
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert loss == pytest.approx(want_loss, rel=1e-5)
    # decoding: the prompt with last_only, then one row at a time through the KV cache
    cache, ref = KVCache(CFG, 3), KVCache(CFG, 3)
    for part in (idx[:, :10], idx[:, 10:11], idx[:, 11:12]):
        got, _ = q.forward(part, kv_cache=cache, last_only=True)
        want, _ = deq.forward(part, kv_cache=ref, last_only=True)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert np.array_equal(q.generate(idx[0, :4], 6, temperature=0.0), deq.generate(idx[0, :4], 6, temperature=0.0))


def test_backward_freezes_wte_and_passes_the_rest_as_the_float_model():
    q = quantize_model(trained_like(), "int4", head="int8")
    deq = GPT(CFG, params=dequantize_params(q.params), backend="numpy")
    q.backend = "numpy"
    idx = batch()
    q.forward(idx, idx)
    deq.forward(idx, idx)
    got, want = q.backward(), deq.backward()
    assert "wte.weight" not in got and "wte.weight" in want  # integer weights get no gradient
    assert set(got) == {k for k in want if k in q.params} and "wpe.weight" in got
    for k in got:  # the same function of the float parameters: float32 rounding only
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4 * np.abs(want[k]).max())


def test_bytes_and_bits_per_weight_count_the_head():
    model = trained_like()
    plain, headed = quantize_params(model.params, "int4"), quantize_params(model.params, "int4", head="int8")
    V, C = CFG.vocab_size, CFG.n_embd
    assert weight_bytes(plain) - weight_bytes(headed) == 4 * V * C - (V * C + 4 * V)  # float32 -> int8 + scales
    lin = sum(a.nbytes for k, a in plain.items() if k.startswith("h.") and ".weight." in k)
    weights = sum(model.params[f"{layer}.weight"].size for layer in LINEARS)
    assert bits_per_weight(headed) == pytest.approx(8 * (lin + V * C + 4 * V) / (weights + V * C))
    assert GPT(CFG, params=headed).num_params() == model.num_params()  # the int8 wte counts as V x C weights


def test_save_load_round_trip(tmp_path):
    q = quantize_model(trained_like(), "int4", head="int8")
    q.save(tmp_path / "q.npz")
    back = load_checkpoint(tmp_path / "q.npz").model
    assert list(back.params) == list(q.params)
    for k, a in q.params.items():
        assert back.params[k].dtype == a.dtype and np.array_equal(back.params[k], a), k
    idx = batch()
    np.testing.assert_array_equal(back.forward(idx)[0], q.forward(idx)[0])


@pytest.mark.parametrize("change, match", [
    (lambda p: p.update({"wte.weight.int8": p["wte.weight.int8"][:-1]}),
     r"quantized parameter wte.weight.int8 is int8 \(49, 64\), but its layer needs int8 \(50, 64\)"),
    (lambda p: p.update({"wte.weight.int8": p["wte.weight.int8"].astype(np.int16)}), "wte.weight.int8 is int16"),
    (lambda p: p.update({"wte.weight.scale": p["wte.weight.scale"][:10]}), r"wte.weight.scale is float32 \(10,\)"),
    (lambda p: p.update({"wte.weight.scale": p["wte.weight.scale"].astype(np.float64)}),
     "wte.weight.scale is float64"),
    (lambda p: p.pop("wte.weight.scale"), "wte.weight.int8 has no wte.weight.scale"),
    (lambda p: p.pop("wte.weight.int8"), r"missing parameters \['wte.weight'\]"),
    (lambda p: p.update({"wte.weight": np.zeros((50, 64), np.float32)}), "unexpected parameters"),
])
def test_a_damaged_head_is_named_on_load(change, match, tmp_path):
    q = quantize_model(trained_like(), "int8", head="int8")
    change(q.params)
    save_checkpoint(tmp_path / "bad.npz", q)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path / "bad.npz")


def test_library_refusals():
    model = trained_like()
    with pytest.raises(ConfigError, match=r"head must be None \(float\) or one of \['int8'\], got 'int4'"):
        quantize_params(model.params, "int4", head="int4")
    p = quantize_params(model.params, "int8", keep_float=("h.*",), head="int8")  # only the head is integer
    assert is_quantized(p) and stored_as(p) == "int8 head"
    with pytest.raises(ConfigError, match="quantized already"):
        quantize_params(p, "int4")
    p = quantize_params(model.params, "int4", head="int8")
    assert stored_as(p) == "int4+int8 head"
    with pytest.raises(ComposeError, match="int4\\+int8 head weights .* pruning needs float weights"):
        check_prunable("q.npz", p, {})
    assert "quantize it without --head" in why_not_resumable("q.npz", p)
    with pytest.raises(ConfigError, match="tied embedding / head is int8"):
        scheme_of(p)


@pytest.fixture
def ckpt(tmp_path):
    """A float checkpoint of a character model (67-ish symbols), its corpus beside it."""
    return char_checkpoint.write_char_checkpoint(tmp_path)


def _one_line_error(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minigpt: error: ") and "\n" not in err and "Traceback" not in err, err
    for f in fragments:
        assert f in err, (f, err)


def test_cli_quantize_head_then_sample_eval_and_refusals(ckpt, tmp_path, capsys):
    q = tmp_path / "q.npz"
    assert main(["quantize", str(ckpt), "--bits", "4", "--head", "int8", "--out", str(q),
                 "--max-batches", "1", "--tokens", "3"]) == 0
    out = capsys.readouterr()
    assert "int4 weights, groups of 32 + int8 head" in out.out and "linear layers and the tied embedding" in out.err
    assert "(block linears and the int8 head, scales included)" in out.out
    loaded = load_checkpoint(q)
    assert head_format(loaded.model.params) == "int8" and loaded.meta["quantization"]["head"] == "int8"
    assert lineage(loaded.meta)[-1] == f"quantize int4 weights, groups of 32 + int8 head from {ckpt}"
    assert main(["sample", str(q), "--prompt", "def ", "--tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("def ")
    assert main(["eval", str(q), "--max-batches", "1"]) == 0
    assert capsys.readouterr().out.startswith("val loss ")
    out_q = str(tmp_path / "r.npz")
    _one_line_error(capsys, ["quantize", str(ckpt), "--head", "int4", "--out", out_q], "--head", "'int4'")
    _one_line_error(capsys, ["quantize", str(ckpt), "--method", "kmeans", "--bits", "4", "--head", "int8",
                             "--out", out_q], "drop --head")
    _one_line_error(capsys, ["quantize", str(q), "--bits", "4", "--out", out_q], "quantized already")
    _one_line_error(capsys, ["train", "--resume", str(q), "--qat", "--steps", "2"], "tied embedding / head is int8")
    _one_line_error(capsys, ["train", "--resume", str(q), "--steps", "9"], "int4+int8 head", "without --head")
    _one_line_error(capsys, ["prune", str(q), "--method", "magnitude", "--sparsity", "0.5", "--out", out_q],
                    "pruning needs float weights")
    assert not (tmp_path / "r.npz").exists()


@pytest.mark.parametrize("flags, fmt", [(["--format", "q4_0"], "q4_0"), (["--activations"], "w8a8"),
                                        (["--bits", "4", "--method", "gptq", "--calib-batches", "1"], "int4")])
def test_cli_head_goes_with_every_linear_format(ckpt, tmp_path, capsys, flags, fmt):
    q = tmp_path / "q.npz"
    assert main(["quantize", str(ckpt), *flags, "--head", "int8", "--out", str(q), "--max-batches", "1",
                 "--tokens", "2"]) == 0
    params = load_checkpoint(q).model.params
    assert set(quantized_layers(params).values()) == {fmt} and head_format(params) == "int8"
    assert stored_as(params) == f"{fmt}+int8 head"
