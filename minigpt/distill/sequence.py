"""Sequence-level distillation (Kim & Rush 2016): the student trains on text
the teacher wrote, instead of (or besides) matching its distribution at
every position of the real text.

teacher_text_dataset samples `streams` continuations in one batch, each
started from a window of the real training split (so the teacher writes in
the corpus's style from the first character), and puts their new tokens
end to end as the training split; the validation split stays the real one,
so the student is judged on the same text as every other method. A window
that straddles two streams mixes their ends; with streams of thousands of
tokens and windows of 64 that is a few percent of the windows.
"""
from __future__ import annotations

import numpy as np

from ..data import Dataset
from ..model import GPT
from .errors import DistillError


def teacher_text_dataset(teacher: GPT, dataset: Dataset, n_tokens: int, temperature=1.0, streams=16,
                         prompt_tokens=None, seed=0) -> Dataset:
    """A Dataset: train = n_tokens sampled from teacher (at temperature, top-k
    and top-p off), val = dataset.val. prompt_tokens (default: the block size
    / 2) of real training text start each stream and are not included."""
    T = dataset.block_size
    per_stream = -(-n_tokens // streams)  # ceil
    if n_tokens < T + 1 or per_stream < 1:
        raise DistillError(f"sample at least block_size + 1 = {T + 1} tokens, got {n_tokens}")
    if not temperature > 0:
        raise DistillError(f"sampling temperature must be positive, got {temperature}")
    prompt_tokens = prompt_tokens or max(1, T // 2)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(dataset.train) - prompt_tokens, size=streams)
    prompts = dataset.train[starts[:, None] + np.arange(prompt_tokens)]  # (streams, P)
    out = teacher.generate(prompts, per_stream, temperature=temperature, rng=rng)  # (streams, P + n)
    text = out[:, prompt_tokens:].reshape(-1)[:n_tokens].astype(np.int64)  # streams end to end
    return Dataset(text, dataset.val, T)
