"""GPT-2 small's commands (README, "GPT-2 small on a laptop"): a random
GPT-2-shaped Hugging Face directory (tests/hf_fixture.py) imported, then
quantized (GPTQ 4-bit, int8), pruned (Wanda 50%, heads) and sampled from,
through the CLI, with the README's own command lines.

By default at a small GPT-2 shape (GPT-2's vocabulary of 50257, 2 layers,
64 wide), so the chain runs in every test run and cannot rot; the slow
test runs it at 124M parameters. Also: what makes the chain fit in memory
at that scale (calibration carried block by block with no logits,
evaluation a few windows at a time) gives the numbers the plain way does.
"""
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

import hf_fixture
from minigpt import GPT, GPTConfig, load_checkpoint
from minigpt.blockwise import BlockInputs
from minigpt.cli import main
from minigpt.data import Dataset
from minigpt.hf import import_hf
from minigpt.layers.block import LINEARS
from minigpt.quant.gptq import cholesky, gptq_params, inverse_cholesky, lower_inverse
from minigpt.safetensors_io import load_file
from minigpt.train import evaluate

README = Path(__file__).resolve().parents[1] / "README.md"
SMALL = dict(n_layer=2, n_head=2, n_embd=64, block_size=128, vocab_size=50257)


def readme_commands() -> list[list[str]]:
    """The minigpt command lines of the README's "GPT-2 small on a laptop" code block."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## GPT-2 small on a laptop"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.startswith("minigpt ")]


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    return hf_fixture.write_gpt2_dir(tmp_path_factory.mktemp("gpt2") / "gpt2", **SMALL)


# ------------------------------------------------------------------ fixture
def test_fixture_has_gpt2_files_and_a_full_vocabulary(small_dir):
    assert sorted(p.name for p in small_dir.iterdir()) == ["config.json", "merges.txt", "model.safetensors",
                                                           "vocab.json"]
    tensors, meta = load_file(small_dir / "model.safetensors")
    assert meta == {"format": "pt"} and "h.0.attn.bias" in tensors  # the original file's mask buffer
    model, note = import_hf(small_dir)
    assert "BPE" in note and model.tokenizer.vocab_size == 50257 == model.config.vocab_size
    assert model.tokenizer.encoder["<|endoftext|>"] == 50256 and len(model.tokenizer.merges) == 50000
    ids = np.arange(50257)
    assert len(model.tokenizer.decode(ids)) > 0  # every id a sampler can draw decodes
    text = "def main(args):\n    return 0\n"
    assert model.tokenizer.decode(model.tokenizer.encode(text)) == text
    for name, a in tensors.items():
        if not name.endswith("attn.bias"):
            assert np.array_equal(model.params[name], a), name
    assert model.num_params() == 2 * 12 * 64 ** 2 + 2 * 13 * 64 + 50257 * 64 + 128 * 64 + 2 * 64


def test_gpt2_small_shape_counts_124m_parameters():
    from minigpt.model import param_shapes

    cfg = GPTConfig(**hf_fixture.GPT2_SMALL)
    assert sum(int(np.prod(s)) for s in param_shapes(cfg).values()) == 124_439_808  # GPT-2 small's count


# ---------------------------------------------------------- the command chain
def run_chain(tmp_path, hf_dir, capsys):
    """Run the README's commands in tmp_path with its directory "gpt2" -> hf_dir; {command line: stdout}."""
    (tmp_path / "gpt2").symlink_to(hf_dir.resolve(), target_is_directory=True)
    outputs = {}
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for argv in readme_commands():
            assert main(argv[1:]) == 0, argv
            outputs[" ".join(argv)] = capsys.readouterr().out
    finally:
        os.chdir(cwd)
    return outputs


def check_chain(tmp_path, outputs):
    cmds = readme_commands()
    verbs = [c[1] for c in cmds]
    assert verbs[:5] == ["import-hf", "quantize", "quantize", "prune", "prune"]
    assert verbs.count("sample") >= 5  # the float model and each of the four
    base = load_checkpoint(tmp_path / "gpt2.npz").model
    q4 = load_checkpoint(tmp_path / "gpt2-gptq4.npz")
    assert q4.meta["quantization"]["method"] == "gptq" and q4.meta["quantization"]["bits"] == 4
    assert all(f"h.{i}.{n}.weight.int4" in q4.model.params for i in range(base.config.n_layer) for n in LINEARS)
    q8 = load_checkpoint(tmp_path / "gpt2-int8.npz")
    assert all(f"h.{i}.{n}.weight.int8" in q8.model.params for i in range(base.config.n_layer) for n in LINEARS)
    wanda = load_checkpoint(tmp_path / "gpt2-wanda50.npz")
    assert all(int((~m).sum()) == m.size // 2 for m in wanda.masks.values())  # per output column, half
    heads = load_checkpoint(tmp_path / "gpt2-heads.npz").model
    assert sum(h for h, _ in heads.layer_shapes()) < sum(h for h, _ in base.layer_shapes())
    for cmd, out in outputs.items():
        if cmd.startswith("minigpt sample"):
            assert out.startswith("def main("), cmd
        if cmd.startswith(("minigpt quantize", "minigpt prune")):
            assert "tokens/s" in out and "val loss" in out, cmd


def test_readme_commands_run_at_a_small_gpt2_shape(small_dir, tmp_path, capsys):
    check_chain(tmp_path, run_chain(tmp_path, small_dir, capsys))


@pytest.mark.slow
def test_readme_commands_run_at_gpt2_small_scale(tmp_path, capsys):
    """124M parameters (README, "GPT-2 small on a laptop"): 12 min 52 s on the two busy cores,
    4.7 GB peak for the whole chain in one process (each command alone: 2.7 GB at most)."""
    d = hf_fixture.write_gpt2_dir(tmp_path / "hf", **hf_fixture.GPT2_SMALL)
    work = tmp_path / "run"
    work.mkdir()
    check_chain(work, run_chain(work, d, capsys))


# ------------------------------------------------ what makes it fit, and fast
def _small_model(seed=0):
    cfg = GPTConfig(vocab_size=97, block_size=16, n_layer=3, n_head=2, n_embd=16, dtype="float64")
    return GPT(cfg, seed=seed, backend="numpy")


def test_block_inputs_are_what_activations_give_on_the_changed_model():
    model = _small_model()
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, 97, (2, 16)), rng.integers(0, 97, (3, 16))]
    changed = dict(model.params)
    runner = BlockInputs(model, batches)
    for i in range(3):
        for b, acts in zip(batches, runner.inputs(i, changed)):
            ref = GPT(model.config, params=changed, backend="numpy").activations(b)
            for n in LINEARS:
                np.testing.assert_array_equal(acts[n], ref[f"h.{i}.{n}"])
        changed[f"h.{i}.mlp.c_fc.weight"] = changed[f"h.{i}.mlp.c_fc.weight"] * 0.5  # block i "quantized"
        runner.advance(i, changed)


def test_gptq_and_wanda_compute_no_logits(monkeypatch):
    """At GPT-2's vocabulary 128 x 256 calibration tokens would make 6.6 GB of logits: no whole forward."""
    from minigpt.prune.wanda import wanda_masks

    model = _small_model()
    idx = np.random.default_rng(2).integers(0, 97, (4, 16))

    def refuse(*a, **k):
        raise AssertionError("a whole-model forward (logits) during calibration")

    monkeypatch.setattr(GPT, "forward", refuse)
    params, errors = gptq_params(model, [idx[:2], idx[2:]], "int4", 4, 8)
    assert len(errors) == 12 and all(e["gptq"] <= e["rtn"] * (1 + 1e-9) for e in errors.values())
    masks = wanda_masks(model, idx, 0.5)
    assert len(masks) == 12


def test_wanda_chunks_give_the_unchunked_masks(monkeypatch):
    import minigpt.prune.wanda as wanda

    model = _small_model()
    idx = np.random.default_rng(3).integers(0, 97, (6, 16))
    whole = wanda.wanda_masks(model, idx, 0.5)
    monkeypatch.setattr(wanda, "CHUNK_TOKENS", 32)  # two windows a chunk
    chunked = wanda.wanda_masks(model, idx, 0.5)
    assert all(np.array_equal(whole[n], chunked[n]) for n in whole)


def test_evaluate_a_few_windows_at_a_time_gives_the_same_loss(monkeypatch):
    import importlib

    train_mod = importlib.import_module("minigpt.train")  # the package's `train` is the function

    model = _small_model()
    ids = np.random.default_rng(4).integers(0, 97, 2000)
    ds = Dataset(ids[:1500], ids[1500:], 16)
    whole = evaluate(model, ds, "val", 8)
    monkeypatch.setattr(train_mod, "EVAL_LOGITS", 3 * 16 * 97)  # three windows a forward
    np.testing.assert_allclose(evaluate(model, ds, "val", 8), whole, rtol=1e-12)  # float64: summation order only


@pytest.mark.parametrize("n", [5, 300, 700])
def test_recursive_cholesky_and_triangular_inverse(n):
    """float64 throughout: errors of a few hundred ulps of the matrix norm at most."""
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n + 20, n))
    H = a.T @ a / n
    L = cholesky(H)
    np.testing.assert_array_equal(L, np.tril(L))
    np.testing.assert_allclose(L @ L.T, H, atol=1e-12 * np.abs(H).max() * n)
    np.testing.assert_allclose(lower_inverse(L) @ L, np.eye(n), atol=1e-10)
    U = inverse_cholesky(H, damp=0.01)
    Hd = H + 0.01 * np.mean(np.diag(H)) * np.eye(n)
    np.testing.assert_array_equal(U, np.triu(U))
    assert (np.diag(U) > 0).all()  # the unique factor: the one the earlier LAPACK-only code gave
    np.testing.assert_allclose(U.T @ U @ Hd, np.eye(n), atol=1e-10)
    ref = np.linalg.cholesky(np.linalg.inv(Hd)).T  # U^T U = Hd^-1 with U^T lower: LAPACK's way
    np.testing.assert_allclose(U, ref, rtol=1e-8, atol=1e-12 * np.abs(ref).max())


# ------------------------------------------------------------- user errors
def _one_line(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minigpt: error:"), err
    for f in fragments:
        assert f in err[0], (f, err[0])


def test_import_hf_takes_out_or_the_positional_path(small_dir, tmp_path, capsys):
    _one_line(capsys, ["import-hf", str(small_dir)], "--out")
    _one_line(capsys, ["import-hf", str(small_dir), str(tmp_path / "a.npz"), "--out", str(tmp_path / "b.npz")],
              "a.npz", "b.npz")


def test_bad_calibration_lengths_get_one_line(small_dir, tmp_path, capsys):
    ckpt = tmp_path / "g.npz"
    assert main(["import-hf", str(small_dir), "--out", str(ckpt)]) == 0
    capsys.readouterr()
    q = ["quantize", str(ckpt), "--out", str(tmp_path / "q.npz")]
    _one_line(capsys, q + ["--bits", "4", "--method", "gptq", "--calib-length", "129"], "129", "128")
    _one_line(capsys, q + ["--bits", "4", "--calib-length", "64"], "--calib-length", "round to nearest")
    p = ["prune", str(ckpt), "--out", str(tmp_path / "p.npz"), "--method", "wanda", "--sparsity", "0.5",
         "--eval-windows", "2"]
    _one_line(capsys, p + ["--calib-length", "0"], "--calib-length", "0")
    _one_line(capsys, p + ["--calib-length", "500"], "500", "128")


def test_calibration_windows_are_at_most_256_tokens():
    from minigpt.errors import MinigptError
    from minigpt.quant.cli import calibration_windows

    ids = np.arange(5000) % 97
    big = Dataset(ids[:4000], ids[4000:], 1024)
    cut = calibration_windows(big)
    assert cut.block_size == 256 and cut.train is big.train  # a view of the same ids, GPTQ's 256 tokens
    assert calibration_windows(big, 512).block_size == 512
    small = Dataset(ids[:4000], ids[4000:], 64)
    assert calibration_windows(small) is small
    with pytest.raises(MinigptError, match="block size 64"):
        calibration_windows(small, 65)


def test_gptq_shows_a_progress_bar_over_the_blocks(monkeypatch, capsys):
    import importlib

    gptq = importlib.import_module("minigpt.quant.gptq")
    monkeypatch.setattr(gptq, "PROGRESS_DELAY", 0.0)  # at GPT-2 small a block takes 20-30 s: the bar shows
    model = _small_model()
    idx = np.random.default_rng(6).integers(0, 97, (2, 16))
    gptq.gptq_params(model, [idx], "int4", 4, 8, progress=True)
    err = capsys.readouterr().err
    assert "GPTQ" in err and "3/3" in err  # three blocks, all done
    gptq.gptq_params(model, [idx], "int4", 4, 8)  # the library call is quiet by default
    assert capsys.readouterr().err == ""
