"""Hidden-state matching losses (minigpt.distill.hidden): forward against the
formula, backward against centered finite differences in float64
(relative error < 1e-6; see tests/test_layers.py for why)."""
import numpy as np
import pytest

from minigpt.distill.errors import DistillError
from minigpt.distill.hidden import (cosine_backward, cosine_forward, init_projection, projected_mse_backward,
                                    projected_mse_forward)
from minigpt.gradcheck import numerical_gradient, relative_error


def test_cosine_forward_and_backward():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
    loss, cache = cosine_forward(a, b)
    want = np.mean([1 - u @ v / np.linalg.norm(u) / np.linalg.norm(v)
                    for u, v in zip(a.reshape(-1, 5), b.reshape(-1, 5))])
    assert loss == pytest.approx(want, rel=1e-12)
    g = cosine_backward(1.0, cache)
    assert relative_error(g, numerical_gradient(lambda: cosine_forward(a, b)[0], a)) < 1e-6
    assert cosine_forward(3.0 * b, b)[0] == pytest.approx(0.0, abs=1e-12)  # scale does not matter
    with pytest.raises(DistillError, match="projection"):
        cosine_forward(a[..., :4], b)


def test_projected_mse_forward_and_backward():
    rng = np.random.default_rng(1)
    a, b, W = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 6)), rng.normal(size=(4, 6))
    loss, cache = projected_mse_forward(a, b, W)
    assert loss == pytest.approx(np.mean((a @ W - b) ** 2), rel=1e-12)
    da, dW = projected_mse_backward(1.0, cache)
    f = lambda: projected_mse_forward(a, b, W)[0]  # noqa: E731
    assert relative_error(da, numerical_gradient(f, a)) < 1e-6
    assert relative_error(dW, numerical_gradient(f, W)) < 1e-6
    with pytest.raises(DistillError, match="projection W"):
        projected_mse_forward(a, b, W[:3])


def test_projection_starts_near_a_width_slice():
    W = init_projection(4, 6, seed=0)
    assert W.shape == (4, 6) and np.abs(W - np.eye(4, 6)).max() < 0.1


# --- hidden-state matching through the student (GPT.backward with a dict) -------

from minigpt import GPT, GPTConfig  # noqa: E402
from minigpt.config import TrainConfig  # noqa: E402
from minigpt.data import Dataset  # noqa: E402
from minigpt.distill.hidden import HiddenMatch, default_pairs, parse_pairs  # noqa: E402
from minigpt.distill.student import make_student  # noqa: E402
from minigpt.distill.train import distill, distill_loss_fn  # noqa: E402
from minigpt.tokenizer import CharTokenizer  # noqa: E402

TEXT = "the quick brown fox jumps over the lazy dog. " * 40


def teacher_and_data(C=16):
    tok = CharTokenizer.from_text(TEXT)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=2, n_head=2, n_embd=C, dtype="float64")
    t = GPT(cfg, seed=0, backend="numpy", tokenizer=tok)
    rng = np.random.default_rng(0)
    t.params = {k: v + rng.normal(0, 0.3, v.shape) for k, v in t.params.items()}
    return t, Dataset.from_text(TEXT, tok, 8)


def test_backward_takes_block_output_gradients():
    """A dict with only "logits" is the array; a gradient at h.0 equals the
    finite differences of sum(h.0 * G) w.r.t. the parameters."""
    t, ds = teacher_and_data()
    x, _ = ds.get_batch("train", 2, np.random.default_rng(0))
    logits, _ = t.forward(x, keep_cache=True)
    D = np.random.default_rng(1).normal(size=logits.shape)
    a = t.backward(D)
    t.forward(x, keep_cache=True)
    b = t.backward({"logits": D})
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    G = np.random.default_rng(2).normal(size=(2, 8, 16))
    t.forward(x, keep_cache=True)
    g = t.backward({"logits": np.zeros_like(D), "h.0": G})
    f = lambda: float((t.activations(x)["h.0"] * G).sum())  # noqa: E731
    for name in ("wte.weight", "h.0.attn.c_attn.weight", "h.0.mlp.c_fc.bias"):
        idx = np.random.default_rng(3).choice(t.params[name].size, 6, replace=False)
        assert relative_error(g[name], numerical_gradient(f, t.params[name], indices=idx), idx) < 1e-6, name
    assert not g["h.1.mlp.c_fc.weight"].any()  # block 1 comes after h.0: no gradient from it
    t.forward(x, keep_cache=True)
    with pytest.raises(ValueError, match="h.5"):
        t.backward({"logits": D, "h.5": G})


@pytest.mark.parametrize("C_s,kind", [(16, "cosine"), (8, "mse")])
def test_step_with_hidden_term_matches_finite_differences(C_s, kind):
    """The whole loss (soft targets + hidden term) w.r.t. student parameters
    and the projection, against centered differences in float64."""
    t, ds = teacher_and_data()
    s, _ = make_student(t, n_layer=1, n_embd=C_s, n_head=2, init="random", seed=1)
    s.params = {k: v + np.random.default_rng(2).normal(0, 0.2, v.shape) for k, v in s.params.items()}
    hm = HiddenMatch(default_pairs(2, 1), C_s, 16, weight=0.7, kind="auto")
    assert hm.kind == kind and hm.pairs == {0: 1}
    x, y = ds.get_batch("train", 2, np.random.default_rng(0))
    loss_fn = distill_loss_fn(t, 2.0, 0.5, hidden=hm)
    _, d = loss_fn(s, x, y)
    grads = s.backward(d)
    f = lambda: loss_fn(s, x, y)[0]  # noqa: E731
    rng = np.random.default_rng(3)
    for name, p in s.params.items():
        idx = rng.choice(p.size, min(p.size, 5), replace=False)
        assert relative_error(grads[name], numerical_gradient(f, p, indices=idx), idx) < 1e-6, name
    if kind == "mse":
        _, _ = loss_fn(s, x, y)
        dW = hm.grads["proj.0"].copy()
        assert relative_error(dW, numerical_gradient(f, hm.W["proj.0"])) < 1e-6


def test_distill_with_hidden_trains_student_and_projection():
    t, ds = teacher_and_data()
    s, _ = make_student(t, n_layer=1, n_embd=8, n_head=2, init="random", seed=1)
    hm = HiddenMatch({0: 1}, 8, 16, weight=1.0)
    W0 = hm.W["proj.0"].copy()
    x, y = ds.get_batch("val", 8, np.random.default_rng(5))
    acts = lambda: hm.loss(s.activations(x), t.activations(x))[0]  # noqa: E731
    start = acts()
    tcfg = TrainConfig(steps=30, batch_size=8, lr=1e-2, warmup_steps=2, eval_every=30, eval_batches=1)
    distill(s, t, ds, tcfg, hidden=hm, progress=False)
    assert not np.array_equal(hm.W["proj.0"], W0)
    assert acts() < 0.7 * start


def test_pairs_and_bad_settings():
    assert default_pairs(4, 2) == {0: 1, 1: 3} and default_pairs(2, 1) == {0: 1}
    assert parse_pairs("all", 2, 4) == {0: 1, 1: 3} and parse_pairs("0:0,1:2", 2, 4) == {0: 0, 1: 2}
    for spec in ("0-1", "2:0", "0:4", "x"):
        with pytest.raises(DistillError, match="--hidden"):
            parse_pairs(spec, 2, 4)
    with pytest.raises(DistillError, match="equal widths"):
        HiddenMatch({0: 0}, 8, 16, kind="cosine")
    with pytest.raises(DistillError, match="unknown"):
        HiddenMatch({0: 0}, 8, 16, kind="l1")
