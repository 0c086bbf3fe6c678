"""Training a student through the shared loop (minigpt.train.train).

The distillation loss plugs in as train()'s loss_fn; everything else (AdamW,
schedule, clipping, progress bar, validation, checkpoints, Ctrl-C, exact
resume) is the loop every other kind of training uses. One step:

    t = teacher.forward(x)                 # forward only: no caches, no dropout
    s = student.forward(x, keep_cache)     # the student keeps its caches
    loss, dlogits = distill pair (s, t, y)
    student.backward(dlogits)              # done by the loop

The teacher runs once per step, and its logits serve both the loss and the
gradient (one forward, never one per term). Validation reports the
student's plain cross-entropy, as for every method.
"""
from __future__ import annotations

from ..model import GPT
from ..train import train
from .loss import check_distill_args, distill_backward, distill_forward


def distill_loss_fn(teacher: GPT, temperature=2.0, alpha=0.5, reverse=False):
    """loss_fn(model, x, y) -> (loss, dlogits) for minigpt.train.train."""
    check_distill_args(temperature, alpha)

    def loss_fn(model, x, y):
        training, teacher.training = teacher.training, False  # the teacher is fixed: no dropout
        try:
            t_logits, _ = teacher.forward(x)  # (B, T, V), keeps nothing
        finally:
            teacher.training = training
        s_logits, _ = model.forward(x, keep_cache=True)  # (B, T, V)
        loss, cache = distill_forward(s_logits, t_logits, y, temperature, alpha, reverse)
        return loss, distill_backward(1.0, cache)

    return loss_fn


def distill(student: GPT, teacher: GPT, dataset, tcfg, temperature=2.0, alpha=0.5, reverse=False, **kwargs):
    """Train student in place on teacher's soft targets for tcfg.steps steps
    (kwargs go to minigpt.train.train: out, progress, log, resume, ...).
    Returns train()'s TrainResult."""
    if student.config.vocab_size != teacher.config.vocab_size:
        from .errors import DistillError

        raise DistillError(f"the student's vocabulary ({student.config.vocab_size}) differs from the "
                           f"teacher's ({teacher.config.vocab_size})")
    loss_fn = distill_loss_fn(teacher, temperature, alpha, reverse)
    return train(student, dataset, tcfg, loss_fn=loss_fn, **kwargs)
