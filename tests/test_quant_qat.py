"""Quantization-aware training: the fake-quantization pair against its formula
(boundaries included), the transform against quantize_params, and a short fine-tune."""
import numpy as np
import pytest

from minigpt import GPT, CharTokenizer, Dataset, GPTConfig
from minigpt.config import TrainConfig
from minigpt.errors import ConfigError
from minigpt.kernels.quantizer import quantize_tensor
from minigpt.quant import dequantize_params, quantize_params
from minigpt.quant.qat import fake_quant_backward, fake_quant_forward, qat_finetune, qat_transform
from minigpt.train import evaluate


def test_forward_is_quantize_then_dequantize():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 6)).astype(np.float32)
    for layout in (dict(bits=8, axis=1), dict(bits=3, group=8), dict(bits=5)):
        for symmetric in (True, False):
            w_hat, _ = fake_quant_forward(w, symmetric=symmetric, **layout)
            t = quantize_tensor(w, symmetric=symmetric, **layout)
            assert w_hat.dtype == np.float32
            np.testing.assert_array_equal(w_hat, t.dequantize())


def test_straight_through_gradient_at_the_boundaries():
    # symmetric 4 bits on the range [-7, 7]: s = 1, z = 0, integers -7..7
    w = np.array([7.0, 7.4, 7.5, 8.0, 6.5, -7.0, -7.49, -7.5, 0.0, 100.0])
    w_hat, cache = fake_quant_forward(w, bits=4, symmetric=True, lo=-7.0, hi=7.0)
    # round half to even: 7.5 -> 8 and -7.5 -> -8 are outside and clamped; 6.5 -> 6 is inside
    np.testing.assert_array_equal(w_hat, [7, 7, 7, 7, 6, -7, -7, -7, 0, 7])
    dw = fake_quant_backward(np.full_like(w, 3.0), cache)
    np.testing.assert_array_equal(dw, [3, 3, 0, 0, 3, 3, 3, 0, 3, 0])


def test_straight_through_gradient_with_a_zero_point():
    # affine 2 bits on [-1, 2]: s = 1, z = 1, integers 0..3 stand for -1..2
    w = np.array([-1.0, -1.5, -1.6, 2.0, 2.5, 2.6, 0.4])
    w_hat, cache = fake_quant_forward(w, bits=2, symmetric=False, lo=-1.0, hi=2.0)
    # round(w / s) comes first, then + z: round(-1.5) = -2 (half to even), -2 + 1 = -1 < 0 -> clamped;
    # round(2.5) = 2, 2 + 1 = 3 -> inside, on the boundary
    np.testing.assert_array_equal(w_hat, [-1, -1, -1, 2, 2, 2, 0])
    np.testing.assert_array_equal(fake_quant_backward(np.ones(7), cache), [1, 0, 0, 1, 1, 0, 1])


def test_min_max_scales_never_clamp():
    w = np.random.default_rng(1).standard_normal((64, 8))
    _, inside = fake_quant_forward(w, bits=2, symmetric=True, group=16)
    assert inside.all()


CFG = GPTConfig(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=32, dtype="float32")


def random_model():
    model = GPT(CFG, seed=0)
    rng = np.random.default_rng(0)
    for k, p in model.params.items():
        if p.ndim == 2:
            model.params[k] = rng.normal(0, 1 / np.sqrt(p.shape[0]), p.shape).astype(np.float32)
    return model


@pytest.mark.parametrize("kind, bits, group", [("int8", 8, None), ("int8", 6, None), ("int4", 4, 16),
                                               ("int4", 3, None), ("int4", 2, 32)])
def test_transform_sees_exactly_what_quantize_params_stores(kind, bits, group):
    params = random_model().params
    seen, grad_fn = qat_transform(kind, bits, group)(params)
    stored = dequantize_params(quantize_params(params, kind, group=group, bits=bits))
    assert set(seen) == set(stored)
    for k in seen:
        np.testing.assert_array_equal(seen[k], stored[k], err_msg=k)
    grads = {k: np.ones_like(v) for k, v in params.items()}
    assert all(np.all(g == 1) for g in grad_fn(grads).values())  # min-max: nothing clamped


def test_transform_refuses_formats_it_cannot_reproduce():
    with pytest.raises(ConfigError, match="supports"):
        qat_transform("q4_0")
    with pytest.raises(ConfigError, match="does not divide"):
        qat_transform("int4", 4, 24)(random_model().params)


def test_qat_finetune_ends_with_the_quantized_model_it_trained():
    text = "def add(a, b):\n    return a + b\n\nclass A:\n    pass\n" * 30
    tok = CharTokenizer.from_text(text)
    cfg = CFG.replace(vocab_size=tok.vocab_size)
    ds = Dataset.from_text(text, tok, cfg.block_size)
    model = GPT(cfg, seed=0, tokenizer=tok)
    tcfg = TrainConfig(steps=40, batch_size=8, lr=3e-3, warmup_steps=5, eval_every=20, eval_batches=2)
    qmodel, result = qat_finetune(model, ds, tcfg, kind="int4", bits=3, group=16, progress=False)
    val = evaluate(qmodel, ds, "val", tcfg.batch_size, tcfg.eval_batches)
    # the integer model computes what the last validation's fake-quantized forward computed
    # (the int4 kernel sums in another order: float32 rounding)
    assert abs(val - result.val_losses[-1][1]) < 1e-4
    assert result.val_losses[-1][1] < result.val_losses[0][1]
    only = qat_finetune(GPT(cfg, seed=0, tokenizer=tok), ds, tcfg.replace(steps=2), kind="int8",
                        layers=["h.1.mlp.c_fc"], progress=False)[0]
    assert "h.1.mlp.c_fc.weight.int8" in only.params and "h.0.mlp.c_fc.weight" in only.params
