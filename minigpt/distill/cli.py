"""`minigpt distill TEACHER --n-layer L --n-embd C --n-head H --out STUDENT`:
train a smaller student on a teacher's soft targets and report what it
costs and saves: validation loss, parameters, bytes and generation speed of
teacher and student.

The student shares the teacher's tokenizer and context. --init teacher (the
default) starts it from the teacher where the shapes allow (every other
block, embeddings, final LayerNorm, a width slice when narrower), --init
random from GPT-2's initialisation. The loss is alpha T^2 KL(teacher || student
at temperature T) + (1 - alpha) cross-entropy (plus, with --hidden, a term
matching block outputs), trained by the shared loop
(progress bar, validation, checkpoints, Ctrl-C). The output is a training
checkpoint of the student, so `minigpt train --resume STUDENT` continues it
(on cross-entropy) and sample / eval accept it.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from .errors import DistillError
from .student import INITS

DEFAULT_STEPS = 500


def register(sub):
    p = sub.add_parser("distill", help="train a smaller student on a teacher's soft targets and report loss, "
                                       "parameters, bytes and speed of both",
                       description=(__doc__.split("\n\n")[0] + " " + __doc__.split("\n\n")[1]).replace("`", ""))
    p.add_argument("teacher", help="a .npz file written by minigpt train (the teacher)")
    p.add_argument("--n-layer", type=int, required=True, help="the student's blocks")
    p.add_argument("--n-embd", type=int, required=True, help="the student's width")
    p.add_argument("--n-head", type=int, required=True, help="the student's attention heads (must divide --n-embd)")
    p.add_argument("--init", default="teacher",
                   help="teacher: start from the teacher's weights where shapes allow | random "
                        "(default: %(default)s)")
    p.add_argument("--temperature", type=float, default=2.0, help="T > 0 of the soft targets (default: %(default)s; in chapter 8, T = 1 served a "
                        "small student on a short run better than 2 or 4)")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="weight in [0, 1] of the soft-target term; 1 - alpha weighs cross-entropy on the "
                        "text (default: %(default)s)")
    p.add_argument("--reverse-kl", action="store_true", help="KL(student || teacher) instead of KL(teacher || student)")
    p.add_argument("--hidden", metavar="LAYERS",
                   help="also match hidden states: 'all' (each student block to the last teacher block it stands "
                        "for) or student:teacher block pairs such as 0:1,1:3; cosine when the widths are equal, "
                        "else MSE through a learned projection")
    p.add_argument("--hidden-weight", type=float, default=1.0,
                   help="weight of the hidden-state term (default: %(default)s)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="AdamW steps (default: %(default)s)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the teacher's run's)")
    p.add_argument("--batch-size", type=int, help="windows per step (default: the teacher's run's)")
    p.add_argument("--eval-batches", type=int, default=40,
                   help="validation batches of 32 windows for the report (default: %(default)s)")
    p.add_argument("--bench-tokens", type=int, default=100,
                   help="tokens generated (greedy, KV cache) to time generation, median of 5 rounds "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random init and batches (default: %(default)s)")
    p.add_argument("--text", metavar="FILE", help="corpus (default: the one the teacher was trained on)")
    p.add_argument("--out", required=True, metavar="STUDENT", help="where to write the student's checkpoint")
    p.add_argument("--backend", help="kernels: numpy (the reference) | numba (default: numba)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_distill)


def _check_args(args):
    from .loss import check_distill_args

    check_distill_args(args.temperature, args.alpha)
    if args.init not in INITS:
        raise DistillError(f"unknown --init {args.init!r}; choose one of {', '.join(INITS)}")
    for name in ("n_layer", "n_embd", "n_head", "steps", "eval_batches", "bench_tokens"):
        if getattr(args, name) <= 0:
            raise DistillError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.batch_size is not None and args.batch_size <= 0:
        raise DistillError(f"--batch-size must be positive, got {args.batch_size}")
    if not (args.hidden_weight >= 0 and math.isfinite(args.hidden_weight)):
        raise DistillError(f"--hidden-weight must be a number >= 0, got {args.hidden_weight}")
    if args.lr is not None and not (args.lr > 0 and math.isfinite(args.lr)):
        raise DistillError(f"--lr must be a positive number, got {args.lr}")


def _train_config(ckpt, args):
    from ..config import TrainConfig

    base = ckpt.train_config or TrainConfig()
    lr = args.lr if args.lr is not None else base.lr
    return base.replace(steps=args.steps, lr=lr, min_lr=min(base.min_lr, lr / 10),
                        warmup_steps=min(base.warmup_steps, args.steps // 10),
                        batch_size=args.batch_size or base.batch_size, seed=args.seed,
                        eval_every=max(1, args.steps // 5), checkpoint_every=args.steps)


def cmd_distill(args):
    from ..cli import _check_writable, checkpoint_dataset
    from ..compose import with_step
    from ..model import load_checkpoint
    from ..prune.cli import param_bytes
    from ..sampling import generation_speeds
    from ..train import evaluate
    from .student import make_student, summarize
    from .train import distill

    _check_args(args)
    ckpt = load_checkpoint(args.teacher, backend=args.backend)
    teacher = ckpt.model
    dataset, source = checkpoint_dataset(ckpt, args.teacher, args.text)
    _check_writable(args.out)
    student, report = make_student(teacher, args.n_layer, args.n_embd, args.n_head, args.init, args.seed,
                                   backend=args.backend)
    hidden = None
    if args.hidden is not None:
        from .hidden import HiddenMatch, parse_pairs

        pairs = parse_pairs(args.hidden, student.config.n_layer, teacher.config.n_layer)
        hidden = HiddenMatch(pairs, student.config.n_embd, teacher.config.n_embd, args.hidden_weight, seed=args.seed)
    tcfg = _train_config(ckpt, args)
    meta = {"corpus": source, "distilled": {"teacher": str(args.teacher), "init": args.init,
                                            "temperature": args.temperature, "alpha": args.alpha,
                                            "reverse_kl": args.reverse_kl, "steps": args.steps,
                                            "hidden": None if hidden is None else
                                            {"pairs": {str(k): v for k, v in hidden.pairs.items()},
                                             "kind": hidden.kind, "weight": hidden.weight}},
            "provenance": with_step(ckpt.meta, ckpt.step, f"distill {args.n_layer} x {args.n_embd} x {args.n_head} "
                                                          f"heads from {args.teacher} ({args.steps} steps, init "
                                                          f"{args.init}, T {args.temperature:g}, alpha {args.alpha:g})")}
    print(f"minigpt: distilling into {args.n_layer} block{'s' * (args.n_layer != 1)} x {args.n_embd} wide x "
          f"{args.n_head} head{'s' * (args.n_head != 1)} "
          f"(init {args.init}: {summarize(report)}), T {args.temperature:g}, alpha {args.alpha:g}, "
          f"{args.steps} steps at lr {tcfg.lr:g}", file=sys.stderr)
    t0 = time.perf_counter()
    result = distill(student, teacher, dataset, tcfg, args.temperature, args.alpha, args.reverse_kl,
                     hidden=hidden, out=args.out, progress=not args.no_progress, extra_meta=meta)
    seconds = time.perf_counter() - t0
    rows = {"val loss": [evaluate(m, dataset, "val", 32, args.eval_batches) for m in (teacher, student)],
            "parameters": [teacher.num_params(), student.num_params()],
            "parameter bytes": [param_bytes(teacher.params), param_bytes(student.params)],
            "bytes on disk": [Path(args.teacher).stat().st_size, Path(args.out).stat().st_size],
            "generation tokens/s": generation_speeds([teacher, student], args.bench_tokens)}
    _report(args, rows, result, seconds)
    return 0


def _report(args, rows, result, seconds):
    stopped = " (interrupted)" if result.interrupted else ""
    print(f"distilled {args.teacher} into a student in {result.step} steps{stopped} ({seconds:.1f} s)")
    print(f"{'':<22}{'teacher':>14}{'student':>14}")
    t, s = rows["val loss"]
    print(f"{'val loss':<22}{t:>14.4f}{s:>14.4f}   ({s - t:+.4f})")
    for name in ("parameters", "parameter bytes", "bytes on disk", "generation tokens/s"):
        t, s = rows[name]
        note = "; a training checkpoint also holds AdamW's m and v" if name == "bytes on disk" else ""
        print(f"{name:<22}{t:>14,.0f}{s:>14,.0f}   (x{s / t:.2f}{note})")
    print(f"wrote {args.out}")
