"""``minigpt quantize`` and ``minigpt train --resume QCKPT --qat``.

quantize: a float checkpoint in, a quantized checkpoint out, and the
yardsticks before and after, measured in this run: validation loss, weight
bytes, bits per weight, generation tokens/s.

train --qat: fine-tune a quantized checkpoint with quantization-aware
training (its integer weights dequantized to start from, fake-quantized in
every forward, stored the same way again at the end).

This module never imports minigpt.cli (which imports it), so the package
keeps no import cycle.
"""
from __future__ import annotations

import argparse
import fnmatch
import math
import sys
import time
from pathlib import Path

import numpy as np

from ..compose import with_step
from ..errors import ConfigError, MinigptError
from .weights import BITS, bits_per_weight, dequantize_params, is_quantizable, kind_for_bits, quantized_layers
from .weights import is_quantized, quantize_head, quantize_params, weight_bytes

DEFAULT_GROUP = 32
METHODS = ("rtn", "gptq", "awq", "kmeans")
DEFAULT_CALIB, CALIB_BATCH = 8, 16
CALIB_LENGTH = 256  # tokens a calibration window at most (GPTQ's paper: 128 sequences of 2048)


def _alpha(text):
    try:
        alpha = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= alpha <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}")
    return alpha


def _bits(text):
    try:
        bits = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer from 2 to 8, got {text!r}") from None
    if not 2 <= bits <= 8:
        raise argparse.ArgumentTypeError(f"must be from 2 to 8, got {bits}")
    return bits


def register(sub):
    p = sub.add_parser(
        "quantize", help="quantize a checkpoint's weights (int8 / int4 / W8A8 / Q8_0 / Q4_0)",
        description="Quantize the linear layers of a float checkpoint (round to nearest, or GPTQ / AWQ "
                    "with --method), print validation "
                    "loss, weight bytes, bits per weight and generation tokens/s before and after, and write "
                    "the quantized checkpoint (sample and eval read it like any other). Weights of 5 to 8 bits "
                    "are stored as int8 with one scale per output channel, 2 to 4 bits as packed 4-bit values "
                    "with one scale per group of inputs. The embeddings (also the output head), LayerNorms and "
                    "biases stay float unless --head int8.")
    p.add_argument("checkpoint", help="a float checkpoint written by minigpt train or import-hf")
    p.add_argument("--out", metavar="QCKPT", required=True, help="where to write the quantized checkpoint")
    p.add_argument("--bits", type=_bits, help="bits a weight, 2 to 8 (default: 8, or the --format's)")
    p.add_argument("--group-size", type=int, metavar="G",
                   help=f"2-4 bits: inputs sharing one scale; must divide every layer's input width "
                        f"(default: {DEFAULT_GROUP})")
    p.add_argument("--activations", action="store_true",
                   help="W8A8: also quantize each token's activations to int8 on the fly (needs 8 bits)")
    p.add_argument("--format", choices=["q8_0", "q4_0"],
                   help="llama.cpp's block formats instead: 32 weights a block with a float16 scale")
    p.add_argument("--head", choices=["int8"],
                   help="also store the token embedding, which is the tied output head, as int8 with one scale "
                        "per vocabulary row (default: float). At GPT-2's vocabulary the head is the largest "
                        "matrix, read whole for every generated token")
    p.add_argument("--keep-float", nargs="+", metavar="LAYER", default=[],
                   help="layers (or shell patterns, e.g. 'h.0.*') to leave in float (default: none)")
    p.add_argument("--method", choices=METHODS, default="rtn",
                   help="rtn: round to nearest; gptq: GPTQ's error-correcting updates from calibration inputs; "
                        "awq: activation-aware scales (weight-only) before rounding; kmeans: a codebook of 2^bits "
                        "shared values a tensor (k-means), a b-bit index a weight (default: %(default)s)")
    p.add_argument("--centroid-steps", type=int, metavar="N",
                   help=f"with --method kmeans: N Adam steps on the centroids alone (assignments frozen), "
                        f"batches of {CALIB_BATCH} windows from the training split (default: 0)")
    p.add_argument("--smooth", type=_alpha, metavar="ALPHA",
                   help="with --activations: SmoothQuant first, s_j = max|X_j|^ALPHA / max|W_j|^(1-ALPHA) "
                        "folded into the LayerNorms (0.5 is the paper's usual choice)")
    p.add_argument("--calib-batches", type=int, metavar="N",
                   help=f"gptq / awq / --smooth: calibration batches of {CALIB_BATCH} windows from the "
                        f"training split (default: {DEFAULT_CALIB})")
    p.add_argument("--calib-length", type=int, metavar="T",
                   help=f"gptq / awq / --smooth: tokens a calibration window (default: the model's block size, "
                        f"at most {CALIB_LENGTH}, so 8 batches make GPTQ's 128 sequences of 256 tokens at "
                        f"GPT-2's size)")
    p.add_argument("--max-batches", type=int, default=50,
                   help="validation batches of 32 windows to measure the loss on, 0 for the whole split "
                        "(default: %(default)s)")
    p.add_argument("--eval-windows", type=int, metavar="N",
                   help="measure the loss on N validation windows spread over the split instead of --max-batches "
                        "batches of 32 (GPT-2 small: 8 windows of 1024 tokens take a minute or two)")
    p.add_argument("--tokens", type=int, default=64,
                   help="tokens to generate (greedy) for the tokens/s measurement (default: %(default)s)")
    p.add_argument("--backend", help="kernels: numpy (the reference) | numba (default: numba)")
    p.set_defaults(func=cmd_quantize)


def scheme_from_args(args) -> dict:
    """{"kind", "bits", "group"} from the command line, or a MinigptError naming the clash."""
    if args.format:
        bits = BITS[args.format][0]
        if args.bits is not None and args.bits != bits:
            raise MinigptError(f"--format {args.format} stores {bits}-bit weights, not --bits {args.bits}")
        if args.group_size is not None or args.activations:
            raise MinigptError(f"--format {args.format} has a fixed layout: drop --group-size / --activations")
        return {"kind": args.format, "bits": bits, "group": None, "head": getattr(args, "head", None)}
    bits = 8 if args.bits is None else args.bits
    if args.activations:
        if bits != 8:
            raise MinigptError(f"--activations (W8A8) quantizes to 8 bits, not --bits {bits}")
        kind = "w8a8"
    else:
        kind = kind_for_bits(bits)
    if args.group_size is not None and kind != "int4":
        raise MinigptError(f"--group-size applies to 2-4 bits; {bits}-bit weights have one scale per output channel")
    group = (DEFAULT_GROUP if args.group_size is None else args.group_size) if kind == "int4" else None
    if group is not None and (group <= 0 or group % 2):
        raise MinigptError(f"--group-size must be a positive even number, got {group}")
    return {"kind": kind, "bits": bits, "group": group, "head": getattr(args, "head", None)}


def kmeans_scheme(args) -> dict:
    """{"kind": "kmeans", "bits", "group": None} of --method kmeans, or a MinigptError naming the
    option it has no use for (one codebook a tensor: no groups, scales, blocks or activations)."""
    clashes = {"--format": args.format, "--activations": args.activations, "--group-size": args.group_size,
               "--head": getattr(args, "head", None),
               "--smooth": args.smooth, "--calib-batches": args.calib_batches,
               "--calib-length": getattr(args, "calib_length", None)}
    for flag, value in clashes.items():
        if value is not None and value is not False:
            raise MinigptError(f"--method kmeans stores one codebook a tensor and a b-bit index a weight; drop {flag}")
    steps = args.centroid_steps
    if steps is not None and steps < 0:
        raise MinigptError(f"--centroid-steps must be 0 or more, got {steps}")
    return {"kind": "kmeans", "bits": 8 if args.bits is None else args.bits, "group": None}


def check_method_args(args, scheme):
    """MinigptError for --method / --smooth / --calib-batches that clash with the scheme or each other."""
    method = getattr(args, "method", "rtn")
    if getattr(args, "centroid_steps", None) is not None and method != "kmeans":
        raise MinigptError(f"--centroid-steps fine-tunes k-means centroids: it needs --method kmeans, not {method}")
    smooth, calib = getattr(args, "smooth", None), getattr(args, "calib_batches", None)
    if method != "rtn" and args.format:
        raise MinigptError(f"--method {method} writes int8 / int2-4 / W8A8 weights; --format {args.format} "
                           f"rounds to nearest in its own blocks")
    if method == "awq" and scheme["kind"] == "w8a8":
        raise MinigptError("--method awq scales weight-only quantization; drop --activations (or use --smooth)")
    if smooth is not None and scheme["kind"] != "w8a8":
        raise MinigptError(f"--smooth {smooth:g} eases activation quantization: it needs --activations (W8A8)")
    if calib is not None and method == "rtn" and smooth is None:
        raise MinigptError("--calib-batches is for --method gptq / awq and --smooth; round to nearest needs none")
    if calib is not None and calib < 1:
        raise MinigptError(f"--calib-batches must be positive, got {calib}")
    if getattr(args, "calib_length", None) is not None and method == "rtn" and smooth is None:
        raise MinigptError("--calib-length is for --method gptq / awq and --smooth; round to nearest needs none")


def describe(scheme: dict) -> str:
    text = _describe_linears(scheme)
    return f"{text} + {scheme['head']} head" if scheme.get("head") else text


def _describe_linears(scheme: dict) -> str:
    kind, bits, group = scheme["kind"], scheme["bits"], scheme.get("group")
    if kind == "kmeans":
        return f"k-means {bits}-bit ({2 ** bits} centroids a tensor)"
    if kind == "int4":
        return f"int{bits} weights, groups of {group}" if group else f"int{bits} weights, per channel"
    return {"int8": f"int{bits} weights, per channel", "w8a8": "W8A8 (int8 weights and activations)",
            "q8_0": "Q8_0 blocks", "q4_0": "Q4_0 blocks"}[kind]


def _validation(model, dataset, args):
    """Validation loss on --eval-windows windows, else on --max-batches batches of 32."""
    from ..train import evaluate

    windows = getattr(args, "eval_windows", None)
    if windows:
        return evaluate(model, dataset, "val", windows, 1, progress=True)
    return evaluate(model, dataset, "val", 32, args.max_batches or None, progress=True)


def tokens_per_second(model, n_tokens, prompt_id=0) -> float:
    """Greedy generation of n_tokens from a one-token prompt, after a short warm-up (compiles kernels)."""
    prompt = np.array([prompt_id])
    model.generate(prompt, 2, temperature=0.0)
    t0 = time.perf_counter()
    model.generate(prompt, n_tokens, temperature=0.0)
    return n_tokens / (time.perf_counter() - t0)


def _corpus(ckpt, text_path, path="the checkpoint"):
    from ..cli import checkpoint_dataset

    return checkpoint_dataset(ckpt, path, text_path)


def _check_not_dir(out):
    if Path(out).is_dir():
        raise MinigptError(f"--out {out} is a directory; give a file name such as {Path(out) / 'q.npz'}")


def _check_out(out, source):
    if Path(out).resolve() == Path(source).resolve():
        raise MinigptError(f"--out {out} is the checkpoint being quantized; write the quantized one elsewhere")
    _check_not_dir(out)


def cmd_quantize(args):
    from ..model import GPT

    for name in ("max_batches", "tokens", "eval_windows"):
        if getattr(args, name) is not None and getattr(args, name) < (0 if name == "max_batches" else 1):
            raise MinigptError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.method == "kmeans":
        return cmd_quantize_kmeans(args)
    scheme = scheme_from_args(args)
    check_method_args(args, scheme)
    _check_out(args.out, args.checkpoint)
    ckpt, dataset, source = _float_checkpoint(args)
    model = ckpt.model
    if scheme["kind"] == "int4" and args.group_size is None:
        from ..compose import default_group

        scheme["group"] = default_group(model.params, DEFAULT_GROUP)
        if scheme["group"] != DEFAULT_GROUP:  # a structurally pruned layer narrower than 32 inputs
            print(f"minigpt: groups of {scheme['group']} (the largest size up to {DEFAULT_GROUP} that divides "
                  f"every layer's input width)", file=sys.stderr)
    params = quantize_head(_quantized_params(model, dataset, scheme, args), scheme["head"])
    qmodel = GPT(model.config, params=params, backend=model.backend, tokenizer=model.tokenizer)
    head = " and the tied embedding / head" if scheme["head"] else ""
    print(f"minigpt: {args.checkpoint} -> {describe(scheme)}{_method_note(args)}; "
          f"{len(quantized_layers(params))} linear layers{head} quantized, corpus {source}", file=sys.stderr)
    rows = []
    for label, m in (("float", model), ("quantized", qmodel)):
        rows.append((label, _validation(m, dataset, args), weight_bytes(m.params),
                     bits_per_weight(m.params), tokens_per_second(m, args.tokens)))
    print(_table(rows, describe(scheme), model.config.dtype, _unit(model.tokenizer), bool(scheme["head"])))
    meta = {k: v for k, v in ckpt.meta.items() if k in ("corpus", "history")}
    meta["quantization"] = {**scheme, "method": args.method, "smooth": args.smooth, "source": str(args.checkpoint),
                            "float_val_loss": rows[0][1], "val_loss": rows[1][1]}
    meta["provenance"] = with_step(ckpt.meta, ckpt.step, f"quantize {describe(scheme)}{_method_note(args)} "
                                                         f"from {args.checkpoint}")
    qmodel.save(args.out, step=ckpt.step, train_config=ckpt.train_config, extra=meta)
    print(f"wrote {args.out}")
    return 0


def _float_checkpoint(args):
    """(checkpoint, its corpus as a Dataset, the corpus's source) of a float checkpoint with a vocabulary."""
    from ..compose import check_quantizable
    from ..model import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint, backend=args.backend)
    check_quantizable(args.checkpoint, ckpt.model.params, ckpt.meta)  # quantized already, or CSR
    if ckpt.model.tokenizer is None:
        raise MinigptError(f"{args.checkpoint} has no vocabulary, so its validation text cannot be encoded")
    dataset, source = _corpus(ckpt, None)
    return ckpt, dataset, source


def cmd_quantize_kmeans(args):
    """minigpt quantize CKPT --method kmeans --bits B [--centroid-steps N] --out Q.npz."""
    from .kmeans import finetune_centroids, kmeans_model

    scheme = kmeans_scheme(args)
    _check_out(args.out, args.checkpoint)
    ckpt, dataset, source = _float_checkpoint(args)
    model = ckpt.model
    keep = tuple(n[: -len(".weight")] for n in model.params if is_quantizable(n)
                 and any(fnmatch.fnmatchcase(n[: -len(".weight")], pat) for pat in args.keep_float))
    qmodel = kmeans_model(model, scheme["bits"], keep_float=keep)
    steps = args.centroid_steps or 0
    print(f"minigpt: {args.checkpoint} -> {describe(scheme)}; {len(quantized_layers(qmodel.params))} linear layers "
          f"quantized, {steps} centroid fine-tuning steps, corpus {source}", file=sys.stderr)
    before = _validation(qmodel, dataset, args) if steps else None
    if steps:
        rng = np.random.default_rng(0)
        batches = [dataset.get_batch("train", CALIB_BATCH, rng) for _ in range(steps)]
        qmodel, _ = finetune_centroids(qmodel, batches, steps)
    rows = [(m, _validation(m, dataset, args), tokens_per_second(m, args.tokens)) for m in (model, qmodel)]
    print(_kmeans_table(rows, describe(scheme), model.config.dtype, _unit(model.tokenizer), before, steps))
    meta = {k: v for k, v in ckpt.meta.items() if k in ("corpus", "history")}
    meta["quantization"] = {**scheme, "method": "kmeans", "centroid_steps": steps, "source": str(args.checkpoint),
                            "float_val_loss": rows[0][1], "val_loss": rows[1][1]}
    meta["provenance"] = with_step(ckpt.meta, ckpt.step, f"quantize {describe(scheme)}, {steps} centroid steps "
                                                         f"from {args.checkpoint}")
    qmodel.save(args.out, step=ckpt.step, train_config=ckpt.train_config, extra=meta)
    print(f"wrote {args.out}")
    return 0


def kmeans_bytes(params: dict) -> tuple[int, int, int, int]:
    """(bytes of the k-means weights with their indices packed at b bits, the same with the indices
    Huffman coded instead, the bytes they take held as uint8, their number of weights); codebooks included."""
    from .huffman import huffman_encode, huffman_nbytes
    from .kmeans import kmeans_layers, kmeans_nbytes

    packed = huffman = held = n = 0
    for layer in kmeans_layers(params):
        q = {"kmeans_idx": params[layer + ".weight.kmeans_idx"], "codebook": params[layer + ".weight.codebook"]}
        packed += kmeans_nbytes(q, packed=True)
        huffman += huffman_nbytes(huffman_encode(q["kmeans_idx"], len(q["codebook"]))) + q["codebook"].nbytes
        held += kmeans_nbytes(q, packed=False)
        n += q["kmeans_idx"].size
    return packed, huffman, held, n


def _kmeans_table(rows, label, dtype, unit, before, steps) -> str:
    """Float and k-means side by side: loss, bytes packed at b bits and Huffman coded, bits a weight.
    Weight bytes count every array (embeddings, LayerNorms, biases too), as the other methods' table does."""
    (fm, l0, t0), (qm, l1, t1) = rows
    b0 = weight_bytes(fm.params)
    packed, huff, held, n = kmeans_bytes(qm.params)
    rest = weight_bytes(qm.params) - held  # the arrays that stay float
    w = max(len(label), 12)
    lines = [f"{'':<22}{dtype:>12}  {label:>{w}}",
             f"{'val loss':<22}{l0:>12.4f}  {l1:>{w}.4f}   {l1 - l0:+.4f}"]
    if before is not None:
        lines.append(f"{'  before centroid FT':<22}{'':>12}  {before:>{w}.4f}   {before - l0:+.4f} ({steps} steps)")
    return "\n".join(lines + [
        f"{'bits/' + unit:<22}{l0 / math.log(2):>12.4f}  {l1 / math.log(2):>{w}.4f}",
        f"{'weight bytes':<22}{b0:>12,}  {rest + packed:>{w},}   {b0 / (rest + packed):.2f}x smaller (indices packed)",
        f"{'  Huffman-coded':<22}{'':>12}  {rest + huff:>{w},}   {b0 / (rest + huff):.2f}x smaller",
        f"{'bits per weight':<22}{bits_per_weight(fm.params):>12.2f}  {8 * packed / n:>{w}.2f}   "
        f"(k-means linears, codebooks included)",
        f"{'  Huffman-coded idx':<22}{'':>12}  {8 * huff / n:>{w}.2f}",
        f"{'tokens/s':<22}{t0:>12.1f}  {t1:>{w}.1f}   {t1 / t0:.2f}x (greedy, batch 1)",
    ])


def _quantized_params(model, dataset, scheme, args) -> dict:
    """The quantized parameter dict of --method (after --smooth's exact rescaling, if asked)."""
    from .rescale import calibration_batches

    kind, bits, group, keep = scheme["kind"], scheme["bits"], scheme["group"], tuple(args.keep_float)
    if args.method == "rtn" and args.smooth is None:
        return quantize_params(model.params, kind, group=group, bits=bits, keep_float=keep)
    cal = calibration_batches(calibration_windows(dataset, args.calib_length), args.calib_batches or DEFAULT_CALIB,
                              CALIB_BATCH)
    if args.smooth is not None:
        from .smoothquant import smooth_model

        model, _ = smooth_model(model, cal, args.smooth)
    if args.method == "gptq":
        from .gptq import gptq_params

        return gptq_params(model, cal, kind, bits, group, keep_float=keep, progress=True)[0]
    if args.method == "awq":
        from .awq import awq_model

        return awq_model(model, cal, kind, bits, group, keep_float=keep)[0].params
    return quantize_params(model.params, kind, group=group, bits=bits, keep_float=keep)


def calibration_windows(dataset, length=None):
    """The dataset cut in windows of `length` tokens (default: its block size, at most CALIB_LENGTH)
    for drawing calibration batches; the token ids are shared, not copied."""
    from ..data import Dataset

    T = min(dataset.block_size, CALIB_LENGTH) if length is None else length
    if not 1 <= T <= dataset.block_size:
        raise MinigptError(f"--calib-length must be from 1 to the model's block size {dataset.block_size}, got {T}")
    return dataset if T == dataset.block_size else Dataset(dataset.train, dataset.val, T)


def _method_note(args) -> str:
    parts = [] if args.method == "rtn" else [f"method {args.method}"]
    if args.smooth is not None:
        parts.append(f"SmoothQuant alpha {args.smooth:g}")
    if parts:
        parts.append(f"{args.calib_batches or DEFAULT_CALIB} calibration batches of {CALIB_BATCH} windows")
    return "".join(f", {p}" for p in parts)


def _unit(tokenizer):
    from ..tokenizer import CharTokenizer

    return "char" if isinstance(tokenizer, CharTokenizer) else "token"


def _table(rows, label, dtype, unit, head=False) -> str:
    """Before and after, side by side, each change in the last column (head: the quantized
    column's bits per weight count the int8 tied head too)."""
    (_, l0, b0, w0, t0), (_, l1, b1, w1, t1) = rows
    w = max(len(label), 12)
    return "\n".join([
        f"{'':<16}{dtype:>12}  {label:>{w}}",
        f"{'val loss':<16}{l0:>12.4f}  {l1:>{w}.4f}   {l1 - l0:+.4f}",
        f"{'bits/' + unit:<16}{l0 / math.log(2):>12.4f}  {l1 / math.log(2):>{w}.4f}",
        f"{'weight bytes':<16}{b0:>12,}  {b1:>{w},}   {b0 / b1:.2f}x smaller",
        f"{'bits per weight':<16}{w0:>12.2f}  {w1:>{w}.2f}   "
        f"({'block linears and the int8 head' if head else 'block linears'}, scales included)",
        f"{'tokens/s':<16}{t0:>12.1f}  {t1:>{w}.1f}   {t1 / t0:.2f}x (greedy, batch 1)",
    ])


# ------------------------------------------------------------ train --qat
_SHAPES = ("preset", "block_size", "n_layer", "n_head", "n_embd", "dropout", "dtype")


def scheme_of(params) -> dict:
    """The {"kind", "bits", "group"} a quantized parameter dict was made with, read off
    its arrays: symmetric min-max puts every slice's largest weight on +-q_max, so
    the largest code gives the bits; one group size (or per channel) for all layers."""
    from ..layers.quantized_embedding import head_format

    if head_format(params):
        raise ConfigError("its tied embedding / head is int8 too (quantize --head int8), and quantization-aware "
                          "training trains float embeddings only; fine-tune a checkpoint quantized without --head")
    layers = quantized_layers(params)
    kinds = set(layers.values())
    if len(kinds) != 1:
        raise ConfigError(f"the layers mix formats {sorted(kinds)}")
    kind = kinds.pop()
    if kind not in ("int8", "int4"):
        raise ConfigError(f"quantization-aware training fine-tunes int8 / int2-4 weights, not {kind}")
    if kind == "int8":
        qmax = max(int(np.abs(params[f"{layer}.weight.int8"].astype(np.int16)).max()) for layer in layers)
        return {"kind": kind, "bits": qmax.bit_length() + 1, "group": None}
    from ..kernels.int_matmul_ref import unpack_int4

    groups, whole, qmax = set(), True, 0
    for layer in layers:
        g = int(params[f"{layer}.weight.group"])
        packed = params[f"{layer}.weight.int4"]
        groups.add(g)
        whole &= g == 2 * packed.shape[0]  # one group a column: per channel
        qmax = max(qmax, int(np.abs(unpack_int4(packed, g).astype(np.int16)).max()))
    # groups of G on a layer only G inputs wide are also "per channel", so one G
    # for every layer is a group size even where it spans whole columns
    if len(groups) != 1 and not whole:
        raise ConfigError(f"the layers mix group sizes {sorted(groups)}")
    group = None if whole else groups.pop()
    return {"kind": kind, "bits": qmax.bit_length() + 1, "group": group}


def _qat_config(args, base):
    """Training settings of the fine-tune: the command line's, else short and gentle."""
    from ..config import TrainConfig

    base = base or TrainConfig()
    steps = args.steps or 200
    lr = args.lr or base.lr / 10
    tcfg = base.replace(steps=steps, lr=lr, min_lr=args.min_lr or lr / 10,
                        warmup_steps=steps // 10 if args.warmup_steps is None else args.warmup_steps,
                        batch_size=args.batch_size or base.batch_size,
                        eval_every=args.eval_every or max(1, steps // 4), checkpoint_every=steps)
    for name in ("weight_decay", "grad_clip"):
        if getattr(args, name) is not None:
            tcfg = tcfg.replace(**{name: getattr(args, name)})
    return tcfg


def cmd_train_qat(args):
    """minigpt train --resume QCKPT --qat [--steps N --lr LR ... --out QCKPT2]."""
    from ..model import GPT, load_checkpoint
    from ..train import evaluate
    from .qat import qat_finetune

    if not args.resume:
        raise MinigptError("--qat fine-tunes a quantized checkpoint: give it with --resume QCKPT "
                           "(make one with minigpt quantize)")
    given = [f"--{n.replace('_', '-')}" for n in _SHAPES if getattr(args, n, None) is not None]
    if given:
        raise MinigptError(f"--qat fine-tunes the checkpoint's own model; drop {', '.join(given)}")
    ckpt = load_checkpoint(args.resume, backend=args.backend)
    if not is_quantized(ckpt.model.params):
        raise MinigptError(f"--qat needs a quantized checkpoint, and {args.resume} holds float weights; "
                           f"make one first: minigpt quantize {args.resume} --bits 4 --out q.npz")
    try:
        scheme = scheme_of(ckpt.model.params)
    except ConfigError as e:
        raise MinigptError(f"{args.resume}: {e}") from None
    out = args.out or args.resume
    _check_not_dir(out)  # overwriting QCKPT itself is the default
    tcfg = _qat_config(args, ckpt.train_config)
    dataset, source = _corpus(ckpt, args.text)
    qmodel = ckpt.model
    before = evaluate(qmodel, dataset, "val", tcfg.batch_size, tcfg.eval_batches)
    model = GPT(qmodel.config, params=dequantize_params(qmodel.params), backend=qmodel.backend,
                tokenizer=qmodel.tokenizer, seed=tcfg.seed)
    layers = list(quantized_layers(qmodel.params))
    print(f"minigpt: quantization-aware training of {args.resume} ({describe(scheme)}, {len(layers)} layers): "
          f"{tcfg.steps} steps, lr {tcfg.lr:g} -> {tcfg.min_lr:g}, batch {tcfg.batch_size}, corpus {source}",
          file=sys.stderr)
    log = (lambda line: print(line, flush=True)) if args.no_progress else None
    trained, result = qat_finetune(model, dataset, tcfg, scheme["kind"], scheme["bits"], scheme["group"], layers,
                                   progress=not args.no_progress, log=log)
    after = evaluate(trained, dataset, "val", tcfg.batch_size, tcfg.eval_batches)
    meta = {k: v for k, v in ckpt.meta.items() if k in ("corpus", "quantization")}
    meta["qat"] = {"steps": result.step, "lr": tcfg.lr, "val_loss_before": before, "val_loss_after": after}
    meta["provenance"] = with_step(ckpt.meta, ckpt.step, f"QAT {result.step} steps at lr {tcfg.lr:g} "
                                                         f"from {args.resume}")
    trained.save(out, step=ckpt.step, train_config=ckpt.train_config, extra=meta)
    state = "interrupted at" if result.interrupted else "finished"
    print(f"{state} step {result.step} of quantization-aware training: val loss {before:.4f} -> {after:.4f} "
          f"({describe(scheme)}), {result.tokens_per_second:,.0f} tokens/s; wrote {out}")
    return 130 if result.interrupted else 0
