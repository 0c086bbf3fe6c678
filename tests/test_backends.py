"""The model computes the same numbers with the numpy and the numba backend."""
import dataclasses

import numpy as np
import pytest

from minigpt import GPT, CharTokenizer, Dataset, GPTConfig, TrainConfig, train
from minigpt.model import DEFAULT_BACKEND


def _setup(dtype):
    rng = np.random.default_rng(0)
    words = ["def ", "return ", "x", "y", " = ", "(", ")", ":\n", "    ", "1", "2", "+"]
    text = "".join(rng.choice(words, 2000))
    tok = CharTokenizer.from_text(text)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=19, n_layer=2, n_head=2, n_embd=16,
                    dropout=0.1, dtype=dtype)
    ds = Dataset.from_text(text, tok, cfg.block_size)
    tcfg = TrainConfig(steps=8, batch_size=3, lr=3e-3, warmup_steps=2, eval_every=4, eval_batches=1,
                       checkpoint_every=100, seed=0)
    return tok, cfg, ds, tcfg


# float64: after 8 AdamW steps the runs differ by rounding only (~1e-15 per
# op, amplified by Adam's normalisation of tiny gradients). float32: the
# attention rows differ by ~1e-7 relative, so the losses by ~1e-6.
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-4)])
def test_training_losses_agree(dtype, tol):
    tok, cfg, ds, tcfg = _setup(dtype)
    runs = {}
    for backend in ("numpy", "numba"):
        model = GPT(cfg, seed=0, backend=backend, tokenizer=tok)
        runs[backend] = train(model, ds, tcfg, progress=False)
    a, b = runs["numpy"], runs["numba"]
    assert [s for s, _ in a.train_losses] == [s for s, _ in b.train_losses]
    np.testing.assert_allclose([x for _, x in b.train_losses], [x for _, x in a.train_losses], rtol=tol)
    np.testing.assert_allclose([x for _, x in b.val_losses], [x for _, x in a.val_losses], rtol=tol)


# One forward and backward: float64 differs by rounding only (~1e-15 an op;
# 1e-9 leaves room for the cancellation in small gradients); float32 by a
# few ulps of each op (~1e-7) growing through the layers, so 1e-4 relative
# of the largest entry of each gradient.
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-9), ("float32", 1e-4)])
def test_gradients_agree(dtype, tol):
    tok, cfg, ds, _ = _setup(dtype)
    cfg = dataclasses.replace(cfg, dropout=0.0)
    x, y = ds.get_batch("train", 4, np.random.default_rng(2))
    grads = {}
    for backend in ("numpy", "numba"):
        model = GPT(cfg, seed=0, backend=backend, tokenizer=tok)
        model.forward(x, y)
        grads[backend] = model.backward()
    for name, ref in grads["numpy"].items():
        got = grads["numba"][name]
        assert got.dtype == ref.dtype, name
        np.testing.assert_allclose(got, ref, rtol=0, atol=tol * np.abs(ref).max(), err_msg=name)


def test_generation_with_kv_cache_agrees():
    tok, cfg, _, _ = _setup("float64")
    outs = [GPT(cfg, seed=1, backend=b).generate([1, 2, 3], 12, temperature=0) for b in ("numpy", "numba")]
    np.testing.assert_array_equal(outs[0], outs[1])


def test_default_backend_is_numba():
    assert DEFAULT_BACKEND == "numba"


def test_cli_backend_flag_gives_the_same_run(tmp_path, capsys):
    from minigpt.cli import main

    rng = np.random.default_rng(0)
    text = tmp_path / "t.txt"
    text.write_text("".join(rng.choice(["def ", "x", " = ", "(", ")", ":\n", "1"], 1500)), encoding="utf-8")
    tiny = ["--block-size", "16", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--batch-size", "4",
            "--steps", "4", "--eval-every", "2", "--no-progress", "--dtype", "float64"]
    outputs = {}
    for backend in ("numpy", "numba"):
        ckpt = tmp_path / f"{backend}.npz"
        assert main(["train", "--text", str(text), "--out", str(ckpt), "--backend", backend, *tiny]) == 0
        assert f"backend {backend}" in capsys.readouterr().err
        assert main(["sample", str(ckpt), "--prompt", "x", "--tokens", "8", "--temperature", "0",
                     "--backend", backend]) == 0
        assert main(["eval", str(ckpt), "--text", str(text), "--max-batches", "2", "--backend", backend]) == 0
        outputs[backend] = capsys.readouterr().out.splitlines()
    # same sample; eval's loss agrees to the printed 4 decimals
    assert outputs["numpy"][-2:] == outputs["numba"][-2:]
