"""The file formats and the tokenizer against their reference
implementations: the `safetensors` package, the `regex` module running
GPT-2's own pre-tokenisation pattern, and transformers' GPT2Tokenizer on the
same vocab.json + merges.txt. Needs the crosscheck extra; skipped otherwise
(a failure under MINIGPT_REQUIRE_CROSSCHECK=1)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bpe_fixture
from crosscheck_support import need

st_numpy = need("safetensors.numpy")
regex = need("regex")
transformers = need("transformers")

from minigpt.bpe import ByteLevelBPE, pretokenize  # noqa: E402
from minigpt.safetensors_io import load_file, save_file  # noqa: E402

GPT2_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
# characters that exercise every branch: letters and digits in several
# scripts, contractions, plain / other whitespace, punctuation, emoji,
# and \x1c, which Python calls a space but Unicode's White_Space does not
ALPHABET = list("ab Zé中ٮ9٣²'srtvemld  \t\n\r.,!?-_\u00a0\u2003\u3000\x1c\x85😀")
# Python's unicodedata knows the Unicode version of its release (14.0 for
# Python 3.11); `regex` may know a newer one, where a character unassigned
# here ("other" to us) is a letter. So random text keeps to assigned characters.
texts = (st.text(alphabet=st.sampled_from(ALPHABET), max_size=30)
         | st.text(alphabet=st.characters(blacklist_categories=("Cn", "Cs")), max_size=30))


def _tensors():
    rng = np.random.default_rng(0)
    return {"b.w": rng.normal(size=(3, 4)).astype(np.float32), "a.x": rng.normal(size=(5,)),
            "h": rng.normal(size=(2, 2)).astype(np.float16), "i": np.arange(4, dtype=np.int64),
            "s": np.array(1.5, np.float32)}


def test_safetensors_package_reads_our_files(tmp_path):
    t = _tensors()
    save_file(t, tmp_path / "ours.safetensors", metadata={"format": "pt"})
    theirs = st_numpy.load_file(str(tmp_path / "ours.safetensors"))
    assert set(theirs) == set(t)
    for k in t:
        assert theirs[k].dtype == t[k].dtype and np.array_equal(theirs[k], t[k]), k


def test_we_read_the_safetensors_packages_files(tmp_path):
    t = _tensors()
    st_numpy.save_file(t, str(tmp_path / "theirs.safetensors"), metadata={"format": "pt"})
    ours, meta = load_file(tmp_path / "theirs.safetensors")
    assert meta == {"format": "pt"} and set(ours) == set(t)
    for k in t:
        assert ours[k].dtype == t[k].dtype and np.array_equal(ours[k], t[k]), k


@settings(max_examples=300, deadline=None)
@given(texts)
def test_pretokenize_equals_gpt2s_regex(text):
    assert pretokenize(text) == GPT2_PATTERN.findall(text)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    d = bpe_fixture.write(tmp_path_factory.mktemp("bpe"))
    return ByteLevelBPE.from_files(d / "vocab.json", d / "merges.txt"), transformers.GPT2Tokenizer.from_pretrained(d)


@settings(max_examples=200, deadline=None)
@given(texts)
def test_bpe_encoding_equals_gpt2tokenizer(tokenizers, text):
    ours, ref = tokenizers
    ids = ours.encode(text).tolist()
    assert ids == ref(text)["input_ids"]
    assert ours.decode(ids) == ref.decode(ids)


def test_bpe_on_the_fixture_text_and_special_token(tokenizers):
    ours, ref = tokenizers
    for text in [bpe_fixture.TEXT, "they're<|endoftext|>the end", "  leading and trailing  "]:
        ids = ours.encode(text).tolist()
        assert ids == ref(text)["input_ids"], text
        assert ours.decode(ids) == ref.decode(ids) == text


def test_exported_bpe_files_load_in_gpt2tokenizer(tokenizers, tmp_path):
    from minigpt import GPT, GPTConfig
    from minigpt.hf import export_hf

    ours, _ = tokenizers
    cfg = GPTConfig(vocab_size=ours.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=4)
    export_hf(GPT(cfg, tokenizer=ours), tmp_path)
    ref = transformers.GPT2Tokenizer.from_pretrained(tmp_path)
    assert ref(bpe_fixture.TEXT)["input_ids"] == ours.encode(bpe_fixture.TEXT).tolist()
