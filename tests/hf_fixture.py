"""A GPT-2-shaped Hugging Face directory with random weights, written here,
so the GPT-2 small commands can be run and tested with nothing downloaded.

The directory looks like what a user has after fetching GPT-2 (the
original ``gpt2`` repository's layout):

    config.json        a GPT2Config with GPT-2's settings (dropout 0.1, n_ctx, ...)
    model.safetensors  bare names ("h.0.attn.c_attn.weight", no "transformer."),
                       plus the causal-mask buffers "h.{i}.attn.bias" the
                       original file carries
    vocab.json, merges.txt   a byte-level BPE of vocab_size tokens

The tokenizer is not GPT-2's (that would be a download): its merges are
the ones tests/bpe_fixture.py learns from a few sentences, then pairs of
single byte symbols in a fixed order (printable ASCII first), as many as
it takes to reach vocab_size - 1 tokens; "<|endoftext|>" is the last id,
as in GPT-2. So every id a sampler can draw decodes, and text of the
embedded corpus encodes to about as many tokens as GPT-2's own BPE would
give within a factor of two or so.

Weights follow GPT-2's initialisation (normal, std 0.02; the residual
projections c_proj scaled by 1 / sqrt(2 n_layer); LayerNorm gains near 1),
so activations have realistic sizes for quantization and pruning.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import bpe_fixture
from minigpt.bpe import SPECIAL, bytes_to_unicode
from minigpt.safetensors_io import save_file

GPT2_SMALL = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257)


def _byte_pairs():
    """(left, right) single-symbol pairs, printable ASCII bytes first, then the rest."""
    b2u = bytes_to_unicode()
    order = list(range(32, 127)) + [b for b in range(256) if not 32 <= b < 127]
    for a in order:
        for b in order:
            yield b2u[a], b2u[b]


def bpe_vocab(vocab_size: int) -> tuple[dict, list]:
    """(encoder, merges) of exactly vocab_size ids: 256 bytes, merges, "<|endoftext|>" last."""
    encoder, merges = bpe_fixture.learn()
    del encoder[SPECIAL]
    if vocab_size - 1 < len(encoder):
        raise ValueError(f"vocab_size must be at least {len(encoder) + 1}, got {vocab_size}")
    pairs = _byte_pairs()
    while len(encoder) < vocab_size - 1:
        a, b = next(pairs)
        if a + b not in encoder:
            merges.append((a, b))
            encoder[a + b] = len(encoder)
    encoder[SPECIAL] = vocab_size - 1
    return encoder, merges


def random_params(n_layer, n_head, n_embd, block_size, vocab_size, seed=0, dtype=np.float32) -> dict:
    """GPT-2's tensors under the original file's bare names, GPT-2-style random values."""
    rng = np.random.default_rng(seed)
    C, F = n_embd, 4 * n_embd

    def normal(*shape, std=0.02):
        return (rng.standard_normal(shape, dtype=np.float32) * std).astype(dtype)

    def ln():
        return (1.0 + normal(C, std=0.1)).astype(dtype), normal(C)

    proj_std = 0.02 / np.sqrt(2 * n_layer)
    t = {"wte.weight": normal(vocab_size, C), "wpe.weight": normal(block_size, C, std=0.01)}
    for i in range(n_layer):
        h = f"h.{i}."
        t[h + "ln_1.weight"], t[h + "ln_1.bias"] = ln()
        t[h + "attn.bias"] = np.tril(np.ones((block_size, block_size), np.float32))[None, None]  # the mask buffer
        t[h + "attn.c_attn.weight"], t[h + "attn.c_attn.bias"] = normal(C, 3 * C), normal(3 * C)
        t[h + "attn.c_proj.weight"], t[h + "attn.c_proj.bias"] = normal(C, C, std=proj_std), normal(C)
        t[h + "ln_2.weight"], t[h + "ln_2.bias"] = ln()
        t[h + "mlp.c_fc.weight"], t[h + "mlp.c_fc.bias"] = normal(C, F), normal(F)
        t[h + "mlp.c_proj.weight"], t[h + "mlp.c_proj.bias"] = normal(F, C, std=proj_std), normal(C)
    t["ln_f.weight"], t["ln_f.bias"] = ln()
    return t


def gpt2_config(n_layer, n_head, n_embd, block_size, vocab_size) -> dict:
    """config.json as GPT-2's repository has it, with this shape."""
    return {
        "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
        "bos_token_id": vocab_size - 1, "embd_pdrop": 0.1, "eos_token_id": vocab_size - 1,
        "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": block_size,
        "n_embd": n_embd, "n_head": n_head, "n_layer": n_layer, "n_positions": block_size, "resid_pdrop": 0.1,
        "summary_activation": None, "summary_first_dropout": 0.1, "summary_proj_to_labels": True,
        "summary_type": "cls_index", "summary_use_proj": True,
        "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
        "vocab_size": vocab_size,
    }


def write_gpt2_dir(directory, n_layer=2, n_head=2, n_embd=64, block_size=128, vocab_size=50257, seed=0) -> Path:
    """Write a random GPT-2-shaped Hugging Face directory; GPT-2 small is write_gpt2_dir(d, **GPT2_SMALL)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    shape = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, vocab_size=vocab_size)
    (d / "config.json").write_text(json.dumps(gpt2_config(**shape), indent=2) + "\n")
    save_file(random_params(**shape, seed=seed), d / "model.safetensors", metadata={"format": "pt"})
    encoder, merges = bpe_vocab(vocab_size)
    (d / "vocab.json").write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return d
