"""Distillation through the shared training loop (minigpt.distill.train).

The step's gradient is checked end to end: the distillation loss of the
whole student, as a function of its parameters, against centered finite
differences in float64 (relative error < 1e-6, as for every layer: h = 1e-5,
truncation ~1e-10, rounding ~1e-11), on a sample of entries of every tensor.
"""
import numpy as np
import pytest

from minigpt import GPT, GPTConfig
from minigpt.config import TrainConfig
from minigpt.data import Dataset
from minigpt.distill.errors import DistillError
from minigpt.distill.student import make_student
from minigpt.distill.train import distill, distill_loss_fn
from minigpt.gradcheck import numerical_gradient, relative_error
from minigpt.tokenizer import CharTokenizer
from minigpt.train import train

TEXT = "the quick brown fox jumps over the lazy dog. " * 40


def tiny_teacher(dtype="float64", seed=0):
    tok = CharTokenizer.from_text(TEXT)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=2, n_head=2, n_embd=16, dtype=dtype)
    rng = np.random.default_rng(seed)
    t = GPT(cfg, seed=seed, backend="numpy", tokenizer=tok)
    t.params = {k: (v + rng.normal(0, 0.3, v.shape)).astype(dtype) for k, v in t.params.items()}  # O(1) logits
    return t, Dataset.from_text(TEXT, tok, cfg.block_size)


@pytest.mark.parametrize("alpha,T,reverse", [(0.5, 2.0, False), (1.0, 4.0, True)])
def test_distillation_step_gradient_matches_finite_differences(alpha, T, reverse):
    teacher, ds = tiny_teacher()
    student, _ = make_student(teacher, n_layer=1, n_embd=8, n_head=2, init="random", seed=1)
    student.params = {k: v + np.random.default_rng(2).normal(0, 0.2, v.shape) for k, v in student.params.items()}
    x, y = ds.get_batch("train", 2, np.random.default_rng(0))
    loss_fn = distill_loss_fn(teacher, T, alpha, reverse)
    _, dlogits = loss_fn(student, x, y)
    grads = student.backward(dlogits)
    rng = np.random.default_rng(3)
    for name, p in student.params.items():
        idx = rng.choice(p.size, min(p.size, 6), replace=False)
        num = numerical_gradient(lambda: loss_fn(student, x, y)[0], p, indices=idx)
        assert relative_error(grads[name], num, idx) < 1e-6, name


def test_alpha_zero_trains_exactly_like_plain_training():
    """alpha = 0 is cross-entropy alone: same batches, same updates; the
    gradients agree to rounding (float64), so the weights after 5 steps do too."""
    teacher, ds = tiny_teacher()
    tcfg = TrainConfig(steps=5, batch_size=4, warmup_steps=1, eval_every=5, eval_batches=1)
    a, _ = make_student(teacher, n_layer=1, init="random", seed=4)
    b, _ = make_student(teacher, n_layer=1, init="random", seed=4)
    distill(a, teacher, ds, tcfg, temperature=3.0, alpha=0.0, progress=False)
    train(b, ds, tcfg, progress=False)
    for k in a.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-9, atol=1e-12)


def test_distillation_lowers_the_soft_loss_and_leaves_the_teacher_alone():
    teacher, ds = tiny_teacher(dtype="float32")
    before = {k: v.copy() for k, v in teacher.params.items()}
    student, _ = make_student(teacher, n_layer=1, n_embd=8, n_head=2, init="random", seed=0)
    x, y = ds.get_batch("val", 8, np.random.default_rng(9))
    soft = distill_loss_fn(teacher, 2.0, 1.0)
    start = soft(student, x, y)[0]
    tcfg = TrainConfig(steps=40, batch_size=8, lr=1e-2, warmup_steps=2, eval_every=20, eval_batches=1)
    res = distill(student, teacher, ds, tcfg, temperature=2.0, alpha=1.0, progress=False)
    assert res.step == 40 and len(res.val_losses) == 2
    assert soft(student, x, y)[0] < 0.5 * start
    for k, v in teacher.params.items():
        np.testing.assert_array_equal(v, before[k])


def test_bad_settings_are_user_errors():
    teacher, ds = tiny_teacher()
    with pytest.raises(DistillError, match="temperature"):
        distill_loss_fn(teacher, 0.0, 0.5)
    with pytest.raises(DistillError, match="alpha"):
        distill_loss_fn(teacher, 1.0, 2.0)
    other = GPT(teacher.config.replace(vocab_size=teacher.config.vocab_size + 1), backend="numpy")
    with pytest.raises(DistillError, match="vocabulary"):
        distill(other, teacher, ds, TrainConfig(steps=1))


def test_teacher_logits_cache_reuses_repeated_batches_and_changes_nothing():
    """Two runs with the same seed see the same batches: the second takes
    every teacher output from the cache, and trains to the same weights."""
    from minigpt.distill.train import TeacherLogits

    teacher, ds = tiny_teacher()
    tcfg = TrainConfig(steps=4, batch_size=4, warmup_steps=1, eval_every=4, eval_batches=1)
    cache = TeacherLogits(teacher)
    a, _ = make_student(teacher, n_layer=1, init="random", seed=4)
    distill(a, teacher, ds, tcfg, cache=cache, progress=False)
    assert (cache.hits, cache.misses) == (0, 4)
    b, _ = make_student(teacher, n_layer=1, init="random", seed=4)
    distill(b, teacher, ds, tcfg, cache=cache, progress=False)
    assert (cache.hits, cache.misses) == (4, 4)
    c, _ = make_student(teacher, n_layer=1, init="random", seed=4)
    distill(c, teacher, ds, tcfg, progress=False)  # no cache: the teacher runs every step
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
        np.testing.assert_array_equal(a.params[k], c.params[k])
    with pytest.raises(ValueError, match="another teacher"):
        distill_loss_fn(teacher, cache=TeacherLogits(c))
