"""Tokenizer round trip, corpus loading and its errors, the split and batches."""
import numpy as np
import pytest

from minigpt import CharTokenizer, CorpusError, Dataset, TokenizerError, load_corpus
from minigpt.data import EMBEDDED, read_text_file, stdlib_corpus


def test_round_trip_is_exact():
    text = "def f(x):\n\treturn x ** 2  # ünïcode ok\n"
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert ids.dtype == np.int64 and ids.shape == (len(text),)
    assert tok.decode(ids) == text
    assert tok.vocab_size == len(set(text))
    assert tok.chars == sorted(set(text))  # sorted vocabulary: ids are deterministic


def test_unknown_characters_are_listed_not_dropped():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(TokenizerError) as e:
        tok.encode("abxyx")
    assert "'x'" in str(e.value) and "'y'" in str(e.value) and "2 character" in str(e.value)


def test_decode_rejects_out_of_range_ids():
    tok = CharTokenizer.from_text("ab")
    with pytest.raises(TokenizerError):
        tok.decode([0, 2])


def test_vocabulary_json_round_trip():
    tok = CharTokenizer.from_text("hello\n world\t")
    assert CharTokenizer.from_json(tok.to_json()).chars == tok.chars


def test_embedded_corpus_is_deterministic_ascii_and_sized():
    text, source = load_corpus()
    assert source == EMBEDDED
    assert len(text) == 3_000_000
    assert text == stdlib_corpus()  # same selection on every call
    vocab = set(text)
    assert vocab <= {chr(c) for c in range(32, 127)} | {"\n", "\t"}
    assert 80 <= len(vocab) <= 100
    assert text.startswith("# file: ")


def test_text_file_errors(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        read_text_file(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(CorpusError, match="empty"):
        read_text_file(empty)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(CorpusError, match="not valid UTF-8.*0xe9 at offset 3"):
        read_text_file(latin1)
    with pytest.raises(CorpusError, match="not a file"):
        read_text_file(tmp_path)
    good = tmp_path / "good.txt"
    good.write_text("h\u00e9llo", encoding="utf-8")
    assert load_corpus(good) == ("h\u00e9llo", str(good))


def test_too_short_text_is_a_clear_error():
    tok = CharTokenizer.from_text("abcdefghij")
    with pytest.raises(CorpusError, match="block_size \\+ 1"):
        Dataset.from_text("abcdefghij" * 3, tok, block_size=8)


def test_split_is_last_ten_percent_and_batches_shift_by_one():
    text = "".join(chr(97 + i % 26) for i in range(1000))
    tok = CharTokenizer.from_text(text)
    ds = Dataset.from_text(text, tok, block_size=16)
    ids = tok.encode(text)
    assert len(ds.val) == 100 and np.array_equal(ds.val, ids[-100:])
    assert np.array_equal(ds.train, ids[:900])
    x, y = ds.get_batch("train", 8, np.random.default_rng(0))
    assert x.shape == y.shape == (8, 16)
    assert np.array_equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    x2, _ = ds.get_batch("train", 8, np.random.default_rng(0))
    assert np.array_equal(x, x2)  # seeded: reproducible


def test_eval_windows_cover_the_split_in_order():
    text = "".join(chr(97 + i % 26) for i in range(2000))
    tok = CharTokenizer.from_text(text)
    ds = Dataset.from_text(text, tok, block_size=10)
    xs = np.concatenate([x for x, _ in ds.iter_eval_batches("val", 4)])
    assert xs.shape == ((len(ds.val) - 1) // 10, 10)
    assert np.array_equal(xs.reshape(-1), ds.val[: xs.size])


def test_limited_eval_spreads_windows_over_the_split():
    text = "".join(chr(97 + i % 26) for i in range(20000))
    tok = CharTokenizer.from_text(text)
    ds = Dataset.from_text(text, tok, block_size=10)
    batches = list(ds.iter_eval_batches("val", 4, max_batches=3))
    assert len(batches) == 3 and all(x.shape == (4, 10) for x, _ in batches)
    xs = np.concatenate([x for x, _ in batches])
    n_windows = (len(ds.val) - 1) // 10
    expected = np.linspace(0, n_windows - 1, 12).round().astype(int) * 10  # first window to last
    assert expected[0] == 0 and expected[-1] == (n_windows - 1) * 10
    assert np.array_equal(xs, np.stack([ds.val[s : s + 10] for s in expected]))
