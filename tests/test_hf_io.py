"""Export to / import from Hugging Face's GPT-2 layout without torch:
bit-exact round trips, the files written, and a clear error for every
directory minigpt cannot read."""
import json

import numpy as np
import pytest

import bpe_fixture
from minigpt import GPT, CharTokenizer, CheckpointError, GPTConfig, load_checkpoint
from minigpt.bpe import ByteLevelBPE
from minigpt.cli import main
from minigpt.hf import export_hf, import_hf
from minigpt.safetensors_io import load_file, save_file


def _model(dtype="float32", tokenizer=None, seed=0):
    tok = tokenizer or CharTokenizer.from_text("abcdefgh ij\n")
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=2, n_head=2, n_embd=8,
                    dropout=0.1, dtype=dtype)
    return GPT(cfg, seed=seed, tokenizer=tok)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_export_then_import_is_bit_exact(tmp_path, dtype):
    m = _model(dtype)
    files = export_hf(m, tmp_path / "hf")
    assert sorted(f.name for f in files) == ["config.json", "minigpt_vocab.json", "model.safetensors"]
    back, note = import_hf(tmp_path / "hf")
    assert "character vocabulary" in note
    assert back.config == m.config
    assert back.tokenizer.chars == m.tokenizer.chars
    assert list(back.params) == list(m.params)
    for k, p in m.params.items():
        assert back.params[k].dtype == p.dtype
        assert back.params[k].tobytes() == p.tobytes(), k


def test_exported_files_use_hf_names_and_config(tmp_path):
    m = _model()
    export_hf(m, tmp_path)
    tensors, meta = load_file(tmp_path / "model.safetensors")
    assert meta == {"format": "pt"}  # transformers refuses safetensors files without it
    assert set(tensors) == {"transformer." + k for k in m.params}  # lm_head is tied: not stored
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["architectures"] == ["GPT2LMHeadModel"]
    assert (cfg["n_positions"], cfg["n_embd"], cfg["n_layer"], cfg["n_head"]) == (8, 8, 2, 2)
    assert cfg["activation_function"] == "gelu_new" and cfg["tie_word_embeddings"] is True


def test_bpe_tokenizer_travels_as_gpt2_files(tmp_path):
    d = bpe_fixture.write(tmp_path / "tok")
    tok = ByteLevelBPE.from_files(d / "vocab.json", d / "merges.txt")
    m = _model(tokenizer=tok)
    export_hf(m, tmp_path / "hf")
    assert (tmp_path / "hf" / "vocab.json").is_file() and (tmp_path / "hf" / "merges.txt").is_file()
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["eos_token_id"] == tok.encoder["<|endoftext|>"]
    back, note = import_hf(tmp_path / "hf")
    assert "BPE" in note
    assert back.tokenizer.encoder == tok.encoder and back.tokenizer.merges == tok.merges


def _hf_dir(tmp_path, model, tensors=None, config=None):
    """An HF-style directory holding model's weights, optionally altered."""
    d = tmp_path / "in"
    export_hf(model, d)
    if tensors is not None:
        save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    if config is not None:
        (d / "config.json").write_text(json.dumps(config))
    return d


def test_original_gpt2_names_and_buffers_are_accepted(tmp_path):
    m = _model()
    old = {k: v for k, v in m.params.items()}  # the original files have no "transformer." prefix
    for i in range(m.config.n_layer):  # ...and carry the causal mask as buffers
        old[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 8, 8), np.float32))
        old[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    old["lm_head.weight"] = m.params["wte.weight"]
    back, _ = import_hf(_hf_dir(tmp_path, m, tensors=old))
    for k, p in m.params.items():
        assert np.array_equal(back.params[k], p)


def test_half_precision_is_widened_to_float32(tmp_path):
    m = _model()
    half = {"transformer." + k: v.astype(np.float16) for k, v in m.params.items()}
    back, _ = import_hf(_hf_dir(tmp_path, m, tensors=half))
    assert back.config.dtype == "float32"
    assert np.array_equal(back.params["wte.weight"], m.params["wte.weight"].astype(np.float16).astype(np.float32))


def test_missing_unexpected_and_misshapen_tensors_are_named(tmp_path):
    m = _model()
    t = {"transformer." + k: v for k, v in m.params.items()}
    del t["transformer.h.1.mlp.c_fc.bias"]
    t["transformer.h.0.attn.q_attn.weight"] = np.zeros((8, 8), np.float32)
    with pytest.raises(CheckpointError, match=r"missing h\.1\.mlp\.c_fc\.bias; unexpected h\.0\.attn\.q_attn\.weight"):
        import_hf(_hf_dir(tmp_path, m, tensors=t))
    t = {"transformer." + k: v for k, v in m.params.items()}
    t["transformer.wpe.weight"] = np.zeros((9, 8), np.float32)
    with pytest.raises(CheckpointError, match=r"wpe\.weight is \(9, 8\), config.json needs \(8, 8\)"):
        import_hf(_hf_dir(tmp_path, m, tensors=t))
    t = {"transformer." + k: v for k, v in m.params.items()}
    t["lm_head.weight"] = m.params["wte.weight"] + 1
    with pytest.raises(CheckpointError, match="lm_head.weight differs"):
        import_hf(_hf_dir(tmp_path, m, tensors=t))


@pytest.mark.parametrize("change, message", [
    ({"model_type": "llama"}, "not 'gpt2'"),
    ({"activation_function": "relu"}, "activation_function='relu'"),
    ({"n_inner": 7}, "n_inner=7"),
    ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ({"tie_word_embeddings": False}, "tie_word_embeddings"),
])
def test_gpt2_variants_minigpt_cannot_run_are_refused(tmp_path, change, message):
    m = _model()
    cfg = json.loads(json.dumps(_hf_config_of(m, tmp_path)))
    cfg.update(change)
    with pytest.raises(CheckpointError, match=message):
        import_hf(_hf_dir(tmp_path, m, config=cfg))


def _hf_config_of(m, tmp_path):
    export_hf(m, tmp_path / "cfg")
    return json.loads((tmp_path / "cfg" / "config.json").read_text())


def test_pickle_only_directory_is_refused_with_the_conversion(tmp_path):
    d = tmp_path / "old"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (d / "pytorch_model.bin").write_bytes(b"\x80\x02pickle")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*pickle.*save_pretrained"):
        import_hf(d)
    (d / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        import_hf(d)
    with pytest.raises(CheckpointError, match="no config.json"):
        import_hf(tmp_path)


def test_sharded_weights_are_read_through_their_index(tmp_path):
    m = _model()
    d = _hf_dir(tmp_path, m)
    (d / "model.safetensors").unlink()
    names = ["transformer." + k for k in m.params]
    half = len(names) // 2
    shards = {"a.safetensors": names[:half], "b.safetensors": names[half:]}
    for shard, keys in shards.items():
        save_file({k: m.params[k[len("transformer."):]] for k in keys}, d / shard)
    index = {"weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    back, _ = import_hf(d)
    assert all(np.array_equal(back.params[k], p) for k, p in m.params.items())


def test_without_tokenizer_files_import_works_and_says_what_sampling_needs(tmp_path, capsys):
    m = _model()
    d = _hf_dir(tmp_path, m)
    (d / "minigpt_vocab.json").unlink()
    assert main(["import-hf", str(d), str(tmp_path / "m.npz")]) == 0
    err = capsys.readouterr().err
    assert "vocab.json" in err and "merges.txt" in err and "sample" in err
    loaded = load_checkpoint(tmp_path / "m.npz").model
    assert loaded.tokenizer is None
    assert loaded.generate(np.array([1, 2]), 3, temperature=0).shape == (5,)
    assert main(["sample", str(tmp_path / "m.npz")]) == 2  # one-line error: no vocabulary


def test_cli_round_trip_and_sampling_with_bpe(tmp_path, capsys):
    d = bpe_fixture.write(tmp_path / "tok")
    m = _model(tokenizer=ByteLevelBPE.from_files(d / "vocab.json", d / "merges.txt"), seed=4)
    m.save(tmp_path / "a.npz")
    assert main(["export-hf", str(tmp_path / "a.npz"), str(tmp_path / "hf")]) == 0
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "b.npz")]) == 0
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "b.npz"), "--prompt", " the fox", "--tokens", "4",
                 "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    ids = m.generate(m.tokenizer.encode(" the fox"), 4, temperature=0)
    assert out.rstrip("\n") == m.tokenizer.decode(ids).rstrip("\n")


def test_import_shows_a_progress_bar_once_it_takes_a_while(tmp_path, capsys, monkeypatch):
    import minigpt.hf

    d = _hf_dir(tmp_path, _model())
    assert main(["import-hf", str(d), str(tmp_path / "quick.npz")]) == 0
    assert "import-hf:" not in capsys.readouterr().err  # a small model is done before the bar's delay
    monkeypatch.setattr(minigpt.hf, "BAR_DELAY", 0.0)  # as if it had taken longer
    assert main(["import-hf", str(d), str(tmp_path / "slow.npz")]) == 0
    err = capsys.readouterr().err
    assert "import-hf:" in err and "/2 " in err  # the bar counts the two stages (reading, writing)
    assert load_checkpoint(tmp_path / "slow.npz").model.num_params() == _model().num_params()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["import-hf", str(tmp_path / "nowhere"), str(tmp_path / "m.npz")]) == 2
    assert main(["export-hf", str(tmp_path / "missing.npz"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("minigpt: error:") for line in err)
