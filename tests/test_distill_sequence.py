"""Sequence-level distillation: a training split the teacher wrote, the real
validation split, reproducible from a seed, and a student that learns from it."""
import numpy as np
import pytest

from minigpt import GPT, GPTConfig, TrainConfig
from minigpt.data import Dataset
from minigpt.distill.errors import DistillError
from minigpt.distill.sequence import teacher_text_dataset
from minigpt.tokenizer import CharTokenizer
from minigpt.train import evaluate, train

TEXT = "abcabcabd abcabcabd " * 60


def setup():
    tok = CharTokenizer.from_text(TEXT)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16)
    ds = Dataset.from_text(TEXT, tok, 8)
    teacher = GPT(cfg, seed=0, tokenizer=tok, backend="numpy")
    train(teacher, ds, TrainConfig(steps=60, batch_size=8, lr=1e-2, warmup_steps=5, eval_every=60, eval_batches=1),
          progress=False)
    return teacher, ds


def test_teacher_text_is_the_teachers_samples_and_val_is_real():
    teacher, ds = setup()
    seq = teacher_text_dataset(teacher, ds, 200, streams=4, seed=3)
    assert seq.train.shape == (200,) and seq.train.dtype == np.int64 and seq.block_size == 8
    assert seq.val is ds.val
    again = teacher_text_dataset(teacher, ds, 200, streams=4, seed=3)
    np.testing.assert_array_equal(seq.train, again.train)  # the seed fixes prompts and samples
    # the same draws by hand: prompts of 4 real tokens, then 50 sampled per stream
    rng = np.random.default_rng(3)
    starts = rng.integers(0, len(ds.train) - 4, size=4)
    prompts = ds.train[starts[:, None] + np.arange(4)]
    out = teacher.generate(prompts, 50, rng=rng)
    np.testing.assert_array_equal(seq.train, out[:, 4:].reshape(-1))
    # a trained teacher writes mostly what it learned: its text is easy for it
    assert evaluate(teacher, seq, "train", 8) < evaluate(GPT(teacher.config, seed=5), seq, "train", 8)


def test_a_student_learns_from_teacher_text():
    teacher, ds = setup()
    seq = teacher_text_dataset(teacher, ds, 400, streams=4, temperature=0.7, seed=0)
    student = GPT(teacher.config.replace(n_embd=8), seed=1, tokenizer=teacher.tokenizer, backend="numpy")
    before = evaluate(student, ds, "val", 8)
    train(student, seq, TrainConfig(steps=40, batch_size=8, lr=1e-2, warmup_steps=4, eval_every=40, eval_batches=1),
          progress=False)
    assert evaluate(student, ds, "val", 8) < before - 0.5  # judged on the real text


def test_bad_requests_are_user_errors():
    teacher, ds = setup()
    with pytest.raises(DistillError, match="at least"):
        teacher_text_dataset(teacher, ds, 5)
    with pytest.raises(DistillError, match="temperature"):
        teacher_text_dataset(teacher, ds, 100, temperature=0)
