"""A trained model shared by the chapters: trained once, then loaded from a cache.

The cache lives outside the source tree: $MINIGPT_CACHE_DIR if set, else
~/.cache/minigpt. Its file name records everything that determines the
result (preset, steps, seed, corpus), so a changed setting trains anew.

Fast mode, MINIGPT_FAST=1 (``minigpt tour --fast``; the chapter tests set
it), is for tests and a quick look: every model here trains for 30 steps,
and the chapters shrink their experiments, so a chapter runs end to end in
seconds. Its figures go to <cache>/figures-fast, never into the checkout
(minigpt.tour.figures_dir).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .model import load_checkpoint
from .config import preset as make_preset
from .data import EMBEDDED, Dataset, load_corpus
from .errors import CheckpointError
from .model import GPT
from .tokenizer import CharTokenizer
from .train import train


def fast_mode() -> bool:
    """True when MINIGPT_FAST is set to something other than '' or '0'."""
    return os.environ.get("MINIGPT_FAST", "") not in ("", "0")


def cache_dir(path=None) -> Path:
    d = Path(path or os.environ.get("MINIGPT_CACHE_DIR") or Path.home() / ".cache" / "minigpt")
    d.mkdir(parents=True, exist_ok=True)
    return d


def trained_model(preset="tiny", steps=None, seed=0, text_path=None, cache=None, progress=True, **overrides):
    """(model, dataset, checkpoint) for a preset trained on the embedded corpus
    (or text_path), loading it from the cache when it was trained before.

    In fast mode the run is cut to 30 steps. The returned checkpoint's
    meta["history"] holds the training and validation loss curves.
    """
    text, source = load_corpus(text_path)
    tokenizer = CharTokenizer.from_text(text)
    cfg, tcfg = make_preset(preset, tokenizer.vocab_size, steps=steps, seed=seed, **overrides)
    if fast_mode():
        tcfg = tcfg.replace(steps=30, warmup_steps=5, eval_every=10, eval_batches=2, checkpoint_every=30)
    key = f"{preset}|{cfg.to_dict()}|{tcfg.to_dict()}|{source}|{len(text)}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    path = cache_dir(cache) / f"{preset}-{tcfg.steps}steps-{digest}.npz"
    dataset = Dataset.from_text(text, tokenizer, cfg.block_size)
    if path.exists():
        try:
            ckpt = load_checkpoint(path)
            if ckpt.step >= tcfg.steps:
                return ckpt.model, dataset, ckpt
        except CheckpointError:
            pass  # a stale or broken cache entry: train again
    model = GPT(cfg, seed=tcfg.seed, tokenizer=tokenizer)
    train(model, dataset, tcfg, out=path, progress=progress, extra_meta={"corpus": source or EMBEDDED})
    ckpt = load_checkpoint(path)
    return ckpt.model, dataset, ckpt
