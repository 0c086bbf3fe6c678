"""The training loop: exact resume, Ctrl-C, NaN stop, schedule, clipping, AdamW."""
import math
import os
import signal

import numpy as np
import pytest

from minigpt import (GPT, CharTokenizer, Dataset, GPTConfig, TrainConfig, TrainingDiverged, evaluate,
                     load_checkpoint, load_corpus, train)
from minigpt.optim import AdamW, clip_grad_norm, lr_schedule


def _setup(dropout=0.1):
    rng = np.random.default_rng(0)
    words = ["def ", "return ", "x", "y", " = ", "(", ")", ":\n", "    ", "1", "2", "+"]
    text = "".join(rng.choice(words, 3000))
    tok = CharTokenizer.from_text(text)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=dropout)
    ds = Dataset.from_text(text, tok, cfg.block_size)
    tcfg = TrainConfig(steps=12, batch_size=4, lr=3e-3, min_lr=3e-4, warmup_steps=3,
                       eval_every=4, eval_batches=2, checkpoint_every=5, seed=0)
    return tok, cfg, ds, tcfg


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    # dropout > 0 so the dropout RNG state must be restored too
    tok, cfg, ds, tcfg = _setup(dropout=0.1)
    full = GPT(cfg, seed=0, tokenizer=tok)
    r_full = train(full, ds, tcfg, out=tmp_path / "full.npz", progress=False)

    part = GPT(cfg, seed=0, tokenizer=tok)
    r1 = train(part, ds, tcfg, out=tmp_path / "part.npz", progress=False, callback=lambda step, loss: step == 7)
    assert r1.interrupted and r1.step == 7
    ckpt = load_checkpoint(tmp_path / "part.npz")
    assert ckpt.step == 7
    r2 = train(ckpt.model, ds, ckpt.train_config, out=tmp_path / "part.npz", resume=ckpt, progress=False)

    assert r2.step == 12 and not r2.interrupted
    assert r2.train_losses == r_full.train_losses  # bit-for-bit the same losses
    assert r2.val_losses == r_full.val_losses
    for k in full.params:
        assert np.array_equal(full.params[k], ckpt.model.params[k]), k


def test_ctrl_c_saves_a_checkpoint_and_stops_cleanly(tmp_path):
    tok, cfg, ds, tcfg = _setup()
    model = GPT(cfg, seed=0, tokenizer=tok)

    def press_ctrl_c(step, loss):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    result = train(model, ds, tcfg, out=tmp_path / "m.npz", progress=False, callback=press_ctrl_c)
    assert result.interrupted and result.step == 3
    ckpt = load_checkpoint(tmp_path / "m.npz")
    assert ckpt.step == 3 and ckpt.optimizer_state["t"] == 3
    for k in model.params:
        assert np.array_equal(ckpt.model.params[k], model.params[k])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    tok, cfg, ds, tcfg = _setup()
    model = GPT(cfg, seed=0, tokenizer=tok)
    out = tmp_path / "m.npz"

    def poison(step, loss):
        if step == 6:  # after the step-5 checkpoint was written
            model.params["h.0.mlp.c_fc.weight"][0, 0] = np.nan

    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 7.*step 5\) was kept"):
        train(model, ds, tcfg, out=out, progress=False, callback=poison)
    ckpt = load_checkpoint(out)
    assert ckpt.step == 5
    assert all(np.isfinite(p).all() for p in ckpt.model.params.values())


def test_short_run_on_embedded_corpus_lowers_validation_loss():
    text, _ = load_corpus()
    tok = CharTokenizer.from_text(text)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32)
    ds = Dataset.from_text(text, tok, cfg.block_size)
    model = GPT(cfg, seed=0, tokenizer=tok)
    before = evaluate(model, ds, "val", batch_size=16, max_batches=4)
    assert before == pytest.approx(math.log(tok.vocab_size), abs=0.1)  # uniform guess at init
    tcfg = TrainConfig(steps=60, batch_size=16, lr=1e-2, min_lr=1e-3, warmup_steps=5, eval_every=60, eval_batches=4)
    result = train(model, ds, tcfg, progress=False)
    after = result.val_losses[-1][1]
    # 60 steps learn at least the character frequencies: unigram entropy of code is ~3.3 nats < ln 96 = 4.56
    assert after < before - 1.0, (before, after)


def test_lr_schedule_warmup_then_cosine():
    lr, lo, warm, total = 1.0, 0.1, 10, 110
    lrs = [lr_schedule(s, lr, lo, warm, total) for s in range(total)]
    assert lrs[:warm] == pytest.approx([(s + 1) / warm for s in range(warm)])  # linear ramp
    assert lrs[warm] == pytest.approx(lr)  # cosine starts at the peak
    assert lrs[warm + 50] == pytest.approx(lo + (lr - lo) * 0.5)  # halfway: cos(pi/2) = 0
    assert lr_schedule(total, lr, lo, warm, total) == pytest.approx(lo)
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1:]))  # monotone decay


def test_clip_grad_norm_scales_to_max_norm():
    g = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    norm = clip_grad_norm(g, 1.0)
    assert norm == pytest.approx(5.0)
    assert math.sqrt(sum((x**2).sum() for x in g.values())) == pytest.approx(1.0, rel=1e-5)
    assert g["a"] == pytest.approx([0.6, 0.0], rel=1e-5)
    small = {"a": np.array([0.3, 0.4])}
    clip_grad_norm(small, 1.0)
    assert small["a"] == pytest.approx([0.3, 0.4])  # below the limit: untouched


def test_adamw_matches_formula_and_skips_decay_on_vectors():
    w = np.array([[1.0, -2.0]])
    b = np.array([0.5])
    opt = AdamW({"w": w, "b": b}, lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.5)
    gw, gb = np.array([[0.2, -0.4]]), np.array([1.0])
    w0, b0 = w.copy(), b.copy()
    opt.step({"w": gw, "b": gb})
    # t = 1: m_hat = g, v_hat = g^2, so the Adam part is g / (|g| + eps) = sign(g)
    assert w == pytest.approx(w0 - 0.1 * (gw / (np.abs(gw) + 1e-8) + 0.5 * w0))
    assert b == pytest.approx(b0 - 0.1 * (gb / (np.abs(gb) + 1e-8)))  # no decay on a bias
    # t = 2 by hand
    m = 0.9 * ((1 - 0.9) * gw) + 0.1 * gw
    v = 0.99 * ((1 - 0.99) * gw**2) + 0.01 * gw**2
    w1 = w.copy()
    opt.step({"w": gw, "b": gb})
    upd = (m / (1 - 0.9**2)) / (np.sqrt(v / (1 - 0.99**2)) + 1e-8) + 0.5 * w1
    assert w == pytest.approx(w1 - 0.1 * upd)


def test_log_gets_one_line_per_validation_with_measured_numbers():
    tok, cfg, ds, tcfg = _setup(dropout=0.0)
    lines = []
    result = train(GPT(cfg, seed=0, tokenizer=tok), ds, tcfg, progress=False, log=lines.append)
    assert [line.split(":")[0] for line in lines] == ["step 4/12", "step 8/12", "step 12/12"]
    # the training loss logged is the mean over the steps since the previous validation
    mean_5_to_8 = np.mean([loss for step, loss in result.train_losses if 4 < step <= 8])
    assert f"train loss {mean_5_to_8:.4f}, val loss {result.val_losses[1][1]:.4f}" in lines[1]


def test_kernel_warm_up_runs_before_the_clock_starts(monkeypatch):
    import importlib
    import types

    import minigpt.kernels

    train_module = importlib.import_module("minigpt.train")  # the module, not the function minigpt.train

    events = []
    monkeypatch.setattr(minigpt.kernels, "warm_up",
                        lambda dtype, verbose=True: events.append(("warm_up", dtype)) or 0.0, raising=False)
    clock = types.SimpleNamespace(perf_counter=lambda: events.append("clock") or float(len(events)))
    monkeypatch.setattr(train_module, "time", clock)
    tok, cfg, ds, tcfg = _setup(dropout=0.0)
    tcfg = tcfg.replace(steps=2)
    train(GPT(cfg, seed=0, tokenizer=tok, backend="numba"), ds, tcfg, progress=False)
    assert events[0] == ("warm_up", "float32") and events.count(("warm_up", "float32")) == 1
    events.clear()
    train(GPT(cfg, seed=0, tokenizer=tok, backend="numpy"), ds, tcfg, progress=False)
    assert "clock" in events and not any(isinstance(e, tuple) for e in events)  # NumPy: nothing to compile
