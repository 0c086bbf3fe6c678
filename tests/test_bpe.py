"""GPT-2's byte-level BPE: the byte map, the pre-tokenisation rule, merges by
rank, exact round trips, and checkpoints that carry the tokenizer."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bpe_fixture
from minigpt import GPT, CheckpointError, GPTConfig, load_checkpoint
from minigpt.bpe import ByteLevelBPE, bytes_to_unicode, pretokenize
from minigpt.errors import TokenizerError


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = bpe_fixture.write(tmp_path_factory.mktemp("bpe"))
    return ByteLevelBPE.from_files(d / "vocab.json", d / "merges.txt")


def test_byte_map_is_a_bijection_onto_printable_characters():
    m = bytes_to_unicode()
    assert sorted(m) == list(range(256))
    assert len(set(m.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in m.values())
    assert m[ord("A")] == "A" and m[ord(" ")] == "Ġ" and m[ord("\n")] == "Ċ"


@pytest.mark.parametrize("text, pieces", [
    ("Hello world", ["Hello", " world"]),
    ("I'm here, they'll see", ["I", "'m", " here", ",", " they", "'ll", " see"]),
    ("it's 2019!!", ["it", "'s", " 2019", "!!"]),
    ("a  b", ["a", " ", " b"]),          # a run of spaces leaves its last one to the word
    ("a\n\nb", ["a", "\n", "\n", "b"]),  # ...but only a plain space joins the word
    ("x   ", ["x", "   "]),             # trailing whitespace stays together
    ("x ?!", ["x", " ?!"]),
    ("'S 'x", ["'", "S", " '", "x"]),    # contractions are lower-case only
    ("café ١٢٣ 中文", ["café", " ١٢٣", " 中文"]),  # \p{L} and \p{N} beyond ASCII
    ("a\u00a0b", ["a", "\u00a0", "b"]),  # no-break space is whitespace, but not " "
    ("", []),
])
def test_pretokenize_follows_gpt2s_rule(text, pieces):
    assert pretokenize(text) == pieces


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_pretokenize_covers_the_text(text):
    assert "".join(pretokenize(text)) == text


def test_merges_apply_lowest_rank_first():
    b = bytes_to_unicode()
    enc = {c: i for i, c in enumerate(b.values())}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("t", "h")]
    for a, c in merges:
        enc[a + c] = len(enc)
    tok = ByteLevelBPE(enc, merges)
    assert tok.encode(" the").tolist() == [enc["Ġthe"]]
    assert tok.encode("the").tolist() == [enc["t"], enc["he"]]  # "h e" (rank 1) beats "t h" (rank 3)
    assert tok.encode("thth").tolist() == [enc["th"], enc["th"]]  # every occurrence in one pass


@settings(max_examples=100, deadline=None)
@given(st.text())
def test_decode_inverts_encode(tok, text):
    ids = tok.encode(text)
    assert ids.dtype == np.int64
    assert tok.decode(ids) == text


def test_learned_merges_shorten_the_training_text(tok):
    ids = tok.encode(bpe_fixture.TEXT)
    assert len(ids) < 0.7 * len(bpe_fixture.TEXT.encode())
    assert tok.encode(" the").tolist() == [tok.encoder["Ġthe"]]


def test_end_of_text_is_one_token(tok):
    eot = tok.encoder["<|endoftext|>"]
    ids = tok.encode("a<|endoftext|>b").tolist()
    assert ids == [tok.encoder["a"], eot, tok.encoder["b"]]
    assert tok.decode(ids) == "a<|endoftext|>b"


def test_invalid_utf8_decodes_to_replacement_characters(tok):
    e = tok.encode("é").tolist()  # two bytes, two tokens (no merge learned for them)
    assert len(e) == 2
    assert tok.decode(e[:1]) == "\ufffd"


def test_errors(tok, tmp_path):
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        tok.decode([10**6])
    small = ByteLevelBPE({"a": 0}, [])
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        small.encode("b")
    (tmp_path / "vocab.json").write_text("[1, 2]")
    (tmp_path / "merges.txt").write_text("")
    with pytest.raises(TokenizerError, match="token -> id"):
        ByteLevelBPE.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    with pytest.raises(TokenizerError, match="pair"):
        ByteLevelBPE({"a": 0}, [("a", "b", "c")])


def test_save_then_read_files(tok, tmp_path):
    tok.save(tmp_path)
    again = ByteLevelBPE.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert again.encoder == tok.encoder and again.merges == tok.merges
    assert json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8")) == tok.encoder


def test_checkpoint_keeps_the_bpe_tokenizer(tok, tmp_path):
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8)
    GPT(cfg, seed=0, tokenizer=tok).save(tmp_path / "m.npz")
    loaded = load_checkpoint(tmp_path / "m.npz").model
    assert isinstance(loaded.tokenizer, ByteLevelBPE)
    assert loaded.tokenizer.encoder == tok.encoder and loaded.tokenizer.merges == tok.merges
    text = loaded.generate_text(" the", 4, temperature=0)
    assert text.startswith(" the")


def test_checkpoint_refuses_a_tokenizer_larger_than_the_model(tok, tmp_path):
    cfg = GPTConfig(vocab_size=tok.vocab_size - 1, block_size=8, n_layer=1, n_head=2, n_embd=8)
    GPT(cfg, seed=0, tokenizer=tok).save(tmp_path / "m.npz")
    with pytest.raises(CheckpointError, match="beyond config.vocab_size"):
        load_checkpoint(tmp_path / "m.npz")
