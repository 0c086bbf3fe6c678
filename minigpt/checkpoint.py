"""Checkpoints: one .npz file, written atomically, read without pickle.

Inside: every parameter under its GPT-2 name (``wte.weight``, ``h.0.ln_1.bias``
...), optionally the optimizer moments (``optimizer.m.<name>``,
``optimizer.v.<name>``), pruning masks (``mask.<name>``: the bool mask,
True = alive (see minigpt.prune), packed 8 to a byte by np.packbits in
row-major order, so a mask costs 1/32 of its float32 weight), and
``__meta__``: UTF-8 JSON bytes holding the format name and version, the
model config, the vocabulary, the training step and config, the RNG
states, and the corpus the model was trained on.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import GPTConfig, TrainConfig
from .errors import CheckpointError, MinigptError
from .tokenizer import CharTokenizer

FORMAT = "minigpt-checkpoint"
VERSION = 1
META_KEY = "__meta__"
MASK_PREFIX = "mask."  # a pruning mask of the parameter named after it, bits packed


@dataclass
class Checkpoint:
    """A loaded checkpoint (minigpt.model.load_checkpoint builds the model)."""

    model: object  # a minigpt.model.GPT (not imported here: the model imports this module)
    step: int = 0
    train_config: TrainConfig | None = None
    optimizer_state: dict | None = None  # {"t": int, "arrays": {...}}
    rng_state: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    masks: dict | None = None  # pruning masks {parameter name: bool array}; train() keeps them

    @property
    def tokenizer(self):
        return self.model.tokenizer


def _ordinary_mode(path: Path) -> int:
    """The permission bits open(path, "w") would leave: an existing file keeps
    its own, a new one gets 0o666 minus the umask. (mkstemp makes its file
    0o600, which would otherwise survive the rename.)"""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)  # the only portable way to read it is to set it
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write(path, write_fn):
    """Call write_fn(file) on a temporary file beside path, then rename it
    over path: a reader sees the old file or the new one, never half of one.
    The file ends up with the permissions an ordinary write would give it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _ordinary_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _tokenizer_from_meta(meta: dict):
    """The tokenizer a checkpoint's "tokenizer" entry describes."""
    from .bpe import KIND, ByteLevelBPE

    if meta.get("kind") != KIND:
        raise CheckpointError(f"unknown tokenizer kind {meta.get('kind')!r}")
    return ByteLevelBPE.from_meta(meta)


@dataclass
class CheckpointFile:
    """What a checkpoint file holds, checked as a file (format, version,
    metadata, tokenizer); the parameters are checked against the model's
    shape rules by minigpt.model.load_checkpoint, which builds the GPT."""

    config: GPTConfig
    tokenizer: object
    params: dict
    optimizer_arrays: dict
    meta: dict
    masks: dict = field(default_factory=dict)  # {parameter name: packed bits (uint8)}


def save_checkpoint(path, model, step=0, optimizer=None, train_config=None,
                    rng_state=None, extra=None, masks=None):
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        # a character vocabulary is stored as "vocab" (as in every older file);
        # any other tokenizer (GPT-2's BPE) as "tokenizer": {"kind": ..., ...}
        "vocab": model.tokenizer.to_json() if isinstance(model.tokenizer, CharTokenizer) else None,
        "tokenizer": None if model.tokenizer is None or isinstance(model.tokenizer, CharTokenizer)
        else model.tokenizer.to_meta(),
        "step": int(step),
        "train_config": None if train_config is None else train_config.to_dict(),
        "optimizer_t": None if optimizer is None else int(optimizer.t),
        "rng_state": {"dropout": model.rng.bit_generator.state, **(rng_state or {})},
        **(extra or {}),
    }
    arrays = dict(model.params)
    for name, a in arrays.items():  # np.savez would pickle anything else, and no loader takes pickles
        if not isinstance(a, np.ndarray) or a.dtype == object:
            raise CheckpointError(f"cannot save parameter {name}: it is a {type(a).__name__}"
                                  f"{' of objects' if isinstance(a, np.ndarray) else ''}, and a checkpoint "
                                  f"holds only plain numeric arrays (no pickles)")
    if optimizer is not None:
        arrays.update(optimizer.state_arrays())
    for name, m in (masks or {}).items():
        if name not in arrays or np.shape(m) != arrays[name].shape:
            raise CheckpointError(f"cannot save the mask of {name}: no parameter of its shape {np.shape(m)}")
        arrays[MASK_PREFIX + name] = np.packbits(np.asarray(m, dtype=bool).reshape(-1))
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


_NPZ_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive's first bytes (an empty one: the second)
_NPY_MAGIC = b"\x93NUMPY"


def _check_is_npz(path: Path):
    """Fail with a plain message unless path is a file that starts like an
    .npz (zip) or .npy file, so numpy is never asked to guess at it."""
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file"
                              + (" (a Hugging Face export? `minigpt import-hf` converts one)"
                                 if (path / "config.json").is_file() else ""))
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(_NPY_MAGIC):
        raise CheckpointError(f"{path} is a bare .npy array, not a minigpt checkpoint")
    if not head.startswith(_NPZ_MAGIC):
        what = "an empty file" if not head else "not an .npz file"
        raise CheckpointError(f"{path} is not a minigpt checkpoint ({what})")


def read_checkpoint(path) -> CheckpointFile:
    """Read and check a checkpoint file (see CheckpointFile)."""
    path = Path(path)
    _check_is_npz(path)
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise CheckpointError(f"{path} is a bare .npy array, not a minigpt checkpoint")
        with npz:
            arrays = {k: npz[k] for k in npz.files}
    except CheckpointError:
        raise
    except ValueError as e:
        if "pickle" in str(e):  # numpy's message would suggest loading it unsafely: never do that
            raise CheckpointError(f"{path} holds pickled Python objects, so it is not a minigpt "
                                  f"checkpoint (minigpt never loads pickles)") from None
        raise CheckpointError(
            f"{path} is not a readable minigpt checkpoint (truncated or another format: {e})"
        ) from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as e:
        raise CheckpointError(
            f"{path} is not a readable minigpt checkpoint (truncated or another format: {e})"
        ) from None
    if META_KEY not in arrays:
        raise CheckpointError(f"{path} is an .npz file but not a minigpt checkpoint (no {META_KEY})")
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a minigpt checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {meta.get('version')!r}; this minigpt reads {VERSION}"
        )
    try:
        config = GPTConfig.from_dict(meta["config"])
        tokenizer = None if meta.get("vocab") is None else CharTokenizer.from_json(meta["vocab"])
        if meta.get("tokenizer") is not None:  # absent in files older than the BPE tokenizer
            tokenizer = _tokenizer_from_meta(meta["tokenizer"])
    except (MinigptError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid config or vocabulary in metadata ({e})") from None
    if tokenizer is not None and not isinstance(tokenizer, CharTokenizer) and tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(f"{path}: tokenizer ids reach {tokenizer.vocab_size - 1}, "
                              f"beyond config.vocab_size={config.vocab_size}")
    if isinstance(tokenizer, CharTokenizer) and tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(
            f"{path}: vocabulary has {tokenizer.vocab_size} characters but config.vocab_size={config.vocab_size}"
        )

    masks = {k[len(MASK_PREFIX):]: arrays.pop(k) for k in list(arrays) if k.startswith(MASK_PREFIX)}
    params = {k: np.array(a) for k, a in arrays.items() if not k.startswith("optimizer.")}  # own, writeable
    opt_arrays = {k: a for k, a in arrays.items() if k.startswith("optimizer.")}
    return CheckpointFile(config=config, tokenizer=tokenizer, params=params, optimizer_arrays=opt_arrays, meta=meta,
                          masks=masks)


def checkpoint_state(path, meta: dict, params: dict, optimizer_arrays: dict, masks=None) -> dict:
    """The training state of a checkpoint as Checkpoint's keyword arguments
    (less the model): step, train_config, optimizer_state, rng_state, meta,
    masks. The optimizer moments and the masks must match the parameters' shapes."""
    unpacked = {}
    for name, bits in (masks or {}).items():
        p = params.get(name)
        if p is None or bits.dtype != np.uint8 or bits.shape != (-(-p.size // 8),):
            raise CheckpointError(f"{path}: the mask {MASK_PREFIX}{name} ({bits.dtype} {bits.shape}) is not the "
                                  f"packed bits of a parameter of that name")
        unpacked[name] = np.unpackbits(bits, count=p.size).astype(bool).reshape(p.shape)
    rng_state = dict(meta.get("rng_state") or {})
    opt = None
    if meta.get("optimizer_t") is not None:
        for name, p in params.items():
            for kind in ("m", "v"):
                a = optimizer_arrays.get(f"optimizer.{kind}.{name}")
                if a is None or a.shape != p.shape:
                    raise CheckpointError(f"{path}: optimizer state for {name} is missing or misshapen")
        opt = {"t": meta["optimizer_t"], "arrays": optimizer_arrays}
    train_config = None
    if meta.get("train_config"):
        train_config = TrainConfig.from_dict(meta["train_config"])
    return dict(step=int(meta.get("step", 0)), train_config=train_config, optimizer_state=opt,
                rng_state=rng_state, meta=meta, masks=unpacked or None)
