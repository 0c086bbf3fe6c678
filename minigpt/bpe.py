"""GPT-2's byte-level BPE tokenizer, read from ``vocab.json`` + ``merges.txt``.

Encoding a text takes three steps:
1. pre-tokenise: cut the text into pieces with GPT-2's rule (below), so
   merges never cross a word boundary;
2. bytes to symbols: each piece's UTF-8 bytes become printable characters
   through a fixed byte -> character map (``bytes_to_unicode``), so any
   text, in any script, is covered by 256 base symbols;
3. merge: repeatedly join the adjacent pair of symbols with the lowest rank
   in merges.txt (rank = line number) until no listed pair remains; each
   final symbol is looked up in vocab.json.
Decoding joins the symbols, maps characters back to bytes, and decodes
UTF-8 (invalid sequences become U+FFFD, as in GPT-2).

GPT-2 pre-tokenises with the regular expression
    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
tried left to right at each position. Python's ``re`` has no \\p{L}
(letter) or \\p{N} (number), so ``pretokenize`` below scans the text by
hand, classifying each character with ``unicodedata`` into letter, number,
whitespace (Unicode's White_Space property, which is what \\s means there)
or other, and follows the alternatives in the same order. (The categories
are those of Python's own Unicode version; a character assigned only in a
newer version counts as "other" here.)
"""
from __future__ import annotations

import json
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import TokenizerError

KIND = "gpt2-bpe"  # how checkpoints name this tokenizer
SPECIAL = "<|endoftext|>"  # GPT-2's one special token: never split, never merged
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
# Unicode's White_Space property: exactly the characters \s matches in GPT-2's regex.
_WHITESPACE = frozenset(
    [chr(c) for c in range(0x09, 0x0E)]
    + [" ", "\x85", "\xa0", "\u1680", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"]
    + [chr(c) for c in range(0x2000, 0x200B)]
)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The byte -> character map: printable Latin-1 bytes ('!'..'~',
    '¡'..'¬', '®'..'ÿ') stand for themselves; the other 68 bytes (control
    characters, space, ...) get the characters 256, 257, ... in byte order.
    So the space byte 0x20 becomes 'Ġ' (U+0120)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def _kind(c: str) -> str:
    """'L' letter, 'N' number, 'S' whitespace, 'P' anything else."""
    if c in _WHITESPACE:
        return "S"
    cat = unicodedata.category(c)
    return cat[0] if cat[0] in "LN" else "P"


def pretokenize(text: str) -> list[str]:
    """Cut text into GPT-2's pieces; "".join(pieces) == text.

    At each position, the first rule that applies wins:
    1. a contraction 's 't 're 've 'm 'll 'd (case-sensitive);
    2. an optional single space, then a run of letters, or of numbers, or of
       other characters (the ' ?\\p{L}+', ' ?\\p{N}+', ' ?[^\\s\\p{L}\\p{N}]+' rules);
    3. a run of whitespace; if a non-space follows it, the run stops one
       character short, so its last space can start the next word
       (the '\\s+(?!\\S)' rule; a lone space before a symbol falls to '\\s+').
    """
    kinds = [_kind(c) for c in text]
    n, i, out = len(text), 0, []
    while i < n:
        if text[i] == "'":
            hit = next((c for c in _CONTRACTIONS if text.startswith(c, i)), None)
            if hit:
                out.append(hit)
                i += len(hit)
                continue
        # rule 2: the space prefix is taken only if a non-space follows it
        j = i + 1 if text[i] == " " and i + 1 < n and kinds[i + 1] != "S" else i
        if kinds[j] != "S":
            e = j + 1
            while e < n and kinds[e] == kinds[j]:
                e += 1
        else:  # rule 3
            e = i + 1
            while e < n and kinds[e] == "S":
                e += 1
            if e < n and e - i > 1:
                e -= 1
        out.append(text[i:e])
        i = e
    return out


class ByteLevelBPE:
    """GPT-2's tokenizer.

    encoder: symbol string -> id (vocab.json); merges: ordered (left, right)
    pairs (merges.txt), earlier = merged first.
    """

    def __init__(self, encoder: dict[str, int], merges):
        if not encoder:
            raise TokenizerError("a BPE vocabulary needs at least one token")
        self.encoder = dict(encoder)
        self.merges = [tuple(m) for m in merges]
        if any(len(m) != 2 for m in self.merges):
            raise TokenizerError("every BPE merge must be a pair of symbols")
        self.ranks = {m: r for r, m in enumerate(self.merges)}
        self.decoder = {i: s for s, i in self.encoder.items()}
        if len(self.decoder) != len(self.encoder) or min(self.decoder) < 0:
            raise TokenizerError("BPE vocabulary ids must be distinct and non-negative")
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self._cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ files
    @classmethod
    def from_files(cls, vocab_path, merges_path) -> "ByteLevelBPE":
        try:
            encoder = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
            lines = Path(merges_path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TokenizerError(f"cannot read the BPE files {vocab_path}, {merges_path}: {e}") from None
        if not isinstance(encoder, dict) or not all(isinstance(v, int) for v in encoder.values()):
            raise TokenizerError(f"{vocab_path} is not a JSON object of token -> id")
        # the first line is a "#version: 0.2" comment in GPT-2's file
        merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
        return cls(encoder, merges)

    def save(self, directory):
        """Write vocab.json and merges.txt (what GPT2Tokenizer reads)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "vocab.json").write_text(json.dumps(self.encoder, ensure_ascii=False), encoding="utf-8")
        body = "".join(f"{a} {b}\n" for a, b in self.merges)
        (d / "merges.txt").write_text("#version: 0.2\n" + body, encoding="utf-8")

    def to_meta(self) -> dict:
        """JSON-able form kept inside a minigpt checkpoint."""
        return {"kind": KIND, "encoder": self.encoder, "merges": [f"{a} {b}" for a, b in self.merges]}

    @classmethod
    def from_meta(cls, meta: dict) -> "ByteLevelBPE":
        return cls(meta["encoder"], [tuple(m.split(" ")) for m in meta["merges"]])

    @property
    def vocab_size(self) -> int:
        """One more than the largest id (ids need not be dense)."""
        return max(self.decoder) + 1

    # --------------------------------------------------------------- encoding
    def _merge(self, symbols: list[str]) -> list[str]:
        """Apply merges lowest rank first; all occurrences of the chosen pair,
        left to right, are joined in one pass."""
        inf = len(self.ranks)
        while len(symbols) > 1:
            pairs = list(zip(symbols, symbols[1:]))
            best = min(pairs, key=lambda p: self.ranks.get(p, inf))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def _encode_piece(self, piece: str) -> list[int]:
        if piece not in self._cache:
            symbols = self._merge([self.byte_encoder[b] for b in piece.encode("utf-8")])
            try:
                self._cache[piece] = [self.encoder[s] for s in symbols]
            except KeyError as e:
                raise TokenizerError(f"BPE symbol {e.args[0]!r} (from {piece!r}) is not in the vocabulary") from None
        return self._cache[piece]

    def encode(self, text: str) -> np.ndarray:
        """Text -> int64 ids. "<|endoftext|>" in the text, if it is in the
        vocabulary, becomes its single id, as in GPT-2."""
        special = SPECIAL if SPECIAL in self.encoder else None
        chunks = text.split(special) if special else [text]
        ids: list[int] = []
        for k, chunk in enumerate(chunks):
            if k:
                ids.append(self.encoder[special])
            for piece in pretokenize(chunk):
                ids.extend(self._encode_piece(piece))
        return np.array(ids, dtype=np.int64)

    def decode(self, ids) -> str:
        ids = np.asarray(ids).reshape(-1).tolist()
        try:
            text = "".join(self.decoder[i] for i in ids)
        except KeyError as e:
            raise TokenizerError(f"token id {e.args[0]} is not in the vocabulary") from None
        # characters outside the byte map (none in GPT-2's vocab) stand for themselves
        data = b"".join(bytes([self.byte_decoder[c]]) if c in self.byte_decoder else c.encode("utf-8")
                        for c in text)
        return data.decode("utf-8", errors="replace")
