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


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        self.exit(EXIT_USER_ERROR, f"minigpt: error: {message} (see --help)\n")


def _add_train(sub):
    p = sub.add_parser("train", help="train a model (default: the tiny preset on the embedded corpus)",
                       description="Train a GPT on the embedded Python-stdlib corpus or on --text FILE. "
                                   "Ctrl-C saves a checkpoint and exits; --resume continues exactly.")
    p.add_argument("--preset", default="tiny", help="tiny | small | base (default: tiny)")
    p.add_argument("--text", metavar="FILE", help="train on this UTF-8 file instead of the embedded corpus")
    p.add_argument("--out", metavar="CKPT", help="checkpoint path (default: PRESET.npz, or the --resume file)")
    p.add_argument("--resume", metavar="CKPT", help="continue a run from its checkpoint")
    p.add_argument("--steps", type=int, help="total optimisation steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--min-lr", type=float, help="final learning rate of the cosine decay")
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--grad-clip", type=float, help="max global gradient norm (0: no clipping)")
    p.add_argument("--eval-every", type=int, help="validation every N steps")
    p.add_argument("--checkpoint-every", type=int, help="checkpoint every N steps")
    p.add_argument("--seed", type=int, help="seed for initialisation, batches and dropout")
    g = p.add_argument_group("model shape (overrides the preset)")
    g.add_argument("--block-size", type=int)
    g.add_argument("--n-layer", type=int)
    g.add_argument("--n-head", type=int)
    g.add_argument("--n-embd", type=int)
    g.add_argument("--dropout", type=float)
    g.add_argument("--dtype", choices=["float32", "float64"])
    p.add_argument("--backend", help="attention kernel: numpy | numba")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _add_sample(sub):
    p = sub.add_parser("sample", help="generate text from a checkpoint",
                       description="Generate text. --temperature 0 is greedy decoding.")
    p.add_argument("checkpoint")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--tokens", type=int, default=300, help="how many tokens to generate (characters, for a character-level model)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-kv-cache", action="store_true", help="recompute the whole context every token")
    p.add_argument("--backend")
    p.set_defaults(func=cmd_sample)


def _add_eval(sub):
    p = sub.add_parser("eval", help="validation loss and bits per character of a checkpoint",
                       description="Mean cross-entropy over consecutive windows of the validation split "
                                   "(the last 10%% of the corpus the model was trained on, or of --text).")
    p.add_argument("checkpoint")
    p.add_argument("--text", metavar="FILE", help="evaluate on this file instead of the training corpus")
    p.add_argument("--split", choices=["val", "train"], default="val")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-batches", type=int, help="stop after this many batches")
    p.add_argument("--backend")
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
    __import__("minigpt.bench").bench.register(sub)  # minigpt bench (imported here: numba loads lazily)
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


def cmd_train(args):
    from .checkpoint import load_checkpoint
    from .config import preset
    from .data import Dataset, load_corpus
    from .model import GPT
    from .tokenizer import CharTokenizer
    from .train import train

    train_overrides = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, min_lr=args.min_lr,
                           warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
                           grad_clip=args.grad_clip, eval_every=args.eval_every,
                           checkpoint_every=args.checkpoint_every, seed=args.seed)
    if args.resume:
        ckpt = load_checkpoint(args.resume, backend=args.backend)
        model, tcfg = ckpt.model, ckpt.train_config
        if tcfg is None or ckpt.optimizer_state is None:
            raise MinigptError(f"{args.resume} holds no training state to resume from")
        changes = {k: v for k, v in train_overrides.items() if v is not None}
        tcfg = tcfg.replace(**changes) if changes else tcfg
        source = args.text or ckpt.meta.get("corpus")
        text, source = load_corpus(source)
        tokenizer = model.tokenizer
        out = args.out or args.resume
    else:
        ckpt = None
        text, source = load_corpus(args.text)
        tokenizer = CharTokenizer.from_text(text)
        cfg, tcfg = preset(args.preset, tokenizer.vocab_size, block_size=args.block_size,
                           n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                           dropout=args.dropout, dtype=args.dtype, **train_overrides)
        model = GPT(cfg, seed=tcfg.seed, backend=args.backend, tokenizer=tokenizer)
        out = args.out or f"{args.preset}.npz"
    _check_writable(out)  # fail now, not after minutes of training
    dataset = Dataset.from_text(text, tokenizer, model.config.block_size)
    if ckpt is not None and ckpt.step >= tcfg.steps:
        raise MinigptError(f"{args.resume} is already at step {ckpt.step} of {tcfg.steps}; pass a larger --steps")
    c = model.config
    print(f"minigpt: {model.num_params():,} parameters ({c.n_layer} layers, {c.n_head} heads, "
          f"{c.n_embd} wide, block {c.block_size}, vocab {c.vocab_size}), corpus {source} "
          f"({len(text):,} chars), backend {model.backend}", file=sys.stderr)
    result = train(model, dataset, tcfg, out=out, resume=ckpt, progress=not args.no_progress,
                   extra_meta={"corpus": source})
    val = result.val_losses[-1][1] if result.val_losses else float("nan")
    state = "interrupted at" if result.interrupted else "finished"
    print(f"{state} step {result.step}: train loss {result.train_losses[-1][1]:.4f}, "
          f"val loss {val:.4f} ({val / math.log(2):.3f} bits/char), "
          f"{result.tokens_per_second:,.0f} tokens/s, {result.seconds:.1f} s; wrote {out}")
    return 0


def cmd_sample(args):
    from .checkpoint import load_checkpoint

    _positive("--tokens", args.tokens)
    model = load_checkpoint(args.checkpoint, backend=args.backend).model
    if model.tokenizer is None:
        raise MinigptError(f"{args.checkpoint} has no vocabulary, so text cannot be encoded")
    text = model.generate_text(args.prompt, args.tokens, temperature=args.temperature, top_k=args.top_k,
                               top_p=args.top_p, seed=args.seed, use_kv_cache=not args.no_kv_cache)
    sys.stdout.write(text + ("" if text.endswith("\n") else "\n"))
    return 0


def cmd_eval(args):
    from .checkpoint import load_checkpoint
    from .data import Dataset, load_corpus
    from .train import evaluate

    _positive("--batch-size", args.batch_size)
    _positive("--max-batches", args.max_batches)
    ckpt = load_checkpoint(args.checkpoint, backend=args.backend)
    model = ckpt.model
    if model.tokenizer is None:
        raise MinigptError(f"{args.checkpoint} has no vocabulary, so text cannot be encoded")
    text, source = load_corpus(args.text or ckpt.meta.get("corpus"))
    dataset = Dataset.from_text(text, model.tokenizer, model.config.block_size)
    loss = evaluate(model, dataset, args.split, args.batch_size, args.max_batches)
    from .tokenizer import CharTokenizer

    unit = "char" if isinstance(model.tokenizer, CharTokenizer) else "token"
    print(f"{args.split} loss {loss:.4f}  bits/{unit} {loss / math.log(2):.4f}  "
          f"(step {ckpt.step}, corpus {source})")
    return 0


def main(argv=None):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2): return, don't raise
        return e.code
    try:
        return args.func(args)
    except MinigptError as e:
        print(f"minigpt: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:  # the file system refused (full disk, permissions): the user's to fix
        print(f"minigpt: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("minigpt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
