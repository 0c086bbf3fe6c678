"""Checkpoints: exact round trip, atomic writes, and a clear error for every bad file."""
import json
import os
import stat
import zipfile

import numpy as np
import pytest

from minigpt import GPT, CharTokenizer, CheckpointError, GPTConfig, load_checkpoint
from minigpt.checkpoint import META_KEY
from minigpt.optim import AdamW


@pytest.fixture
def model():
    tok = CharTokenizer.from_text("abcdefgh\n ")
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=2, n_head=2, n_embd=8)
    return GPT(cfg, seed=3, tokenizer=tok)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_is_bit_exact(tmp_path, dtype):
    tok = CharTokenizer.from_text("xyz")
    m = GPT(GPTConfig(vocab_size=3, block_size=4, n_layer=1, n_head=1, n_embd=4, dtype=dtype), seed=1, tokenizer=tok)
    path = tmp_path / "m.npz"
    m.save(path)
    m2 = GPT.load(path)
    assert m2.config == m.config
    assert m2.tokenizer.chars == tok.chars
    assert list(m2.params) == list(m.params)
    for k in m.params:
        assert m2.params[k].dtype == np.dtype(dtype)
        assert np.array_equal(m2.params[k], m.params[k])


def test_file_holds_gpt2_names_and_json_metadata(tmp_path, model):
    path = tmp_path / "m.npz"
    opt = AdamW(model.params)
    model.save(path, step=7, optimizer=opt)
    with np.load(path, allow_pickle=False) as npz:
        files = set(npz.files)
        meta = json.loads(npz[META_KEY].tobytes())
    assert {"wte.weight", "wpe.weight", "h.0.attn.c_attn.weight", "h.1.mlp.c_proj.bias", "ln_f.weight"} <= files
    assert "optimizer.m.wte.weight" in files and "optimizer.v.ln_f.bias" in files
    assert meta["format"] == "minigpt-checkpoint" and meta["version"] == 1
    assert meta["step"] == 7 and meta["config"]["n_layer"] == 2
    assert meta["vocab"] == "".join(model.tokenizer.chars)
    assert "dropout" in meta["rng_state"]


def test_truncated_file(tmp_path, model):
    path = tmp_path / "m.npz"
    model.save(path)
    data = path.read_bytes()
    for cut in (len(data) // 2, 100, 10):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or another format"):
            load_checkpoint(bad)


def test_foreign_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.txt is not a minigpt checkpoint") as err:
        load_checkpoint(text)
    assert "pickle" not in str(err.value)  # numpy's "load it unsafely" advice never reaches the user
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        load_checkpoint(empty)
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a minigpt checkpoint"):
        load_checkpoint(other)
    npy = tmp_path / "arr.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(CheckpointError, match="not a minigpt checkpoint"):
        load_checkpoint(npy)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.npz")


def test_pickled_arrays_are_refused(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, **{META_KEY: np.array([{"evil": 1}], dtype=object)})
    with pytest.raises(CheckpointError, match="pickled Python objects.*never loads pickles") as err:
        load_checkpoint(path)
    assert "allow_pickle" not in str(err.value)


def _rewrite(src, dst, change_meta=None, change_arrays=None):
    with np.load(src, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays[META_KEY].tobytes())
    if change_meta:
        change_meta(meta)
    if change_arrays:
        change_arrays(arrays)
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(dst, **arrays)


def test_shapes_that_disagree_with_config(tmp_path, model):
    path = tmp_path / "m.npz"
    model.save(path)
    bad = tmp_path / "bad.npz"
    _rewrite(path, bad, change_meta=lambda m: m["config"].update(n_embd=16))
    with pytest.raises(CheckpointError, match="shape .* but the config needs"):
        load_checkpoint(bad)
    _rewrite(path, bad, change_arrays=lambda a: a.pop("h.1.ln_2.bias"))
    with pytest.raises(CheckpointError, match="missing parameters.*h.1.ln_2.bias"):
        load_checkpoint(bad)
    _rewrite(path, bad, change_meta=lambda m: m.update(version=99))
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(bad)
    _rewrite(path, bad, change_meta=lambda m: m["config"].update(n_head=3))
    with pytest.raises(CheckpointError, match="n_head=3"):
        load_checkpoint(bad)


def test_write_is_atomic(tmp_path, model, monkeypatch):
    path = tmp_path / "m.npz"
    model.save(path, step=1)
    before = path.read_bytes()

    def failing_savez(f, **arrays):
        f.write(b"PK partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        model.save(path, step=2)
    assert path.read_bytes() == before  # the old checkpoint is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temporary left behind
    monkeypatch.undo()
    assert load_checkpoint(path).step == 1


def test_checkpoint_is_a_zip_of_npy_members(tmp_path, model):
    path = tmp_path / "m.npz"
    model.save(path)
    with zipfile.ZipFile(path) as z:
        assert all(n.endswith(".npy") for n in z.namelist())


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_get_the_umask_permissions(tmp_path, model, umask, mask):
    from minigpt.hf import export_hf

    umask(mask)
    path = tmp_path / "m.npz"
    model.save(path)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what an ordinary write gives
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~mask
    files = export_hf(model, tmp_path / "hf")
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o666 & ~mask}  # model.safetensors too


def test_rewriting_keeps_an_existing_files_mode(tmp_path, model, umask):
    path = tmp_path / "m.npz"
    model.save(path)
    path.chmod(0o640)
    model.save(path, step=2)  # like open(path, "w"), a rewrite keeps the file's mode
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert load_checkpoint(path).step == 2
