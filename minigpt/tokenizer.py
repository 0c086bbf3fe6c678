"""Character-level tokenizer: one token per distinct character.

encode(text)[i] = index of text[i] in the sorted vocabulary;
decode(encode(text)) == text for every text the vocabulary covers.
"""
from __future__ import annotations

import numpy as np

from .errors import TokenizerError


class CharTokenizer:
    def __init__(self, chars):
        chars = list(chars)
        if not chars:
            raise TokenizerError("a tokenizer needs at least one character")
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise TokenizerError("vocabulary must be distinct single characters")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """The vocabulary of a text: its distinct characters, sorted."""
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """Text -> int array of token ids; unknown characters raise TokenizerError."""
        try:
            return np.fromiter((self.stoi[c] for c in text), dtype=np.int64, count=len(text))
        except KeyError:
            unknown = sorted(set(text) - set(self.stoi))
            shown = ", ".join(repr(c) for c in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise TokenizerError(
                f"text has {len(unknown)} character(s) not in the vocabulary: {shown}{more}"
            ) from None

    def decode(self, ids) -> str:
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise TokenizerError(f"token id out of range [0, {self.vocab_size})")
        return "".join(self.chars[i] for i in ids.tolist())

    def to_json(self) -> str:
        return "".join(self.chars)

    @classmethod
    def from_json(cls, s: str) -> "CharTokenizer":
        return cls(list(s))
