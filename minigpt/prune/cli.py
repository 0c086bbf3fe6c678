"""`minigpt prune CKPT --method M --sparsity S --out CKPT2`: prune a checkpoint,
optionally fine-tune it with its masks, and report what changed: validation
loss, weights alive per tensor kind, bytes on disk and generation speed,
each measured before and after.

Methods: magnitude (per tensor), global (one threshold), random, wanda,
gradual (Zhu & Gupta's cubic schedule during --finetune-steps), N:M such as
2:4, heads and neurons (structured: removed, so the matrices shrink).
--sparsity is the fraction of the prunable weights pruned in all (weights
a mask already prunes count), or for heads / neurons the fraction of all
heads / MLP neurons removed.

The output is a checkpoint of a new fine-tuning run: its masks
(mask.<name>), the fine-tuning step, optimizer state and settings, so
`minigpt train --resume CKPT2 --steps N` fine-tunes it further (or first,
after --finetune-steps 0) and keeps the pruned weights at 0.
"""
from __future__ import annotations

import math
import re
import sys
import time
from pathlib import Path

import numpy as np

from ..sampling import generation_speeds
from .masks import PruneError, alive_by_kind, apply, check_fraction, prunable_names, sparsity

METHODS = ("magnitude", "global", "random", "gradual", "wanda", "2:4", "heads", "neurons", "sensitivity")
PLANNED_FINETUNE_STEPS = 200  # the saved run's length when --finetune-steps is 0 (train --resume --steps changes it)


def register(sub):
    p = sub.add_parser("prune", help="prune a checkpoint (unstructured, N:M, heads or neurons) and report "
                                     "loss, weights alive, bytes and speed",
                       description=__doc__.split("\n\n")[0].replace("`", "") + " " + __doc__.split("\n\n")[1])
    p.add_argument("checkpoint", help="a .npz file written by minigpt train (or a pruned one: pruning adds to it)")
    p.add_argument("--method", required=True,
                   help="magnitude | global | random | gradual | wanda | N:M (e.g. 2:4) | heads | neurons | "
                        "sensitivity (each matrix's sparsity from a scan; needs --max-loss-increase)")
    p.add_argument("--sparsity", type=float,
                   help="fraction in [0, 1): of the prunable weights, or of the heads / neurons "
                        "(N:M fixes it at 1 - N/M; required otherwise)")
    p.add_argument("--max-loss-increase", type=float, metavar="D",
                   help="--method sensitivity: the largest rise of the loss (nats, on training windows) the "
                        "pruned model may show before fine-tuning")
    p.add_argument("--finetune-steps", type=int, default=0,
                   help="AdamW steps of fine-tuning with the masks afterwards; gradual prunes during them "
                        "(default: %(default)s)")
    p.add_argument("--lr", type=float,
                   help="fine-tuning peak learning rate (default: the checkpoint's min_lr x 3, warm-up then cosine)")
    p.add_argument("--embeddings", action="store_true",
                   help="prune wte and wpe too (magnitude, global, random, gradual; default: the blocks' "
                        "four linear matrices only)")
    p.add_argument("--calibration", type=int, default=32, metavar="N",
                   help="training windows for Wanda's activations and head / neuron importance (default: %(default)s)")
    p.add_argument("--calib-length", type=int, metavar="T",
                   help="tokens a calibration window (default: the model's block size, at most 256)")
    p.add_argument("--eval-batches", type=int, default=40,
                   help="validation batches of 32 windows, spread over the split (default: %(default)s)")
    p.add_argument("--eval-windows", type=int, metavar="N",
                   help="measure the loss on N validation windows spread over the split instead of --eval-batches "
                        "batches of 32 (GPT-2 small: 8 windows of 1024 tokens take a minute or two)")
    p.add_argument("--bench-tokens", type=int, default=100,
                   help="tokens generated (greedy, KV cache) to time generation: the median of 5 rounds, "
                        "before and after timed in turn (default: %(default)s)")
    p.add_argument("--sparse-storage", action="store_true",
                   help="store every pruned matrix that CSR makes smaller as CSR arrays (minigpt.prune.sparse); "
                        "the forward then runs the sparse kernel. Such matrices are frozen, so the output is "
                        "for inference (no optimizer state); keep a dense output to fine-tune")
    p.add_argument("--seed", type=int, default=0, help="random pruning, calibration and fine-tuning batches "
                                                       "(default: %(default)s)")
    p.add_argument("--text", metavar="FILE", help="corpus (default: the one the checkpoint was trained on)")
    p.add_argument("--out", required=True, metavar="CKPT2", help="where to write the pruned checkpoint")
    p.add_argument("--backend", help="kernels: numpy (the reference) | numba (default: numba)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while fine-tuning")
    p.set_defaults(func=cmd_prune)


def _validation(model, dataset, args):
    """Validation loss on --eval-windows windows, else on --eval-batches batches of 32."""
    from ..train import evaluate

    if getattr(args, "eval_windows", None):
        return evaluate(model, dataset, "val", args.eval_windows, 1, progress=True)
    return evaluate(model, dataset, "val", 32, args.eval_batches, progress=True)


def _check_args(args):
    from ..errors import MinigptError

    method = args.method
    if method not in METHODS and not re.fullmatch(r"\d+:\d+", method):
        raise MinigptError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)} (or any N:M)")
    if ":" in method:
        from .nm import parse_nm

        n, m = parse_nm(method)
        if args.sparsity is not None and not math.isclose(args.sparsity, 1 - n / m):
            raise PruneError(f"{method} fixes the sparsity at {1 - n / m:g}; leave out --sparsity {args.sparsity}")
    elif method == "sensitivity":
        if args.sparsity is not None:
            raise PruneError("--method sensitivity chooses each matrix's sparsity; give --max-loss-increase "
                             "instead of --sparsity")
        if args.max_loss_increase is None or not (args.max_loss_increase > 0 and math.isfinite(args.max_loss_increase)):
            raise PruneError(f"--method sensitivity needs --max-loss-increase D > 0 (nats), "
                             f"got {args.max_loss_increase}")
    elif args.sparsity is None:
        raise PruneError(f"--method {method} needs --sparsity (a fraction in [0, 1))")
    else:
        check_fraction(args.sparsity, "--sparsity")
    for name in ("finetune_steps",):
        if getattr(args, name) < 0:
            raise MinigptError(f"--finetune-steps must be >= 0, got {args.finetune_steps}")
    for name in ("calibration", "eval_batches", "bench_tokens", "calib_length", "eval_windows"):
        if getattr(args, name, 1) is not None and getattr(args, name, 1) <= 0:
            raise MinigptError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.lr is not None and not (args.lr > 0 and math.isfinite(args.lr)):
        raise MinigptError(f"--lr must be a positive number, got {args.lr}")
    if method == "gradual" and args.finetune_steps < 1:
        raise PruneError("--method gradual prunes while fine-tuning: give --finetune-steps (e.g. 300)")
    if args.sparse_storage and method in ("heads", "neurons"):
        raise PruneError(f"--sparse-storage stores zeros compactly; --method {method} leaves none (its matrices "
                         f"shrink instead)")
    if args.max_loss_increase is not None and method != "sensitivity":
        raise PruneError(f"--max-loss-increase is for --method sensitivity, not {method}")
    if args.embeddings and method not in ("magnitude", "global", "random", "gradual"):
        raise PruneError(f"--embeddings works with magnitude, global, random and gradual, not {method}")


CALIB_LENGTH = 256  # tokens a calibration window at most: GPT-2 small's block of 1024 would make
# Wanda's 32 windows and head importance's 32 backward passes four times as long


def _calibration(dataset, n, seed, length=None):
    """(x (n, T), [(x_i, y_i) (1, T)]): n training windows of T tokens (default: the
    block size, at most CALIB_LENGTH) drawn with seed, together and as batches of one sequence each."""
    from ..data import Dataset

    T = min(dataset.block_size, CALIB_LENGTH) if length is None else length
    if T > dataset.block_size:
        raise PruneError(f"--calib-length {T} is longer than the model's block size {dataset.block_size}")
    rng = np.random.default_rng(seed + 1)
    x, y = Dataset(dataset.train, dataset.val, T).get_batch("train", n, rng)
    return x, [(x[i:i + 1], y[i:i + 1]) for i in range(n)]


def _finetune_config(ckpt, args):
    from ..config import TrainConfig

    base = ckpt.train_config or TrainConfig()
    steps = args.finetune_steps or PLANNED_FINETUNE_STEPS
    lr = args.lr if args.lr is not None else 3 * base.min_lr
    return base.replace(steps=steps, lr=lr, min_lr=lr / 10, warmup_steps=min(steps // 10, 50), seed=args.seed,
                        eval_every=steps, checkpoint_every=steps)


def prune_model(model, method, sparsity_, masks, dataset, args):
    """(params, masks, what) for one method: params may be smaller (heads,
    neurons), masks the unstructured masks after pruning (None if none)."""
    from ..model import GPT
    from .magnitude import magnitude_masks, random_masks
    from .nm import nm_masks, parse_nm
    from .structured import head_importance, lowest, neuron_importance, remove_heads, remove_neurons
    from ..progress import tqdm
    from .wanda import wanda_masks

    P, cfg = model.params, model.config
    if method in ("heads", "neurons"):
        _, calib = _calibration(dataset, args.calibration, args.seed, getattr(args, "calib_length", None))
        score = head_importance if method == "heads" else neuron_importance
        calib = tqdm(calib, desc=f"{method[:-1]} importance", unit="window", delay=2.0, leave=False)
        chosen = lowest(score(model, calib), sparsity_)
        remove = remove_heads if method == "heads" else remove_neurons
        params = {k: v.copy() for k, v in remove(P, cfg, chosen).items()}  # fine-tuning must not touch P
        GPT(cfg, params=params)  # checks the shapes
        n = sum(len(v) for v in chosen.values())
        return params, (remove(masks, cfg, chosen) if masks else masks), f"removed {n} {method}"
    names = prunable_names(P, embeddings=args.embeddings)
    if not names:
        raise PruneError("this checkpoint has no float weight matrices to prune (a quantized model? "
                         "prune before quantizing)")
    if ":" in method:
        n, m = parse_nm(method)
        new = nm_masks(P, n, m, masks=masks)
    elif method == "magnitude":
        new = magnitude_masks(P, sparsity_, names, masks, of="all")
    elif method == "global":
        new = magnitude_masks(P, sparsity_, names, masks, "global", of="all")
    elif method == "random":
        new = random_masks(P, sparsity_, names, masks, seed=args.seed, of="all")
    elif method == "sensitivity":
        return _sensitivity(model, masks, dataset, args)
    elif method == "wanda":
        x, _ = _calibration(dataset, args.calibration, args.seed, getattr(args, "calib_length", None))
        new = wanda_masks(model, x, sparsity_, masks, names, of="all", progress=True)
    else:
        raise PruneError(f"unknown method {method!r}")
    return apply(P, new), new, f"{sparsity(new):.1%} of the pruned matrices are 0"


def _sensitivity(model, masks, dataset, args):
    """Scan each prunable matrix on its own, on training windows (the report's
    validation windows stay unseen), then meet --max-loss-increase."""
    from ..train import evaluate
    from .sensitivity import SCAN_SPARSITIES, sensitivity_masks, sensitivity_scan, total_sparsity

    if masks:
        raise PruneError("--method sensitivity starts from a dense model; this checkpoint is already pruned")
    probe = type(model)(model.config, params=dict(model.params), backend=model.backend)

    def loss(params):
        probe.params = params
        return evaluate(probe, dataset, "train", 32, args.eval_batches)

    dense = loss(model.params)
    scan = sensitivity_scan(model.params, loss, SCAN_SPARSITIES)
    new, per, rise = sensitivity_masks(model.params, loss, args.max_loss_increase, scan, SCAN_SPARSITIES, dense)
    s = total_sparsity(model.params, per)
    chosen = ", ".join(f"{n.replace('.weight', '')} {v:.0%}" for n, v in per.items())
    return apply(model.params, new), new, (f"{s:.1%} of the pruned matrices are 0 (training-window loss "
                                            f"{rise:+.4f}); per matrix: {chosen}")


def cmd_prune(args):
    from ..checkpoint import save_checkpoint
    from ..model import GPT, load_checkpoint
    from ..train import train

    _check_args(args)
    ckpt = load_checkpoint(args.checkpoint, backend=args.backend)
    model = ckpt.model
    from ..cli import _check_writable, checkpoint_dataset
    from ..compose import check_prunable, with_step

    check_prunable(args.checkpoint, model.params, ckpt.meta)  # one line on a quantized or CSR checkpoint

    dataset, source = checkpoint_dataset(ckpt, args.checkpoint, args.text)
    if (getattr(args, "calib_length", None) or 0) > model.config.block_size:  # before any evaluation
        raise PruneError(f"--calib-length {args.calib_length} is longer than the model's block size "
                         f"{model.config.block_size}")

    _check_writable(args.out)
    method = args.method
    if ":" in method:
        from .nm import parse_nm

        n, m = parse_nm(method)
        s = 1 - n / m
    else:
        s = args.sparsity
    before = {"loss": _validation(model, dataset, args),
              "alive": alive_by_kind(model.params, ckpt.masks),
              "bytes": Path(args.checkpoint).stat().st_size, "params": param_bytes(model.params, ckpt.masks)}
    t0 = time.perf_counter()
    masks = ckpt.masks
    if method == "gradual":
        params, masks, what = {k: v.copy() for k, v in model.params.items()}, masks, "gradual"
    else:
        params, masks, what = prune_model(model, method, s, masks, dataset, args)
    pruned = GPT(model.config, params=params, backend=args.backend, tokenizer=model.tokenizer)
    oneshot = _validation(pruned, dataset, args) if method != "gradual" else None
    tcfg = _finetune_config(ckpt, args)
    meta = {"corpus": source, "pruned": {"from": str(args.checkpoint), "method": method, "sparsity": s,
                                          "finetune_steps": args.finetune_steps},
            "provenance": with_step(ckpt.meta, ckpt.step, _step_line(args, s))}
    if args.finetune_steps:
        hooks = {}
        if method == "gradual":
            from .schedule import GradualPruning

            n = min(10, args.finetune_steps)  # prunings after steps dt, 2 dt, ..., n dt
            dt = max(1, int(0.75 * args.finetune_steps) // n)  # the last quarter recovers at s_f
            gp = GradualPruning(pruned.params, s, t0=0, n=n, dt=dt, embeddings=args.embeddings)
            gp.masks.update(masks or {})  # a pruned checkpoint's masks: pruning adds to them
            masks, hooks = gp.masks, gp.hooks()
            what = f"cubic schedule to {s:.1%} by step {n * dt}"
        print(f"minigpt: fine-tuning {args.finetune_steps} steps at lr {tcfg.lr:g} with the masks", file=sys.stderr)
        train(pruned, dataset, tcfg, out=args.out, progress=not args.no_progress, extra_meta=meta, masks=masks,
              **hooks)
    else:
        # step 0 of a fine-tuning run that `train --resume` can start, with no optimizer state: AdamW's
        # moments would all be 0 and make the file three times the model (1.5 GB at GPT-2 small)
        rng = np.random.default_rng(tcfg.seed)
        save_checkpoint(args.out, pruned, step=0, train_config=tcfg,
                        rng_state={"data": rng.bit_generator.state}, extra={**meta, "history": {}}, masks=masks)
    alive = alive_by_kind(pruned.params, masks)  # before CSR storage hides the dense weights
    if args.sparse_storage:
        pruned, masks = _store_sparse(pruned, masks, tcfg, meta, args.out)
        what += "; " + _sparse_note(pruned)
    seconds = time.perf_counter() - t0
    same = oneshot is not None and not args.finetune_steps and not args.sparse_storage  # the model just measured
    after = {"loss": oneshot if same else _validation(pruned, dataset, args), "alive": alive,
             "bytes": Path(args.out).stat().st_size, "params": param_bytes(pruned.params, masks)}
    before["tok/s"], after["tok/s"] = generation_speeds([model, pruned], args.bench_tokens)
    _report(args, what, before, oneshot, after, seconds)
    return 0


def _step_line(args, s) -> str:
    """This command as one provenance line (minigpt.compose)."""
    amount = f"{s:.0%}" if s is not None else f"within {args.max_loss_increase:g} nats"
    line = f"prune {args.method} {amount}" + (" with embeddings" if args.embeddings else "")
    line += f" from {args.checkpoint}"
    if args.finetune_steps:
        line += f", fine-tuned {args.finetune_steps} steps with masks"
    return line + (", stored CSR" if args.sparse_storage else "")


def _store_sparse(model, masks, tcfg, meta, out):
    """Rewrite out with the model's sparse-enough matrices as CSR arrays and
    return (that model, the masks still stored): a CSR matrix's pattern is
    its mask, the other matrices keep theirs."""
    from ..checkpoint import save_checkpoint
    from ..model import GPT
    from .sparse import sparse_names, to_sparse

    params = to_sparse(model.params)
    stored = set(sparse_names(params))
    sparse = GPT(model.config, params=params, backend=model.backend, tokenizer=model.tokenizer)
    kept = {k: v for k, v in (masks or {}).items() if k not in stored}
    save_checkpoint(out, sparse, step=0, train_config=tcfg, extra={**meta, "sparse_storage": sorted(stored)},
                    masks=kept or None)
    return sparse, kept


def _sparse_note(model) -> str:
    from .sparse import sparse_names

    n = len(sparse_names(model.params))
    return f"{n} matri{'x' if n == 1 else 'ces'} stored as CSR (frozen: an inference checkpoint)"


def param_bytes(params: dict, masks=None) -> int:
    """Bytes of the parameter arrays (and of the masks, 1 bit a weight packed),
    without the optimizer state a training checkpoint also holds."""
    return sum(a.nbytes for a in params.values()) + sum(-(-m.size // 8) for m in (masks or {}).values())


def _report(args, what, before, oneshot, after, seconds):
    print(f"pruned {args.checkpoint} with {args.method}: {what} ({seconds:.1f} s)")
    counts = [f"{a:,}/{n:,}" for d in (before, after) for a, n in d["alive"].values()]
    w = max(14, *(len(c) + 2 for c in counts), *(len(f"{d['bytes']:,}") + 2 for d in (before, after)))  # GPT-2: wider
    print(f"{'':<24}{'before':>{w}}{'after':>{w}}")
    if oneshot is not None and args.finetune_steps:
        rise = oneshot - before['loss']
        print(f"{'val loss, one-shot':<24}{before['loss']:>{w}.4f}{oneshot:>{w}.4f}   ({rise:+.4f})")
    label = f"val loss, fine-tuned {args.finetune_steps}" if args.finetune_steps else "val loss"
    print(f"{label:<24}{before['loss']:>{w}.4f}{after['loss']:>{w}.4f}   ({after['loss'] - before['loss']:+.4f})")
    for kind in sorted(set(before["alive"]) | set(after["alive"])):
        a0, n0 = before["alive"].get(kind, (0, 0))
        a1, n1 = after["alive"].get(kind, (0, 0))
        print(f"{'alive ' + kind:<24}{f'{a0:,}/{n0:,}':>{w}}{f'{a1:,}/{n1:,}':>{w}}   "
              f"({a1 / max(n0, 1):.1%} of before)")
    print(f"{'parameter bytes':<24}{before['params']:>{w},}{after['params']:>{w},}   "
          f"(x{after['params'] / before['params']:.2f}; with masks, 1 bit a weight)")
    print(f"{'bytes on disk':<24}{before['bytes']:>{w},}{after['bytes']:>{w},}   "
          f"(x{after['bytes'] / before['bytes']:.2f}; a training checkpoint also holds AdamW's m and v)")
    print(f"{'generation tokens/s':<24}{before['tok/s']:>{w},.0f}{after['tok/s']:>{w},.0f}   "
          f"(x{after['tok/s'] / before['tok/s']:.2f})")
    print(f"wrote {args.out}")
