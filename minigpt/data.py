"""Text corpora and batches.

The embedded default corpus is the Python standard library's own source:
every installation has it, so nothing is downloaded. It is selected
deterministically: ``.py`` files under ``sysconfig``'s stdlib directory, in
sorted path order, skipping test suites and site-packages, keeping only files
made of printable ASCII plus newline and tab (so the vocabulary stays near
100 characters), until ``DEFAULT_CORPUS_CHARS`` characters are collected.
"""
from __future__ import annotations

import os
import string
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import CorpusError
from .tokenizer import CharTokenizer

DEFAULT_CORPUS_CHARS = 3_000_000
EMBEDDED = "<stdlib>"  # how checkpoints name the embedded corpus
_ALLOWED = frozenset(string.printable) - frozenset("\r\x0b\x0c")
_SKIP_DIRS = {"test", "tests", "site-packages", "idlelib", "__pycache__", "lib2to3", "turtledemo"}


@lru_cache(maxsize=2)
def stdlib_corpus(max_chars: int = DEFAULT_CORPUS_CHARS) -> str:
    """The embedded corpus: ASCII stdlib sources, each preceded by a '# file:' line."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        paths.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
    paths.sort(key=lambda p: p.relative_to(root).as_posix())
    parts, total = [], 0
    for p in paths:
        try:
            text = p.read_bytes().decode("ascii")
        except (UnicodeDecodeError, OSError):
            continue
        if not text or not set(text) <= _ALLOWED:
            continue
        part = f"# file: {p.relative_to(root).as_posix()}\n{text}\n"
        parts.append(part)
        total += len(part)
        if total >= max_chars:
            break
    if total == 0:
        raise CorpusError(f"no plain-ASCII .py files found under {root}")
    return "".join(parts)[:max_chars]


def read_text_file(path) -> str:
    """Read a UTF-8 text file, with a clear error for each way it can be unusable."""
    p = Path(path)
    if not p.exists():
        raise CorpusError(f"text file not found: {path}")
    if not p.is_file():
        raise CorpusError(f"not a file: {path}")
    data = p.read_bytes()
    if not data:
        raise CorpusError(f"text file is empty: {path}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"text file is not valid UTF-8: {path} (bad byte 0x{data[e.start]:02x} at offset {e.start})"
        ) from None


def load_corpus(path=None) -> tuple[str, str]:
    """Returns (text, source); source is the path or EMBEDDED."""
    if path is None or path == EMBEDDED:
        return stdlib_corpus(), EMBEDDED
    return read_text_file(path), str(path)


@dataclass
class Dataset:
    """Token ids split deterministically: the first 90% train, the last 10% validation."""

    train: np.ndarray
    val: np.ndarray
    block_size: int

    @classmethod
    def from_text(cls, text, tokenizer: CharTokenizer, block_size: int, val_fraction=0.1):
        ids = tokenizer.encode(text).astype(np.int64)
        n_val = int(len(ids) * val_fraction)
        train, val = ids[: len(ids) - n_val], ids[len(ids) - n_val :]
        for name, part in (("training", train), ("validation", val)):
            if len(part) < block_size + 1:
                raise CorpusError(
                    f"the {name} split has {len(part)} tokens, fewer than block_size + 1 = "
                    f"{block_size + 1}; give a longer text or a smaller --block-size"
                )
        return cls(train, val, block_size)

    def get_batch(self, split: str, batch_size: int, rng: np.random.Generator):
        """Random windows: x = ids[i : i+T], y = ids[i+1 : i+T+1], both (B, T)."""
        data = self.train if split == "train" else self.val
        T = self.block_size
        starts = rng.integers(0, len(data) - T, size=batch_size)
        offsets = np.arange(T)
        x = data[starts[:, None] + offsets]  # (B, T)
        y = data[starts[:, None] + offsets + 1]  # (B, T)
        return x, y

    def iter_eval_batches(self, split: str, batch_size: int, max_batches=None):
        """Non-overlapping windows in order: a deterministic evaluation.

        All of them by default; with max_batches, that many batches of windows
        spread evenly over the split (not just its beginning, which may be
        easier or harder than the rest).
        """
        data = self.train if split == "train" else self.val
        T = self.block_size
        n_windows = (len(data) - 1) // T
        windows = np.arange(n_windows)
        if max_batches is not None and max_batches * batch_size < n_windows:
            windows = np.linspace(0, n_windows - 1, max_batches * batch_size).round().astype(np.int64)
        starts = windows * T
        offsets = np.arange(T)
        for i in range(0, len(starts), batch_size):
            s = starts[i : i + batch_size]
            yield data[s[:, None] + offsets], data[s[:, None] + offsets + 1]
