"""Export a minigpt checkpoint to Hugging Face's GPT-2 layout, and import one.

A Hugging Face GPT-2 directory holds ``config.json`` (a ``GPT2Config``) and
``model.safetensors``. minigpt's parameter names are GPT-2's, so the mapping
is a prefix and nothing more:

    minigpt  h.0.attn.c_attn.weight  (C, 3C)
    HF       transformer.h.0.attn.c_attn.weight  (C, 3C)

Both store weights (in, out) (HF's ``Conv1D`` computes x @ W + b, like ours),
so no tensor is transposed. ``lm_head.weight`` is tied to ``wte`` and is not
written; on import, a file that holds it must hold a copy of ``wte``. Older
GPT-2 files also carry buffers ``attn.bias`` (the causal mask) and
``attn.masked_bias``: they are not weights and are skipped.

Tokenizers travel beside the weights: a character vocabulary as
``minigpt_vocab.json``; GPT-2's BPE as ``vocab.json`` + ``merges.txt``, the
files ``transformers.GPT2Tokenizer`` reads.

Everything here needs NumPy only (safetensors is read and written by
``minigpt.safetensors_io``); torch and transformers are needed only to *use*
the exported directory.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from .errors import CheckpointError
from .safetensors_io import load_file, save_file

PREFIX = "transformer."
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"  # a checkpoint split into shards
CHAR_VOCAB = "minigpt_vocab.json"
_BUFFERS = (".attn.bias", ".attn.masked_bias")  # old GPT-2 files: mask constants, not weights
# GPT2Config settings that mean a different computation than minigpt's; value = what we compute
_FIXED = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
          "add_cross_attention": False, "tie_word_embeddings": True}
_GELUS = ("gelu_new", "gelu_pytorch_tanh")  # both are GPT-2's tanh approximation


# ------------------------------------------------------------------- config
def hf_config(config, tokenizer=None) -> dict:
    """A GPT2Config (as config.json) describing minigpt's computation."""
    from .layers.layernorm import LN_EPS

    eot = getattr(tokenizer, "encoder", {}).get("<|endoftext|>")
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size, "n_positions": config.block_size,
        "n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head,
        "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": LN_EPS,
        # minigpt drops after the embedding and each residual branch, never attention weights
        "embd_pdrop": config.dropout, "resid_pdrop": config.dropout, "attn_pdrop": 0.0,
        "initializer_range": 0.02, "reorder_and_upcast_attn": False, "use_cache": True,
        "bos_token_id": eot, "eos_token_id": eot, "dtype": config.dtype,
        **_FIXED,
    }


def config_from_hf(d: dict, dtype: str, source="config.json"):
    """GPTConfig from a GPT2Config dict; refuses settings minigpt does not compute."""
    from .config import GPTConfig
    from .layers.layernorm import LN_EPS

    if d.get("model_type") != "gpt2":
        raise CheckpointError(f"{source}: model_type is {d.get('model_type')!r}, not 'gpt2'")
    try:
        C = d["n_embd"]
        shape = dict(vocab_size=d["vocab_size"], block_size=d.get("n_positions", d.get("n_ctx")),
                     n_layer=d["n_layer"], n_head=d["n_head"], n_embd=C)
    except KeyError as e:
        raise CheckpointError(f"{source}: missing setting {e.args[0]!r}") from None
    problems = []
    if d.get("n_inner") not in (None, 4 * C):
        problems.append(f"n_inner={d['n_inner']} (minigpt's MLP is 4 * n_embd = {4 * C} wide)")
    if d.get("activation_function", "gelu_new") not in _GELUS:
        problems.append(f"activation_function={d['activation_function']!r} (minigpt computes gelu_new)")
    if d.get("layer_norm_epsilon", LN_EPS) != LN_EPS:
        problems.append(f"layer_norm_epsilon={d['layer_norm_epsilon']} (minigpt uses {LN_EPS})")
    for key, ours in _FIXED.items():
        if d.get(key, ours) != ours:
            problems.append(f"{key}={d[key]} (minigpt computes {key}={ours})")
    if problems:
        raise CheckpointError(f"{source}: a GPT-2 variant minigpt cannot run: " + "; ".join(problems))
    dropout = d.get("resid_pdrop") or 0.0
    return GPTConfig(**shape, dropout=float(dropout), dtype=dtype)


# ------------------------------------------------------------------ tensors
def to_hf_tensors(params: dict) -> dict:
    """minigpt params -> HF state-dict names (tied lm_head left out)."""
    return {PREFIX + name: p for name, p in params.items()}


def params_from_hf(tensors: dict, config, source=WEIGHTS) -> dict:
    """HF tensors -> minigpt params, checked name by name and shape by shape.

    Accepts both "transformer.h.0..." and the original files' bare "h.0..."
    names; drops the attention-mask buffers; requires a stored lm_head to
    equal wte (minigpt ties them)."""
    from .model import param_shapes

    expected = param_shapes(config)
    got, lm_head = {}, None
    for name, a in tensors.items():
        if name == "lm_head.weight":
            lm_head = a
            continue
        bare = name[len(PREFIX):] if name.startswith(PREFIX) else name
        if bare.endswith(_BUFFERS):
            continue
        got[bare] = a
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {_names(unexpected)}")
        raise CheckpointError(f"{source} does not match config.json: " + "; ".join(parts))
    wrong = [f"{k} is {tuple(got[k].shape)}, config.json needs {s}" for k, s in expected.items()
             if tuple(got[k].shape) != s]
    if wrong:
        raise CheckpointError(f"{source}: tensors of the wrong shape: " + "; ".join(wrong[:5]))
    if lm_head is not None and not np.array_equal(lm_head, got["wte.weight"]):
        raise CheckpointError(f"{source}: lm_head.weight differs from wte.weight; minigpt ties them")
    floats = [k for k, a in got.items() if a.dtype.kind != "f"]
    if floats:
        raise CheckpointError(f"{source}: non-float tensors {_names(floats)}")
    return {k: got[k].astype(config.dtype) for k in expected}  # GPT-2 order, owned copies


def _names(names, shown=6):
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


# ------------------------------------------------------------------- export
def export_hf(model, directory) -> list[Path]:
    """Write model as a Hugging Face GPT-2 directory; returns the files written."""
    from .bpe import ByteLevelBPE
    from .tokenizer import CharTokenizer

    from .model import fold_head_gates, layer_shapes

    cfg = model.config
    shapes = layer_shapes(model.params, cfg)
    if any(s != (cfg.n_head, 4 * cfg.n_embd) for s in shapes):
        odd = [f"h.{i}: {H} heads, MLP {F} wide" for i, (H, F) in enumerate(shapes)
               if (H, F) != (cfg.n_head, 4 * cfg.n_embd)]
        raise CheckpointError(
            f"cannot export to GPT-2's format: its config has one n_head ({cfg.n_head}) and one MLP width "
            f"({4 * cfg.n_embd}) for every layer, but {'; '.join(odd[:4])}{' ...' if len(odd) > 4 else ''}")
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise CheckpointError(f"{d} exists and is not a directory")
    d.mkdir(parents=True, exist_ok=True)
    tok = model.tokenizer
    (d / "config.json").write_text(json.dumps(hf_config(model.config, tok), indent=2) + "\n")
    # GPT-2 has no head gates: a gate scales its head's rows of c_proj, the same function
    save_file(to_hf_tensors(fold_head_gates(model.params, cfg)), d / WEIGHTS, metadata={"format": "pt"})
    written = [d / "config.json", d / WEIGHTS]
    if isinstance(tok, CharTokenizer):
        (d / CHAR_VOCAB).write_text(json.dumps({"kind": "char", "chars": tok.chars}, ensure_ascii=False))
        written.append(d / CHAR_VOCAB)
    elif isinstance(tok, ByteLevelBPE):
        tok.save(d)
        written += [d / "vocab.json", d / "merges.txt"]
    return written


# ------------------------------------------------------------------- import
def read_hf_tensors(d: Path) -> dict:
    """All tensors of d/model.safetensors, or of the shards its index lists."""
    if (d / WEIGHTS).is_file():
        return load_file(d / WEIGHTS)[0]
    if (d / INDEX).is_file():
        try:
            shards = sorted(set(json.loads((d / INDEX).read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{d / INDEX}: unreadable shard index ({e})") from None
        tensors = {}
        for shard in shards:
            tensors.update(load_file(d / shard)[0])
        return tensors
    pickles = [p.name for p in d.glob("*.bin")] + [p.name for p in d.glob("*.pt*")]
    if pickles:
        raise CheckpointError(
            f"{d} holds {', '.join(sorted(pickles))} but no {WEIGHTS}: that is a pickle, and "
            "unpickling can run arbitrary code, so minigpt does not open it. Convert it once, "
            "where transformers is installed: python -c \"from transformers import GPT2LMHeadModel; "
            f"GPT2LMHeadModel.from_pretrained('{d}').save_pretrained('{d}')\" "
            "(this writes model.safetensors), then import again")
    raise CheckpointError(f"{d} has no {WEIGHTS}")


def read_tokenizer(d: Path):
    """(tokenizer or None, note): minigpt_vocab.json, else vocab.json + merges.txt."""
    from .bpe import ByteLevelBPE
    from .errors import TokenizerError
    from .tokenizer import CharTokenizer

    try:
        if (d / CHAR_VOCAB).is_file():
            return CharTokenizer(json.loads((d / CHAR_VOCAB).read_text(encoding="utf-8"))["chars"]), \
                f"character vocabulary from {CHAR_VOCAB}"
    except (ValueError, KeyError, TypeError, TokenizerError) as e:
        raise CheckpointError(f"{d / CHAR_VOCAB}: unreadable vocabulary ({e})") from None
    have = [f for f in ("vocab.json", "merges.txt") if (d / f).is_file()]
    if len(have) == 2:
        try:
            return ByteLevelBPE.from_files(d / "vocab.json", d / "merges.txt"), \
                "byte-level BPE tokenizer from vocab.json + merges.txt"
        except TokenizerError as e:
            raise CheckpointError(str(e)) from None
    found = f" (found only {have[0]})" if have else ""
    return None, (f"no tokenizer: {d} lacks vocab.json and merges.txt{found}. The checkpoint "
                  "works with token ids, but `minigpt sample` and `minigpt eval` need those two "
                  "files: put them in the directory and import again")


def import_hf(directory, dtype=None, backend=None):
    """(GPT, note) from a Hugging Face GPT-2 directory.

    dtype: "float32" or "float64"; default float64 if every tensor is
    float64, else float32 (half-precision tensors are widened exactly)."""
    from .model import GPT

    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"{d} is not a directory")
    try:
        hf_cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{d} has no config.json") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{d / 'config.json'}: unreadable ({e})") from None
    if not isinstance(hf_cfg, dict):
        raise CheckpointError(f"{d / 'config.json'} is not a JSON object")
    tensors = read_hf_tensors(d)
    if dtype is None:
        dtype = "float64" if tensors and all(a.dtype == np.float64 for a in tensors.values()) else "float32"
    config = config_from_hf(hf_cfg, dtype, source=str(d / "config.json"))
    params = params_from_hf(tensors, config, source=str(d / WEIGHTS))
    tokenizer, note = read_tokenizer(d)
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(f"{d}: the tokenizer's ids reach {tokenizer.vocab_size - 1}, "
                              f"beyond vocab_size={config.vocab_size} in config.json")
    if tokenizer is not None and hasattr(tokenizer, "chars") and tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"{d / CHAR_VOCAB} has {tokenizer.vocab_size} characters, "
                              f"config.json says vocab_size={config.vocab_size}")
    return GPT(config, params=params, backend=backend, tokenizer=tokenizer), note


# ---------------------------------------------------------------------- CLI
def add_export_hf(sub):
    p = sub.add_parser("export-hf", help="write a checkpoint as a Hugging Face GPT-2 directory",
                       description="Write config.json + model.safetensors (and the tokenizer files) "
                                   "that transformers.GPT2LMHeadModel.from_pretrained(DIR) loads.")
    p.add_argument("checkpoint")
    p.add_argument("directory")
    p.set_defaults(func=cmd_export_hf)


def add_import_hf(sub):
    p = sub.add_parser("import-hf", help="read a Hugging Face GPT-2 directory into a checkpoint",
                       description="Read config.json + model.safetensors (+ vocab.json and merges.txt, "
                                   "or minigpt_vocab.json) into a minigpt checkpoint.")
    p.add_argument("directory")
    p.add_argument("checkpoint", nargs="?", help="the checkpoint to write (or give it as --out)")
    p.add_argument("--out", metavar="CKPT", help="the checkpoint to write, as quantize and prune take it")
    p.add_argument("--dtype", choices=["float32", "float64"],
                   help="default: float64 if the file is all float64, else float32")
    p.set_defaults(func=cmd_import_hf)


def cmd_export_hf(args):
    from .model import load_checkpoint

    model = load_checkpoint(args.checkpoint).model
    files = export_hf(model, args.directory)
    print(f"wrote {', '.join(str(f) for f in files)} ({model.num_params():,} parameters)")
    return 0


def _import_target(args) -> str:
    from .errors import MinigptError

    if args.checkpoint and args.out and args.checkpoint != args.out:
        raise MinigptError(f"two checkpoints to write: {args.checkpoint} and --out {args.out}; give one")
    if not (args.checkpoint or args.out):
        raise MinigptError("import-hf needs the checkpoint to write: minigpt import-hf DIR --out CKPT")
    return args.checkpoint or args.out


BAR_DELAY = 2.0  # seconds before import-hf shows its progress bar


def cmd_import_hf(args):
    from .checkpoint import save_checkpoint

    from .progress import tqdm

    out = _import_target(args)
    # GPT-2 small takes seconds to read and to write (500 MB each way): a bar on stderr once BAR_DELAY has passed
    with tqdm(total=2, desc="import-hf", unit="stage", delay=BAR_DELAY, leave=False) as bar:
        bar.set_postfix_str("reading", refresh=False)
        model, note = import_hf(args.directory, dtype=args.dtype)
        bar.update()
        bar.set_postfix_str(f"writing {out}", refresh=False)
        save_checkpoint(out, model, extra={"imported_from": str(Path(args.directory).resolve())})
        bar.update()
    c = model.config
    print(f"wrote {out}: {model.num_params():,} parameters ({c.n_layer} layers, {c.n_head} heads, "
          f"{c.n_embd} wide, block {c.block_size}, vocab {c.vocab_size}, {c.dtype})")
    print(f"tokenizer: {note}", file=sys.stderr if model.tokenizer is None else sys.stdout)
    return 0
