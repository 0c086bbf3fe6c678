"""The training loop: AdamW + clipping + warm-up/cosine, with a progress bar,
periodic validation and checkpoints, clean Ctrl-C, exact resume, and a stop
on a non-finite loss.

Exact resume: a checkpoint holds the parameters, AdamW's moments and step
count, the batch sampler's RNG state and the dropout RNG state, so the steps
after a resume draw the same batches and masks, and compute the same
numbers, as an uninterrupted run would.

One loop for every kind of training. Compression methods plug into
``train()`` through four optional arguments; plain training passes none of
them and runs the same loop. One step, in order:

    seen, grad_fn = weight_transform(params)      # default: seen = params, grad_fn = identity
    loss, dlogits = loss_fn(model, x, y)          # forward, on the seen weights
    grads = grad_fn(model.backward(dlogits))      # dL/dseen -> dL/dparams
    before_step(grads)                            # edit gradients in place
    clip, then AdamW updates params
    after_step(params, optimizer)                 # edit weights / optimizer state in place

- ``loss_fn(model, x, y) -> (loss, dlogits)``: run the forward and return
  the training loss (a float) and dL/dlogits (B, T, V) for
  ``model.backward(dlogits)``; dlogits None means "the cross-entropy of the
  forward just run" (what the default, ``cross_entropy_loss``, returns).
  Distillation from a teacher's logits, with a hand-written KL pair::

      def distill(model, x, y, tau=2.0):
          p_t = softmax(teacher.forward(x)[0] / tau)                  # (B, T, V)
          z, _ = model.forward(x, keep_cache=True)                    # keep caches for backward
          log_p_s = log_softmax(z / tau)
          loss = float((p_t * (np.log(p_t) - log_p_s)).sum(-1).mean())
          dlogits = (np.exp(log_p_s) - p_t) / (tau * x.size)          # dKL/dz, mean over B*T
          return loss, dlogits

- ``weight_transform(params) -> (seen, grad_fn)``: ``seen`` (same keys and
  shapes) is what the forward and backward use in place of the parameters;
  ``grad_fn(grads)`` maps the gradient w.r.t. ``seen`` to the gradient
  w.r.t. the parameters. The optimizer updates, and checkpoints store, the
  parameters themselves; validation sees ``seen``. Fake quantization with a
  straight-through estimator (the rounding's derivative taken as 1)::

      def fake_quant(params, bits=8):
          seen = dict(params)
          for k, w in params.items():
              if w.ndim == 2:                                           # matrices, per output column
                  s = np.maximum(np.abs(w).max(axis=0), 1e-12) / (2 ** (bits - 1) - 1)
                  seen[k] = (np.round(w / s) * s).astype(w.dtype)
          return seen, lambda grads: grads

- ``before_step(grads)`` runs before clipping (so the norm is that of the
  gradients actually applied) and ``after_step(params, optimizer)`` after
  the update (``optimizer.t`` is the step count, for schedules). Pruning
  masks (same keys as params, 0 = pruned) with ``minigpt.optim.apply_masks``,
  which keeps pruned weights, and AdamW's m and v for them, exactly 0::

      train(model, ds, tcfg,
            before_step=lambda grads: apply_masks(grads, masks),
            after_step=lambda params, opt: apply_masks(params, masks, opt))

  which is what ``train(..., masks=masks)`` does for you (the masks are
  then also saved in the checkpoints, and a resumed run keeps them).

Validation always reports cross-entropy (and bits per character), the
yardstick every method is compared by, whatever loss trains the model.
"""
from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from .progress import tqdm  # the bar that fits: text, or a widget in Jupyter with ipywidgets

from .checkpoint import Checkpoint, save_checkpoint
from .config import TrainConfig
from .data import Dataset
from .errors import TrainingDiverged
from .model import GPT
from .optim import AdamW, apply_masks, clip_grad_norm, lr_schedule
from .tokenizer import CharTokenizer


@dataclass
class TrainResult:
    step: int  # steps completed in total
    train_losses: list = field(default_factory=list)  # [(step, loss)]
    val_losses: list = field(default_factory=list)  # [(step, val loss)]
    interrupted: bool = False
    seconds: float = 0.0
    tokens_per_second: float = 0.0


EVAL_LOGITS = 2**25  # logits computed at once, at most (128 MB in float32); GPT-2's 50257-token
# vocabulary over a batch of 32 windows of 1024 would be 6.6 GB, so such a batch is run a few windows at a time


def evaluate(model: GPT, dataset: Dataset, split="val", batch_size=32, max_batches=None, progress=False) -> float:
    """Mean cross-entropy over consecutive windows of a split (deterministic).
    progress: a bar over the windows, shown once evaluation has taken 2 s."""
    from .progress import tqdm

    rows = max(1, EVAL_LOGITS // (dataset.block_size * model.config.vocab_size))  # windows a forward
    n = (len(dataset.train if split == "train" else dataset.val) - 1) // dataset.block_size
    n = n if max_batches is None else min(n, max_batches * batch_size)  # windows iter_eval_batches gives
    total, count = 0.0, 0
    with tqdm(total=n, desc="evaluating", unit="window", delay=2.0, disable=not progress, leave=False) as bar:
        for x, y in dataset.iter_eval_batches(split, batch_size, max_batches):
            for r in range(0, len(x), rows):
                total += model.loss(x[r:r + rows], y[r:r + rows]) * y[r:r + rows].size
                bar.update(len(x[r:r + rows]))
            count += y.size
    return total / count


def _eval_line(result: TrainResult, start_step: int, total: int, tokens_per_step: int, elapsed: float,
               unit: str) -> str:
    """One log line for the validation just measured: the training loss is the
    mean over the steps since the previous validation of this run."""
    step, val = result.val_losses[-1]
    since = result.val_losses[-2][0] if len(result.val_losses) > 1 else 0
    recent = [loss for s, loss in result.train_losses if s > max(since, start_step)]
    rate = (step - start_step) * tokens_per_step / elapsed if elapsed > 0 else 0.0
    return (f"step {step}/{total}: train loss {sum(recent) / len(recent):.4f}, val loss {val:.4f} "
            f"({val / math.log(2):.3f} bits/{unit}), {rate:,.0f} tokens/s, {elapsed:.1f} s")


class _StopFlag:
    """Turns the first Ctrl-C into "stop after this step"; a second one aborts."""

    def __init__(self):
        self.stop = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def cross_entropy_loss(model: GPT, x, y):
    """The default loss_fn: the model's mean cross-entropy of next tokens.
    dlogits None lets model.backward() start from that cross-entropy."""
    _, loss = model.forward(x, y)
    return loss, None


def _same(grads):
    return grads


@contextmanager
def _seen_weights(model: GPT, weight_transform):
    """Inside the block model.params is what weight_transform says the forward
    sees; yields grad_fn (identity without a transform). The parameters are
    put back however the block ends."""
    if weight_transform is None:
        yield _same
        return
    params = model.params
    seen, grad_fn = weight_transform(params)
    model.params = seen
    try:
        yield grad_fn
    finally:
        model.params = params


def _with_masks(masks, before_step, after_step):
    """The hooks wrapped so that masked gradients are 0 before before_step
    and masked weights and moments are 0 after after_step."""
    def before(grads):
        apply_masks(grads, masks)
        if before_step is not None:
            before_step(grads)

    def after(params, opt):
        if after_step is not None:
            after_step(params, opt)
        apply_masks(params, masks, opt)

    return before, after


def warm_up_kernels(model: GPT, verbose=True) -> float:
    """Compile (or load from numba's cache) the kernels model's backend uses,
    so that the training clock, tokens/s and the ETA never include it.
    Returns the seconds it took (0 for the NumPy backend)."""
    if model.backend != "numba":
        return 0.0
    from . import kernels

    if not hasattr(kernels, "warm_up"):  # older kernels package: they compile on first use instead
        return 0.0
    return kernels.warm_up(model.config.dtype, verbose=verbose)


def train(model: GPT, dataset: Dataset, tcfg: TrainConfig, out=None, resume: Checkpoint | None = None,
          progress=True, callback=None, extra_meta=None, log=None, *, loss_fn=cross_entropy_loss,
          weight_transform=None, before_step=None, after_step=None, masks=None) -> TrainResult:
    """Train model in place for tcfg.steps steps in total.

    out: checkpoint path, written every tcfg.checkpoint_every steps, at the
    end and on Ctrl-C. resume: a loaded Checkpoint to continue from (its
    model must be `model`). callback(step, loss) -> True stops after that step.
    log(line): called with one line per validation (step, mean training loss
    since the previous one, validation loss, tokens/s), e.g. print, for runs
    without a progress bar.
    loss_fn, weight_transform, before_step, after_step: how compression
    methods change a step (see the module docstring); by default none does.
    masks: pruning masks ({name: bool or 0/1 array}, 0 = pruned; default:
    resume.masks) held at exactly 0 with their AdamW moments, around any
    before_step/after_step given, and saved in every checkpoint.
    """
    opt = AdamW(model.params, lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2), eps=tcfg.eps,
                weight_decay=tcfg.weight_decay)
    data_rng = np.random.default_rng(tcfg.seed)
    result = TrainResult(step=0)
    if resume is not None:
        if resume.optimizer_state is not None:
            opt.load_state(resume.optimizer_state["arrays"], resume.optimizer_state["t"])
        if "data" in resume.rng_state:
            data_rng.bit_generator.state = resume.rng_state["data"]
        history = resume.meta.get("history") or {}
        result.train_losses = [tuple(x) for x in history.get("train", [])]
        result.val_losses = [tuple(x) for x in history.get("val", [])]
        result.step = resume.step
        masks = resume.masks if masks is None else masks
    if masks:
        apply_masks(model.params, masks, opt)  # masked from the first step on, moments included
        before_step, after_step = _with_masks(masks, before_step, after_step)
    saved = {"step": None}

    def save(step):
        if out is None:
            return
        meta = dict(extra_meta or {})
        meta["history"] = {"train": result.train_losses, "val": result.val_losses}
        save_checkpoint(out, model, step=step, optimizer=opt, train_config=tcfg,
                        rng_state={"data": data_rng.bit_generator.state}, extra=meta, masks=masks)
        saved["step"] = step

    tokens_per_step = tcfg.batch_size * dataset.block_size
    unit = "char" if isinstance(model.tokenizer, CharTokenizer) else "token"
    # kernel compilation happens here, before the clock starts and the bar is
    # drawn, so it counts in neither tokens/s nor the bar's rate and ETA
    warm_up_kernels(model, verbose=True)
    start_step, t0 = result.step, time.perf_counter()
    bar = tqdm(total=tcfg.steps, initial=start_step, disable=not progress, unit="step",
               dynamic_ncols=True, leave=True)
    model.training = True
    try:
        # overflow is caught below as a non-finite loss or gradient norm, with
        # a message naming the step, so numpy's own warnings would be noise
        with _StopFlag() as flag, np.errstate(over="ignore", invalid="ignore"):
            for step in range(start_step, tcfg.steps):
                lr = lr_schedule(step, tcfg.lr, tcfg.min_lr, tcfg.warmup_steps, tcfg.steps)
                x, y = dataset.get_batch("train", tcfg.batch_size, data_rng)  # (B, T)
                with _seen_weights(model, weight_transform) as grad_fn:
                    loss, dlogits = loss_fn(model, x, y)
                    loss = float(loss)
                    if not math.isfinite(loss):
                        kept = (f"; the last good checkpoint {out} (step {saved['step']}) was kept"
                                if saved["step"] is not None else "; no checkpoint was written")
                        raise TrainingDiverged(
                            f"loss became {loss} at step {step + 1} (try a lower --lr){kept}")
                    grads = grad_fn(model.backward(dlogits))  # dL/dparams
                if before_step is not None:
                    before_step(grads)
                norm = clip_grad_norm(grads, tcfg.grad_clip)
                if not math.isfinite(norm):
                    raise TrainingDiverged(f"gradient norm became {norm} at step {step + 1} (try a lower --lr)")
                opt.step(grads, lr)
                if after_step is not None:
                    after_step(model.params, opt)
                done = step + 1
                result.step = done
                result.train_losses.append((done, loss))
                elapsed = time.perf_counter() - t0
                postfix = {"loss": f"{loss:.3f}", "tok/s": f"{(done - start_step) * tokens_per_step / elapsed:,.0f}"}
                if done % tcfg.eval_every == 0 or done == tcfg.steps:
                    model.training = False
                    with _seen_weights(model, weight_transform):  # validate what the forward sees
                        val = evaluate(model, dataset, "val", tcfg.batch_size, tcfg.eval_batches)
                    model.training = True
                    result.val_losses.append((done, val))
                    if log is not None:
                        log(_eval_line(result, start_step, tcfg.steps, tokens_per_step, elapsed, unit))
                if result.val_losses:
                    postfix["val"] = f"{result.val_losses[-1][1]:.3f}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)
                if callback is not None and callback(done, loss):
                    flag.stop = True
                if flag.stop:
                    result.interrupted = True
                    break
                if done % tcfg.checkpoint_every == 0 and done != tcfg.steps:
                    save(done)
        save(result.step)
    finally:
        model.training = False
        bar.close()
    result.seconds = time.perf_counter() - t0
    steps_run = result.step - start_step
    result.tokens_per_second = steps_run * tokens_per_step / result.seconds if result.seconds else 0.0
    return result
