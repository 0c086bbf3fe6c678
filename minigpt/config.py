"""Model configuration (``GPTConfig``) and the named presets.

A preset fixes the model shape and sensible training defaults; any field can
still be overridden (the CLI exposes them as ``--n-layer`` etc.).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

_DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a GPT-2 model.

    vocab_size: number of tokens V.     block_size: longest context T_max.
    n_layer: number of blocks.          n_head: attention heads per block.
    n_embd: model width C (each head has size C / n_head).
    dropout: drop probability used while training, in [0, 1).
    dtype: "float32" to train, "float64" for gradient checks.
    """

    vocab_size: int = 96
    block_size: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.n_embd % self.n_head != 0:
            raise ConfigError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}"
            )
        if (isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float, np.floating, np.integer))
                or not 0.0 <= self.dropout < 1.0):
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.dtype not in _DTYPES:
            raise ConfigError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def replace(self, **changes) -> "GPTConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ConfigError(f"unknown config fields: {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings: AdamW, warm-up + cosine schedule, clipping."""

    steps: int = 600
    batch_size: int = 16
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 8
    checkpoint_every: int = 200
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_every", "eval_batches", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.warmup_steps, (int, np.integer)) or self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")
        for name in ("lr", "min_lr", "weight_decay", "eps", "grad_clip"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr!r}")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}")

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


# Model shape and training defaults per preset. vocab_size is filled in from
# the corpus, so it is not part of a preset.
PRESETS: dict[str, dict] = {
    "tiny": {
        "model": dict(block_size=64, n_layer=2, n_head=4, n_embd=64),
        "train": dict(steps=4000, batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=100,
                      eval_every=250, checkpoint_every=1000),
    },
    "small": {
        "model": dict(block_size=96, n_layer=3, n_head=4, n_embd=96),
        "train": dict(steps=1500, batch_size=16, lr=2e-3, min_lr=2e-4, warmup_steps=100,
                      eval_every=250, checkpoint_every=500),
    },
    "base": {
        "model": dict(block_size=128, n_layer=4, n_head=4, n_embd=128),
        "train": dict(steps=3000, batch_size=16, lr=1e-3, min_lr=1e-4, warmup_steps=200,
                      eval_every=250, checkpoint_every=500),
    },
}


def preset(name: str, vocab_size: int, **overrides) -> tuple[GPTConfig, TrainConfig]:
    """The (model, training) configs of a named preset, with overrides applied.

    Overrides whose name is a GPTConfig field go to the model, the rest to
    the training config.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    model_fields = {f.name for f in dataclasses.fields(GPTConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    m = dict(PRESETS[name]["model"], vocab_size=vocab_size)
    t = dict(PRESETS[name]["train"])
    for key, value in overrides.items():
        if value is None:
            continue
        if key in model_fields:
            m[key] = value
        elif key in train_fields:
            t[key] = value
        else:
            raise ConfigError(f"unknown setting {key!r}")
    return GPTConfig(**m), TrainConfig(**t)
