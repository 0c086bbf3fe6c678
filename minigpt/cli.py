"""The ``minigpt`` command: train, sample, eval.

User errors (bad files, impossible configs, unknown characters, a diverged
run) print one line, ``minigpt: error: ...``, and exit with status 2.
"""
from __future__ import annotations

import argparse
import math
import sys

from .errors import MinigptError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        self.exit(EXIT_USER_ERROR, f"minigpt: error: {message} (see --help)\n")


def _preset_default(name, section="train"):
    """ "(default: ...)" for a preset setting: one value, or each preset's."""
    from .config import PRESETS, GPTConfig, TrainConfig

    cls = TrainConfig if section == "train" else GPTConfig
    values = {p: d[section].get(name, getattr(cls, name)) for p, d in PRESETS.items()}
    if len(set(values.values())) == 1:
        return f"(default: {next(iter(values.values()))})"
    return "(default: the preset's: " + ", ".join(f"{p} {v}" for p, v in values.items()) + ")"


def _shape_default(name):
    return _preset_default(name, "model")


BACKEND_HELP = "kernels: numpy (the reference) | numba (default: numba)"


THREADED_COMMANDS = ("train", "sample", "eval", "bench", "tour")  # the tour's chapters inherit it (environment)


def add_threads_option(p):
    """--threads N: one budget for numba's kernels and BLAS (applied in main())."""
    p.add_argument("--threads", type=int, metavar="N",
                   help="threads for numba's kernels and for BLAS together (default: each library's own, all cores)")


def _apply_threads(n):
    if n is None:
        return
    from .kernels.threads import max_threads, set_threads  # loads numba: only when asked

    if not 1 <= n <= max_threads():
        raise MinigptError(f"--threads must be between 1 and {max_threads()} (this machine's numba pool), got {n}")
    set_threads(n)


def _add_train(sub):
    p = sub.add_parser("train", help="train a model (default: the tiny preset on the embedded corpus)",
                       description="Train a GPT on the embedded Python-stdlib corpus or on --text FILE. "
                                   "Ctrl-C saves a checkpoint and exits (status 130); --resume continues "
                                   "exactly, with the checkpoint's own model: shape options must agree "
                                   "with it, training options (--steps, --lr, ...) may change.")
    p.add_argument("--preset", help="tiny | small | base (default: tiny)")
    p.add_argument("--text", metavar="FILE",
                   help="train on this UTF-8 file (default: the embedded corpus, or on --resume the checkpoint's)")
    p.add_argument("--out", metavar="CKPT", help="checkpoint path (default: PRESET.npz, or the --resume file)")
    p.add_argument("--resume", metavar="CKPT", help="continue a run from its checkpoint (default: start a new run)")
    p.add_argument("--steps", type=int, help="total optimisation steps " + _preset_default("steps"))
    p.add_argument("--batch-size", type=int, help="sequences per step " + _preset_default("batch_size"))
    p.add_argument("--lr", type=float, help="peak learning rate " + _preset_default("lr"))
    p.add_argument("--min-lr", type=float, help="final learning rate of the cosine decay " + _preset_default("min_lr"))
    p.add_argument("--warmup-steps", type=int, help="steps of linear warm-up " + _preset_default("warmup_steps"))
    p.add_argument("--weight-decay", type=float,
                   help="AdamW's decoupled weight decay, on matrices and embeddings only "
                        + _preset_default("weight_decay"))
    p.add_argument("--grad-clip", type=float,
                   help="max global gradient norm, 0: no clipping " + _preset_default("grad_clip"))
    p.add_argument("--eval-every", type=int, help="validation every N steps " + _preset_default("eval_every"))
    p.add_argument("--checkpoint-every", type=int, help="checkpoint every N steps "
                   + _preset_default("checkpoint_every"))
    p.add_argument("--seed", type=int, help="seed for initialisation, batches and dropout " + _preset_default("seed"))
    g = p.add_argument_group("model shape (overrides the preset; with --resume, must match the checkpoint)")
    g.add_argument("--block-size", type=int, help="longest context, in tokens " + _shape_default("block_size"))
    g.add_argument("--n-layer", type=int, help="transformer blocks " + _shape_default("n_layer"))
    g.add_argument("--n-head", type=int, help="attention heads per block " + _shape_default("n_head"))
    g.add_argument("--n-embd", type=int, help="model width C " + _shape_default("n_embd"))
    g.add_argument("--dropout", type=float, help="drop probability while training " + _shape_default("dropout"))
    g.add_argument("--dtype", choices=["float32", "float64"], help="float32 | float64 (default: float32)")
    p.add_argument("--backend", help=BACKEND_HELP)
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar: print one line per validation instead (for logs)")
    p.add_argument("--qat", action="store_true",
                   help="with --resume QCKPT from minigpt quantize: quantization-aware fine-tuning of its integer "
                        "weights (default: 200 steps at a tenth of the run's lr), saved quantized the same way")
    p.set_defaults(func=cmd_train)


def _add_sample(sub):
    p = sub.add_parser("sample", help="generate text from a checkpoint",
                       description="Generate text. --temperature 0 is greedy decoding.")
    p.add_argument("checkpoint", help="a .npz file written by minigpt train or import-hf")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--tokens", type=int, default=300,
                   help="how many tokens to generate, characters for a character-level model (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="divides the logits; 0 is greedy decoding (default: %(default)s)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens only (default: all tokens)")
    p.add_argument("--top-p", type=float,
                   help="sample among the fewest most likely tokens whose probability reaches p "
                        "(default: 1, all tokens)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampler (default: %(default)s)")
    p.add_argument("--no-kv-cache", action="store_true", help="recompute the whole context every token")
    p.add_argument("--backend", help=BACKEND_HELP)
    p.set_defaults(func=cmd_sample)


def _add_eval(sub):
    p = sub.add_parser("eval", help="validation loss and bits per character of a checkpoint",
                       description="Mean cross-entropy over consecutive windows of the validation split "
                                   "(the last 10% of the corpus the model was trained on, or of --text).")
    p.add_argument("checkpoint", help="a .npz file written by minigpt train or import-hf")
    p.add_argument("--text", metavar="FILE",
                   help="evaluate on this file (default: the corpus the model was trained on)")
    p.add_argument("--split", choices=["val", "train"], default="val",
                   help="val: the last 10%%, train: the rest (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="windows per batch (default: %(default)s)")
    p.add_argument("--max-batches", type=int, help="stop after this many batches (default: the whole split)")
    p.add_argument("--bench-tokens", type=int, metavar="N",
                   help="also time greedy generation of N tokens with the KV cache, the median of 5 rounds "
                        "(default: no timing)")
    p.add_argument("--backend", help=BACKEND_HELP)
    p.set_defaults(func=cmd_eval)


def build_parser():
    parser = _Parser(prog="minigpt", description="A GPT-2 in NumPy with hand-written backward passes.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub)
    _add_sample(sub)
    _add_eval(sub)
    from . import tour

    tour.register(sub)
    from . import hf

    hf.add_export_hf(sub)
    hf.add_import_hf(sub)
    __import__("minigpt.quant.cli").quant.cli.register(sub)  # minigpt quantize
    __import__("minigpt.bench").bench.register(sub)  # minigpt bench (imported here: numba loads lazily)
    __import__("minigpt.prune.cli").prune.cli.register(sub)  # minigpt prune
    __import__("minigpt.distill.cli").distill.cli.register(sub)  # minigpt distill
    for name in THREADED_COMMANDS:  # (added here: the tour's and bench's modules need not import this one)
        add_threads_option(sub.choices[name])
    __import__("minigpt.classroom.cli").classroom.cli.register(sub)  # minigpt assignment
    return parser


def _positive(name, value):
    if value is not None and value <= 0:
        raise MinigptError(f"{name} must be positive, got {value}")


def _check_writable(path):
    """Raise MinigptError unless a checkpoint can be written at path."""
    import os
    import tempfile
    from pathlib import Path

    parent = Path(path).resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".minigpt-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise MinigptError(f"cannot write the checkpoint {path}: {e.strerror or e}") from None
    if Path(path).is_dir():
        raise MinigptError(f"--out {path} is a directory; give a file name such as {Path(path) / 'model.npz'}")


_SHAPE_OPTIONS = ("block_size", "n_layer", "n_head", "n_embd", "dropout", "dtype")
_TRAIN_OPTIONS = ("steps", "batch_size", "lr", "min_lr", "warmup_steps", "weight_decay", "grad_clip",
                  "eval_every", "checkpoint_every")


def _flag(name):
    return "--" + name.replace("_", "-")


def _resume_conflicts(args, ckpt) -> list[str]:
    """The options that ask for another model than the checkpoint's (a resumed
    run keeps its model, so each one is an error rather than silently ignored)."""
    from .config import PRESETS

    cfg, conflicts = ckpt.model.config, []
    if args.preset is not None:
        wants = PRESETS.get(args.preset, {}).get("model")
        if wants is None:
            conflicts.append(f"--preset {args.preset} (no such preset)")
        else:
            differ = [f"{k} {v}" for k, v in wants.items() if getattr(cfg, k) != v]
            if differ:
                conflicts.append(f"--preset {args.preset} ({', '.join(differ)})")
    for name in _SHAPE_OPTIONS:
        value = getattr(args, name)
        if value is not None and value != getattr(cfg, name):
            conflicts.append(f"{_flag(name)} {value} (the checkpoint has {getattr(cfg, name)})")
    seed = ckpt.train_config.seed
    if args.seed is not None and args.seed != seed:  # the checkpoint carries its RNG states
        conflicts.append(f"--seed {args.seed} (the checkpoint's run has seed {seed})")
    return conflicts


def _resume(args):
    """(checkpoint, its training config with the allowed changes applied)."""
    from . import load_checkpoint  # package level: minigpt.checkpoint or minigpt.model
    from .compose import why_not_resumable

    ckpt = load_checkpoint(args.resume, backend=args.backend)
    if ckpt.optimizer_state is None and why_not_resumable(args.resume, ckpt.model.params):
        raise MinigptError(why_not_resumable(args.resume, ckpt.model.params))
    # a run's step 0 (a one-shot pruned checkpoint) may come without optimizer state: AdamW starts fresh
    if ckpt.train_config is None or (ckpt.optimizer_state is None and ckpt.step != 0):
        raise MinigptError(f"{args.resume} holds no training state to resume from")
    conflicts = _resume_conflicts(args, ckpt)
    if conflicts:
        raise MinigptError(f"--resume {args.resume} continues the checkpoint's own model; these options "
                           f"disagree with it: {'; '.join(conflicts)}")
    old = ckpt.train_config
    changes = {k: getattr(args, k) for k in _TRAIN_OPTIONS
               if getattr(args, k) is not None and getattr(args, k) != getattr(old, k)}
    tcfg = old.replace(**changes)
    report = [f"{_flag(k)} {getattr(old, k)} -> {v}" for k, v in changes.items()]
    corpus = ckpt.meta.get("corpus")
    if args.text and args.text != corpus:
        report.append(f"corpus {corpus or 'embedded'} -> {args.text}")
    print(f"minigpt: resuming {args.resume} at step {ckpt.step}"
          + (f"; changed: {', '.join(report)}" if report else ""), file=sys.stderr)
    return ckpt, tcfg


def _unit(tokenizer):
    from .tokenizer import CharTokenizer

    return "char" if isinstance(tokenizer, CharTokenizer) else "token"


def _summary(result, unit) -> str:
    """The closing line: only numbers that were measured (no validation yet: none)."""
    state = "interrupted at" if result.interrupted else "finished"
    parts = [f"train loss {result.train_losses[-1][1]:.4f}"] if result.train_losses else []
    if result.val_losses:
        step, val = result.val_losses[-1]
        at = "" if step == result.step else f" at step {step}"
        parts.append(f"val loss {val:.4f} ({val / math.log(2):.3f} bits/{unit}){at}")
    else:
        parts.append("no validation yet")
    parts.append(f"{result.tokens_per_second:,.0f} tokens/s, {result.seconds:.1f} s")
    return f"{state} step {result.step}: {', '.join(parts)}"


def cmd_train(args):
    from .config import preset
    from .data import Dataset, load_corpus
    from .model import GPT
    from .tokenizer import CharTokenizer
    from .train import train

    if args.qat:  # a quantized checkpoint's fine-tune (minigpt.quant.cli)
        return __import__("minigpt.quant.cli").quant.cli.cmd_train_qat(args)
    if args.resume:
        ckpt, tcfg = _resume(args)
        model = ckpt.model
        text, source = load_corpus(args.text or ckpt.meta.get("corpus"))
        tokenizer = model.tokenizer
        out = args.out or args.resume
    else:
        ckpt = None
        text, source = load_corpus(args.text)
        tokenizer = CharTokenizer.from_text(text)
        overrides = {k: getattr(args, k) for k in (*_SHAPE_OPTIONS, *_TRAIN_OPTIONS, "seed")}
        cfg, tcfg = preset(args.preset or "tiny", tokenizer.vocab_size, **overrides)
        model = GPT(cfg, seed=tcfg.seed, backend=args.backend, tokenizer=tokenizer)
        out = args.out or f"{args.preset or 'tiny'}.npz"
    _check_writable(out)  # fail now, not after minutes of training
    dataset = Dataset.from_text(text, tokenizer, model.config.block_size)
    if ckpt is not None and ckpt.step >= tcfg.steps:
        raise MinigptError(f"{args.resume} is already at step {ckpt.step} of {tcfg.steps}; pass a larger --steps")
    c = model.config
    print(f"minigpt: {model.num_params():,} parameters ({c.n_layer} layers, {c.n_head} heads, "
          f"{c.n_embd} wide, block {c.block_size}, vocab {c.vocab_size}), corpus {source} "
          f"({len(text):,} chars), backend {model.backend}", file=sys.stderr)
    log = (lambda line: print(line, flush=True)) if args.no_progress else None
    meta = {"corpus": source}
    if ckpt is not None and ckpt.meta.get("provenance"):  # a distilled / pruned model fine-tuned further
        from .compose import with_step

        meta["provenance"] = with_step(ckpt.meta, ckpt.step, f"train --resume {args.resume} to step {tcfg.steps}")
    result = train(model, dataset, tcfg, out=out, resume=ckpt, progress=not args.no_progress, log=log,
                   extra_meta=meta)
    print(f"{_summary(result, _unit(tokenizer))}; wrote {out}")
    if result.interrupted:  # Ctrl-C: saved, but the run did not finish, as the shell's 128 + SIGINT says
        print("minigpt: interrupted; continue with minigpt train --resume " + str(out), file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def cmd_sample(args):
    from . import load_checkpoint  # package level: minigpt.checkpoint or minigpt.model

    _positive("--tokens", args.tokens)
    model = load_checkpoint(args.checkpoint, backend=args.backend).model
    if model.tokenizer is None:
        raise MinigptError(f"{args.checkpoint} has no vocabulary, so text cannot be encoded")
    text = model.generate_text(args.prompt, args.tokens, temperature=args.temperature, top_k=args.top_k,
                               top_p=args.top_p, seed=args.seed, use_kv_cache=not args.no_kv_cache, progress=True)
    sys.stdout.write(text + ("" if text.endswith("\n") else "\n"))
    return 0


def checkpoint_dataset(ckpt, path, text=None):
    """(Dataset, source): the corpus the checkpoint was trained on (or the file
    `text`), encoded with its tokenizer in windows of its block size. What
    eval, prune, quantize and distill all evaluate on."""
    from .data import Dataset, load_corpus

    model = ckpt.model
    if model.tokenizer is None:
        raise MinigptError(f"{path} has no vocabulary, so text cannot be encoded")
    corpus, source = load_corpus(text or ckpt.meta.get("corpus"))
    return Dataset.from_text(corpus, model.tokenizer, model.config.block_size), source


def cmd_eval(args):
    from . import load_checkpoint  # package level: minigpt.checkpoint or minigpt.model
    from .train import evaluate

    _positive("--batch-size", args.batch_size)
    _positive("--max-batches", args.max_batches)
    _positive("--bench-tokens", args.bench_tokens)
    ckpt = load_checkpoint(args.checkpoint, backend=args.backend)
    model = ckpt.model
    dataset, source = checkpoint_dataset(ckpt, args.checkpoint, args.text)
    loss = evaluate(model, dataset, args.split, args.batch_size, args.max_batches)
    unit = _unit(model.tokenizer)
    print(f"{args.split} loss {loss:.4f}  bits/{unit} {loss / math.log(2):.4f}  "
          f"(step {ckpt.step}, corpus {source})")
    from pathlib import Path

    from .compose import describe_lineage, stored_as

    line = (f"{model.num_params():,} parameters stored as {stored_as(model.params)}, "
            f"{Path(args.checkpoint).stat().st_size:,} bytes on disk")
    if args.bench_tokens:
        from .sampling import generation_speeds

        speed = generation_speeds([model], args.bench_tokens)[0]
        line += f", {speed:,.0f} tokens/s (greedy with the KV cache, {args.bench_tokens} tokens, median of 5)"
    print(line)
    print(f"made by: {describe_lineage(ckpt.meta, ckpt.step)}")
    return 0


def main(argv=None):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2): return, don't raise
        return e.code
    try:
        _apply_threads(getattr(args, "threads", None))
        return args.func(args)
    except MinigptError as e:
        print(f"minigpt: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:  # the file system refused (full disk, permissions): the user's to fix
        print(f"minigpt: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("minigpt: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
