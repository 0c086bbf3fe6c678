"""GPTQ: the Cholesky form against the plain Optimal-Brain-Surgeon updates it
stands for, lazy blocks, RTN when H is the identity, never worse than RTN on
correlated inputs, the stored format, and a small trained model."""
import numpy as np
import pytest

from minigpt import GPT, CharTokenizer, Dataset, GPTConfig, load_checkpoint
from minigpt.config import TrainConfig
from minigpt.errors import ConfigError
from minigpt.kernels.int_matmul_ref import unpack_int4
from minigpt.kernels.quantizer import int_range, quantize, quantize_tensor
from minigpt.layers.quantized_linear import dequantize
from minigpt.quant import dequantize_params, quantize_model, quantize_params, quantized_layers
from minigpt.quant.gptq import gptq_model, gptq_params, gptq_quantize, hessian, output_error, stored_arrays
from minigpt.quant.rescale import calibration_batches
from minigpt.quant.weights import weight_arrays
from minigpt.train import evaluate, train

import trained_weights

CFG = GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=4, n_embd=64, dtype="float32")


def correlated(rng, M, K, mix=1.0):
    """Inputs (M, K) whose channels are correlated (a random mixing), like a layer's real inputs."""
    return rng.standard_normal((M, K)) @ (mix * rng.standard_normal((K, K))) + 0.1 * rng.standard_normal((M, K))


def w_hat_of(q, scales, K):
    return q * np.repeat(scales, K // scales.shape[0], axis=0)


def obs_reference(w, H, bits, group, damp=0.01, mask=None):
    """GPTQ as the sequence of Optimal-Brain-Surgeon steps with the explicit inverse
    Hessian (the paper's equations before the Cholesky reformulation): quantize row k,
    update the rows not yet quantized with -e H^-1[:, k] / H^-1[k, k], then eliminate k
    from H^-1. Scales from the rows of a group as they are when it starts.
    mask (K, N), False = pruned: code 0 there, scales from the kept weights only."""
    W = w.astype(np.float64)
    K, N = W.shape
    g = K if group is None else group
    keep = np.ones((K, N), bool) if mask is None else mask
    H = H + damp * np.mean(np.diag(H)) * np.eye(K)
    Hinv = np.linalg.inv(H)
    q_min, q_max = int_range(bits, True)
    q, scales = np.zeros((K, N), np.int8), np.zeros((K // g, N), w.dtype)
    for k in range(K):
        if k % g == 0:
            scales[k // g] = quantize_tensor((W[k:k + g] * keep[k:k + g]).astype(w.dtype), bits, True, axis=1).scale
        q[k] = np.where(keep[k], quantize(W[k].astype(w.dtype), scales[k // g], 0, q_min, q_max), 0)
        e = W[k] - q[k] * scales[k // g].astype(np.float64)  # (N,)
        W[k + 1:] -= np.outer(Hinv[k + 1:, k], e) / Hinv[k, k]
        Hinv = Hinv - np.outer(Hinv[:, k], Hinv[k, :]) / Hinv[k, k]  # row and column k eliminated
    return q, scales


@pytest.mark.parametrize("bits, group, block", [(4, 8, 128), (3, 16, 5), (2, None, 7), (4, 32, 8), (8, None, 16)])
def test_cholesky_form_equals_the_explicit_obs_updates(bits, group, block):
    # float64 weights: both forms compute the same updates to ~1e-13, far from any rounding
    # boundary on random data, so every code and scale agrees exactly; block < group checks
    # that a group's scales see the updates still pending from earlier rows of the block
    rng = np.random.default_rng(bits)
    K, N = 64, 12
    w = rng.standard_normal((K, N))
    H = hessian(correlated(rng, 400, K))
    q, s = gptq_quantize(w, H, bits, group, block_size=block)
    q_ref, s_ref = obs_reference(w, H, bits, group)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_allclose(s, s_ref, rtol=1e-12)


@pytest.mark.parametrize("bits, group, block", [(4, 8, 128), (3, 16, 5), (4, None, 7)])
def test_masked_gptq_is_the_obs_steps_with_pruned_codes_zero(bits, group, block):
    # SparseGPT's joint mode: a pruned weight's code is 0 and its whole current value is the
    # error the later rows absorb. float64 weights, as above: every code and scale agrees
    rng = np.random.default_rng(10 + bits)
    K, N = 64, 12
    mask = rng.random((K, N)) > 0.5
    w = rng.standard_normal((K, N)) * mask  # a pruned weight: zeros where the mask is False
    H = hessian(correlated(rng, 400, K))
    q, s = gptq_quantize(w, H, bits, group, block_size=block, mask=mask)
    q_ref, s_ref = obs_reference(w, H, bits, group, mask=mask)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_allclose(s, s_ref, rtol=1e-12)
    assert np.all(q[~mask] == 0) and np.all(w_hat_of(q, s, K)[~mask] == 0)  # exactly 0, not nearly
    plain, _ = gptq_quantize(w, H, bits, group, block_size=block)
    assert np.any(plain[~mask] != 0)  # without the mask the updates move pruned weights off 0


@pytest.mark.parametrize("group", [16, None])
def test_an_all_true_mask_is_plain_gptq(group):
    rng = np.random.default_rng(11)
    w = rng.standard_normal((64, 10)).astype(np.float32)
    H = hessian(correlated(rng, 300, 64))
    q, s = gptq_quantize(w, H, 4, group, block_size=16)
    qm, sm = gptq_quantize(w, H, 4, group, block_size=16, mask=np.ones(w.shape, bool))
    np.testing.assert_array_equal(qm, q)
    np.testing.assert_array_equal(sm, s)
    with pytest.raises(ConfigError, match="mask of shape"):
        gptq_quantize(w, H, 4, group, mask=np.ones((10, 64), bool))


@pytest.mark.parametrize("group", [16, None])
def test_masked_error_below_rtn_of_the_pruned_weight_on_average(group):
    # GPTQ is greedy and the mask takes half its freedom away, so against RTN of the pruned
    # weight (which keeps its zeros: round(0) = 0) this is an average, not a per-layer rule:
    # on 200 seeds x (groups of 16, per channel) the ratio measured 0.83-1.01, mean 0.91-0.92,
    # above 1 on 5 of the 400 (by at most 1.1%); seeds 0-24 are checked with that margin
    ratios = []
    for seed in range(25):
        rng = np.random.default_rng(seed)
        K, N = 64, 16
        x = correlated(rng, 300, K, mix=rng.uniform(0.2, 1.0))
        mask = rng.random((K, N)) > 0.5
        w = (rng.standard_normal((K, N)) * mask).astype(np.float32)
        q, s = gptq_quantize(w, hessian(x), 4, group, mask=mask)
        w_hat = w_hat_of(q, s, K)
        rtn = dequantize({"format": "int4", **weight_arrays(w, "int4", 4, group)})
        assert np.all(rtn[~mask] == 0) and np.all(w_hat[~mask] == 0)
        err, err_rtn = np.linalg.norm(x @ w - x @ w_hat), np.linalg.norm(x @ w - x @ rtn)
        assert err <= 1.02 * err_rtn, (seed, err, err_rtn)
        ratios.append(err / err_rtn)
    assert np.mean(ratios) < 0.95


def test_lazy_blocks_change_nothing():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((96, 10)).astype(np.float32)
    H = hessian(correlated(rng, 500, 96))
    q1, s1 = gptq_quantize(w, H, 3, 16, block_size=1)
    for block in (5, 16, 40, 96, 128):
        q, s = gptq_quantize(w, H, 3, 16, block_size=block)
        np.testing.assert_array_equal(q, q1)
        np.testing.assert_array_equal(s, s1)


@pytest.mark.parametrize("kind, bits, group", [("int4", 4, 16), ("int4", 3, None), ("int4", 2, 8), ("int8", 8, None),
                                               ("int8", 6, None), ("w8a8", 8, None)])
def test_identity_hessian_is_exactly_rtn(kind, bits, group):
    # H = c I (damping only adds to the diagonal): H^-1's Cholesky factor is diagonal, no row is
    # updated, and each row is rounded in float32 as RTN rounds it: the stored arrays are identical
    rng = np.random.default_rng(2)
    K, N = 32, 24
    w = rng.standard_normal((K, N)).astype(np.float32)
    rtn = weight_arrays(w, kind, bits, group)
    x = 3.0 * np.concatenate([np.eye(K), np.eye(K)])  # orthogonal input channels: H = 2 X^T X / M = 9 I
    for H in (np.eye(K), hessian(x)):
        q, s = gptq_quantize(w, H, bits, None if kind != "int4" else group)
        got = stored_arrays(q, s, kind, group)
        assert set(got) == set(rtn)
        for k in rtn:
            assert got[k].dtype == rtn[k].dtype
            np.testing.assert_array_equal(got[k], rtn[k])


@pytest.mark.parametrize("bits, group", [(4, 16), (4, None), (3, 32), (2, 16), (8, None)])
def test_error_never_above_rtn_on_correlated_inputs(bits, group):
    # GPTQ is greedy, so this is a property of real (correlated) inputs, not a theorem: it held
    # on all of 200 seeds x 4 schemes tried when writing this; 25 seeds are checked here, and
    # GPTQ must also win clearly on average (the mean ratio measured 0.3-0.8)
    ratios = []
    for seed in range(25):
        rng = np.random.default_rng(seed)
        K, N = 64, 16
        x = correlated(rng, 300, K, mix=rng.uniform(0.2, 1.0))
        w = rng.standard_normal((K, N)).astype(np.float32)
        H = hessian(x)
        kind = "int8" if bits > 4 else "int4"
        q, s = gptq_quantize(w, H, bits, group)
        gptq = np.linalg.norm(x @ w - x @ w_hat_of(q, s, K))
        rtn = np.linalg.norm(x @ w - x @ dequantize({"format": kind, **weight_arrays(w, kind, bits, group)}))
        assert gptq <= rtn, (seed, gptq, rtn)
        ratios.append(gptq / rtn)
    assert np.mean(ratios) < 0.9


def test_output_error_is_the_layer_error_through_h():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 8))
    w, w_hat = rng.standard_normal((8, 5)), rng.standard_normal((8, 5))
    want = np.sum((x @ w - x @ w_hat) ** 2) / 50
    assert output_error(w, w_hat, hessian(x)) == pytest.approx(want, rel=1e-12)


def test_an_input_never_seen_is_rounded_to_nearest():
    # H[5, 5] = 0 (never active during calibration) becomes 1 with zero off-diagonals, so H^-1's
    # Cholesky factor has U[:5, 5] = 0: no earlier row's error reaches row 5, and with one scale
    # per output (fixed from the untouched W at row 0) row 5 gets exactly RTN's codes
    rng = np.random.default_rng(4)
    x = correlated(rng, 200, 16)
    x[:, 5] = 0.0
    w = rng.standard_normal((16, 4)).astype(np.float32)
    q, s = gptq_quantize(w, hessian(x), 4, None)
    assert np.all(np.isfinite(s))
    rtn = unpack_int4(weight_arrays(w, "int4", 4, None)["int4"], 16)
    np.testing.assert_array_equal(q[5], rtn[5])
    assert not np.array_equal(q, rtn)  # the other rows were moved by the updates


def trained_like(seed=0):
    return trained_weights.trained_like(CFG, seed)


@pytest.mark.parametrize("kind, bits, group", [("int4", 4, 32), ("int4", 3, None), ("int8", 8, None),
                                               ("w8a8", 8, None)])
def test_gptq_model_writes_quantize_params_format(kind, bits, group, tmp_path):
    model = trained_like()
    rng = np.random.default_rng(5)
    batches = [rng.integers(0, CFG.vocab_size, (4, 16)) for _ in range(3)]
    q, errors = gptq_model(model, batches, kind, bits, group)
    rtn = quantize_params(model.params, kind, group=group, bits=bits)
    assert set(q.params) == set(rtn)
    for k in rtn:
        assert q.params[k].dtype == rtn[k].dtype and q.params[k].shape == rtn[k].shape, k
    for layer, e in errors.items():  # on the inputs each layer saw: never above RTN
        assert e["gptq"] <= e["rtn"], layer
    idx = batches[0]
    if kind != "w8a8":  # the integer forward computes the dequantized weights' function
        deq = GPT(CFG, params=dequantize_params(q.params), backend="numpy")
        np.testing.assert_allclose(q.forward(idx)[0], deq.forward(idx)[0], rtol=1e-4, atol=1e-4)
    q.save(tmp_path / "g.npz")
    back = load_checkpoint(tmp_path / "g.npz").model
    np.testing.assert_array_equal(back.forward(idx)[0], q.forward(idx)[0])


def test_gptq_model_keep_zeros_keeps_a_pruned_models_zeros():
    model = trained_like()
    rng = np.random.default_rng(6)
    for k in [k for k in model.params if k.startswith("h.") and k.endswith(".weight") and model.params[k].ndim == 2]:
        model.params[k] = model.params[k] * (rng.random(model.params[k].shape) > 0.5)  # 50% unstructured
    batches = [rng.integers(0, CFG.vocab_size, (4, 16)) for _ in range(2)]
    kept, errors = gptq_model(model, batches, "int4", 4, 32, keep_zeros=True)
    plain, _ = gptq_model(model, batches, "int4", 4, 32)
    got, moved = dequantize_params(kept.params), dequantize_params(plain.params)
    layers = quantized_layers(kept.params)
    assert len(layers) == 2 * 4
    for layer in layers:
        zero = model.params[layer + ".weight"] == 0
        assert np.all(got[layer + ".weight"][zero] == 0), layer
        assert errors[layer]["gptq"] <= errors[layer]["rtn"], layer  # on the inputs this layer saw
    assert any(np.any(moved[l + ".weight"][model.params[l + ".weight"] == 0] != 0) for l in layers)


def test_gptq_keep_float_and_bad_requests():
    model = trained_like()
    batches = [np.zeros((2, 16), dtype=np.int64)]
    q, errors = gptq_model(model, batches, "int4", 4, 32, keep_float=("*.mlp.c_proj", "h.0.attn.c_attn"))
    assert set(quantized_layers(q.params)) == {"h.0.attn.c_proj", "h.0.mlp.c_fc", "h.1.attn.c_attn",
                                               "h.1.attn.c_proj", "h.1.mlp.c_fc"} == set(errors)
    with pytest.raises(ConfigError, match="q4_0"):
        gptq_params(model, batches, "q4_0")
    with pytest.raises(ConfigError, match="quantized already"):
        gptq_params(quantize_model(model, "int4"), batches)
    with pytest.raises(ConfigError, match="group size 48 does not divide"):
        gptq_params(model, batches, "int4", 4, 48)
    with pytest.raises(ConfigError, match="calibration batch"):
        gptq_params(model, [], "int4")


def small_trained_model():
    """A 2-layer, 32-wide model trained 300 steps on random code-like words (about 5 s)."""
    rng = np.random.default_rng(0)
    words = ["def ", "return ", "self", "x", "y", " = ", "(", ")", ":\n", "    ", "1", "+", "if ", "for ",
             " in ", "range", "print", ", "]
    text = "".join(rng.choice(words, 6000))
    tok = CharTokenizer.from_text(text)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)
    ds = Dataset.from_text(text, tok, 32)
    model = GPT(cfg, seed=0, tokenizer=tok)
    train(model, ds, TrainConfig(steps=300, batch_size=16, lr=1e-2, warmup_steps=10, eval_every=1000,
                                 eval_batches=1, checkpoint_every=10_000), progress=False)
    return model, ds


def test_gptq_validation_loss_not_worse_than_rtn_at_4_bits():
    # measured when written: float 1.066, RTN g16 +0.004, GPTQ g16 +0.001 (per channel: +0.003 / +0.001)
    model, ds = small_trained_model()
    cal = calibration_batches(ds, 4)
    for group in (16, None):
        rtn = evaluate(quantize_model(model, "int4", group=group, bits=4), ds, "val", 32, 4)
        gptq = evaluate(gptq_model(model, cal, "int4", 4, group)[0], ds, "val", 32, 4)
        assert gptq <= rtn, (group, gptq, rtn)


# ------------------------------------------------ minigpt quantize --method / --smooth
@pytest.fixture
def ckpt(tmp_path):
    """A float checkpoint (linears of 32 and 128 inputs) with its corpus beside it."""
    from minigpt.checkpoint import save_checkpoint

    rng = np.random.default_rng(0)
    corpus = tmp_path / "code.txt"
    corpus.write_text("".join(rng.choice(["def ", "return ", "x", " = ", "(", ")", ":\n", "    ", "1"], 3000)),
                      encoding="utf-8")
    tok = CharTokenizer.from_text(corpus.read_text(encoding="utf-8"))
    model = trained_like_for(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32))
    model.tokenizer = tok
    path = tmp_path / "m.npz"
    save_checkpoint(path, model, step=7, train_config=TrainConfig(steps=7, batch_size=4, eval_batches=2),
                    extra={"corpus": str(corpus)})
    return path


def trained_like_for(cfg):
    return trained_weights.trained_like(cfg)


@pytest.mark.parametrize("flags, fmt, method, smooth", [
    (["--method", "gptq", "--bits", "4", "--group-size", "16"], "int4", "gptq", None),
    (["--method", "gptq", "--bits", "6", "--calib-batches", "2"], "int8", "gptq", None),
    (["--method", "awq", "--bits", "3"], "int4", "awq", None),
    (["--activations", "--smooth", "0.5"], "w8a8", "rtn", 0.5),
    (["--activations", "--smooth", "0.8", "--method", "gptq", "--calib-batches", "1"], "w8a8", "gptq", 0.8)])
def test_quantize_method_writes_a_checkpoint_that_samples(ckpt, tmp_path, capsys, flags, fmt, method, smooth):
    from minigpt.cli import main

    q = tmp_path / "q.npz"
    assert main(["quantize", str(ckpt), "--out", str(q), "--max-batches", "2", "--tokens", "4", *flags]) == 0
    captured = capsys.readouterr()
    assert "val loss" in captured.out and f"wrote {q}" in captured.out
    assert "calibration batches of 16" in captured.err
    back = load_checkpoint(q)
    assert set(quantized_layers(back.model.params).values()) == {fmt}
    assert back.meta["quantization"]["method"] == method and back.meta["quantization"]["smooth"] == smooth
    assert main(["sample", str(q), "--prompt", "def ", "--tokens", "3"]) == 0


def test_gptq_from_the_cli_is_the_library_on_the_training_split(ckpt, tmp_path, capsys):
    from minigpt.cli import main
    from minigpt.data import Dataset, load_corpus

    q = tmp_path / "q.npz"
    assert main(["quantize", str(ckpt), "--out", str(q), "--max-batches", "1", "--tokens", "2",
                 "--method", "gptq", "--bits", "4", "--group-size", "16", "--calib-batches", "3"]) == 0
    c = load_checkpoint(ckpt)
    ds = Dataset.from_text(load_corpus(c.meta["corpus"])[0], c.model.tokenizer, c.model.config.block_size)
    want, _ = gptq_params(c.model, calibration_batches(ds, 3, 16), "int4", 4, 16)
    got = load_checkpoint(q).model.params
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


@pytest.mark.parametrize("flags, fragment", [
    (["--method", "gptq", "--format", "q4_0"], "--method gptq writes"),
    (["--method", "awq", "--activations"], "--method awq scales weight-only"),
    (["--smooth", "0.5", "--bits", "4"], "needs --activations"),
    (["--calib-batches", "4"], "--calib-batches is for"),
    (["--method", "gptq", "--calib-batches", "0"], "--calib-batches must be positive, got 0"),
    (["--activations", "--smooth", "1.5"], "from 0 to 1, got 1.5"),
    (["--activations", "--smooth", "half"], "'half'"),
    (["--method", "gptq", "--bits", "4", "--group-size", "48"], "group size 48 does not divide"),
    (["--method", "sgd"], "invalid choice: 'sgd'")])
def test_bad_method_options_get_one_line(ckpt, tmp_path, capsys, flags, fragment):
    from minigpt.cli import main

    code = main(["quantize", str(ckpt), "--out", str(tmp_path / "q.npz"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("minigpt: error: ") and fragment in err[-1], err
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "q.npz").exists()
