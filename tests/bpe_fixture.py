"""A tiny GPT-2-style BPE vocabulary, learned here from a few sentences, so
tokenizer tests need no download.

The merges are learned the way GPT-2's were: start from the 256 byte
symbols, repeatedly merge the most frequent adjacent pair within
pre-tokenised pieces. The vocabulary is the 256 byte symbols (in byte
order), one token per merge, then "<|endoftext|>".
"""
import json
from collections import Counter

from minigpt.bpe import bytes_to_unicode, pretokenize

TEXT = (
    "The quick brown fox jumps over the lazy dog. Then the fox's den, the dog's bone: "
    "they're there, we've seen them, I'm sure they'll stay and you'd agree.\n"
    "In 2019 there were 1234 foxes and 56 dogs; that's the theory, then and there.\n"
    "    def the_function(x):\n        return x * 2  # the answer\n"
)


def _merge_word(word, pair):
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def learn(text=TEXT, n_merges=60):
    """(encoder, merges) learned from text."""
    b2u = bytes_to_unicode()
    words = Counter(tuple(b2u[b] for b in piece.encode("utf-8")) for piece in pretokenize(text))
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for w, count in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))  # ties broken by the pair itself: deterministic
        merges.append(best)
        new = Counter()
        for w, count in words.items():
            new[_merge_word(w, best)] += count
        words = new
    encoder = {b2u[b]: b for b in range(256)}
    for a, b in merges:
        encoder.setdefault(a + b, len(encoder))
    encoder["<|endoftext|>"] = len(encoder)
    return encoder, merges


def write(directory):
    """Write vocab.json + merges.txt (GPT-2's file formats) into directory."""
    encoder, merges = learn()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    lines = "".join(f"{a} {b}\n" for a, b in merges)
    (directory / "merges.txt").write_text("#version: 0.2\n" + lines, encoding="utf-8")
    return directory
