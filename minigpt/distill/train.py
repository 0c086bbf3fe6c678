"""Training a student through the shared loop (minigpt.train.train).

The distillation loss plugs in as train()'s loss_fn; everything else (AdamW,
schedule, clipping, progress bar, validation, checkpoints, Ctrl-C, exact
resume) is the loop every other kind of training uses. One step:

    t = teacher.forward(x)                 # forward only: no caches, no dropout
    s = student.forward(x, keep_cache)     # the student keeps its caches
    loss, dlogits = distill pair (s, t, y)
    student.backward(dlogits)              # done by the loop

The teacher runs once per step, and its logits serve both the loss and the
gradient (one forward, never one per term). When the batches repeat (runs
with the same seed see the same batches: a sweep over T or alpha, or a
resumed run) a TeacherLogits cache hands back the logits of a batch seen
before instead of running the teacher again. Validation reports the
student's plain cross-entropy, as for every method.
"""
from __future__ import annotations

import numpy as np

from ..model import GPT
from ..train import train
from .loss import check_distill_args, distill_backward, distill_forward


class TeacherLogits:
    """The teacher's logits for a batch: computed by an inference forward (no
    dropout, no caches), or looked up when the same token ids came before.

    max_batches bounds the memory (B T V floats a batch); past it, batches
    are computed but no longer stored. hits / misses count the lookups.
    """

    def __init__(self, teacher: GPT, max_batches=1000):
        self.teacher, self.max_batches = teacher, max_batches
        self.store, self.hits, self.misses = {}, 0, 0

    def __call__(self, x):
        x = np.ascontiguousarray(x)
        key = (x.shape, x.tobytes())
        logits = self.store.get(key)
        if logits is not None:
            self.hits += 1
            return logits
        self.misses += 1
        logits = teacher_logits(self.teacher, x)
        if len(self.store) < self.max_batches:
            self.store[key] = logits
        return logits


def teacher_logits(teacher: GPT, x):
    """(B, T, V) logits of an inference forward: no dropout, nothing kept."""
    training, teacher.training = teacher.training, False
    try:
        logits, _ = teacher.forward(x)
    finally:
        teacher.training = training
    return logits


def distill_loss_fn(teacher: GPT, temperature=2.0, alpha=0.5, reverse=False, cache: TeacherLogits | None = None,
                    hidden=None):
    """loss_fn(model, x, y) -> (loss, dlogits) for minigpt.train.train.
    cache: a TeacherLogits to reuse the teacher's logits of repeated batches
    (it must wrap this teacher). hidden: a minigpt.distill.hidden.HiddenMatch
    adding its term; dlogits is then a dict that also holds the gradients
    w.r.t. the matched block outputs (GPT.backward takes it)."""
    check_distill_args(temperature, alpha)
    if cache is not None and cache.teacher is not teacher:
        raise ValueError("the TeacherLogits cache wraps another teacher")
    lookup = cache if cache is not None else (lambda x: teacher_logits(teacher, x))
    if hidden is not None:
        if cache is not None:
            raise ValueError("a TeacherLogits cache holds no hidden states; match hidden states without one")
        return _with_hidden(teacher, temperature, alpha, reverse, hidden)

    def loss_fn(model, x, y):
        t_logits = lookup(x)  # (B, T, V), the teacher forward only
        s_logits, _ = model.forward(x, keep_cache=True)  # (B, T, V)
        loss, cache = distill_forward(s_logits, t_logits, y, temperature, alpha, reverse)
        return loss, distill_backward(1.0, cache)

    return loss_fn


def _with_hidden(teacher, temperature, alpha, reverse, hidden):
    """The loss_fn with a hidden-state term: one teacher forward gives both
    its logits and its block outputs (no logits cache: it would have to
    hold the hidden states too)."""
    def loss_fn(model, x, y):
        training, teacher.training = teacher.training, False
        try:
            t_logits, _ = teacher.forward(x, keep_cache=True)  # (B, T, V)
            t_acts = teacher.activations()  # block outputs of that forward
        finally:
            teacher.training = training
        s_logits, _ = model.forward(x, keep_cache=True)  # (B, T, V)
        loss, cache = distill_forward(s_logits, t_logits, y, temperature, alpha, reverse)
        h_loss, dh = hidden.loss(model.activations(), t_acts)
        return loss + h_loss, {"logits": distill_backward(1.0, cache), **dh}

    return loss_fn


def distill(student: GPT, teacher: GPT, dataset, tcfg, temperature=2.0, alpha=0.5, reverse=False, cache=None,
            hidden=None, **kwargs):
    """Train student in place on teacher's soft targets for tcfg.steps steps
    (kwargs go to minigpt.train.train: out, progress, log, resume, ...;
    cache: a TeacherLogits shared by runs that repeat batches; hidden: a
    HiddenMatch, whose projections then train along).
    Returns train()'s TrainResult."""
    if student.config.vocab_size != teacher.config.vocab_size:
        from .errors import DistillError

        raise DistillError(f"the student's vocabulary ({student.config.vocab_size}) differs from the "
                           f"teacher's ({teacher.config.vocab_size})")
    loss_fn = distill_loss_fn(teacher, temperature, alpha, reverse, cache, hidden)
    if hidden is not None:  # the projections step with the student, at the loop's learning rate
        kwargs["after_step"] = _then_update(hidden, tcfg, kwargs.get("after_step"))
    return train(student, dataset, tcfg, loss_fn=loss_fn, **kwargs)


def _then_update(hidden, tcfg, after_step):
    from ..optim import lr_schedule

    def after(params, opt):
        if after_step is not None:
            after_step(params, opt)
        hidden.update(lr_schedule(opt.t - 1, tcfg.lr, tcfg.min_lr, tcfg.warmup_steps, tcfg.steps))

    return after
