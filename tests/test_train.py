"""The training loop: exact resume, Ctrl-C, NaN stop, schedule, clipping, AdamW, and its hooks
(a loss of one's own, a weight transform, masks around the optimizer step)."""
import math
import os
import signal

import numpy as np
import pytest

from minigpt import (GPT, CharTokenizer, Dataset, GPTConfig, TrainConfig, TrainingDiverged, evaluate,
                     load_checkpoint, load_corpus, train)
from minigpt.optim import AdamW, apply_masks, clip_grad_norm, lr_schedule


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


# ----------------------------------------------------------- the open loop
def _random_masks(params, seed=1, keep=0.5):
    """Half of every matrix's entries pruned (0), vectors unmasked."""
    rng = np.random.default_rng(seed)
    return {k: (rng.random(p.shape) < keep).astype(p.dtype) for k, p in params.items() if p.ndim == 2}


def test_apply_masks_zeroes_weights_and_adamw_moments_only_where_masked():
    p = {"w": np.array([[1.0, np.inf], [3.0, 4.0]]), "b": np.array([5.0, 6.0])}
    opt = AdamW(p)
    opt.m["w"][...], opt.v["w"][...] = 7.0, 8.0
    apply_masks(p, {"w": np.array([[1, 0], [0, 1]])}, opt)
    assert p["w"].tolist() == [[1.0, 0.0], [0.0, 4.0]]  # inf pruned to 0, not nan
    assert opt.m["w"].tolist() == [[7.0, 0.0], [0.0, 7.0]] and opt.v["w"].tolist() == [[8.0, 0.0], [0.0, 8.0]]
    assert p["b"].tolist() == [5.0, 6.0]  # no mask: untouched
    with pytest.raises(ValueError, match="mask for w has shape"):
        apply_masks(p, {"w": np.ones(3)})


def test_masked_adamw_keeps_exact_zeros_for_50_steps():
    tok, cfg, ds, tcfg = _setup(dropout=0.1)
    tcfg = tcfg.replace(steps=50, eval_every=25)
    model = GPT(cfg, seed=0, tokenizer=tok)
    masks = _random_masks(model.params)
    apply_masks(model.params, masks)
    start = {k: p.copy() for k, p in model.params.items()}
    checked = []

    def after_step(params, opt):
        # checked BEFORE re-applying the masks: AdamW's own update, from masked
        # gradients and zero moments, must have left every pruned entry exactly 0
        for k, m in masks.items():
            pruned = m == 0
            checked.append(not (params[k][pruned].any() or opt.m[k][pruned].any() or opt.v[k][pruned].any()))
        apply_masks(params, masks, opt)

    train(model, ds, tcfg, progress=False, before_step=lambda grads: apply_masks(grads, masks), after_step=after_step)
    assert len(checked) == 50 * len(masks) and all(checked)
    for k, m in masks.items():
        assert not model.params[k][m == 0].any(), k
        assert not np.array_equal(model.params[k][m == 1], start[k][m == 1]), k  # the kept weights trained

    # without the hooks the same zeros do not survive one run (what the hooks are for)
    plain = GPT(cfg, seed=0, tokenizer=tok)
    apply_masks(plain.params, masks)
    train(plain, ds, tcfg.replace(steps=1), progress=False)
    assert all(plain.params[k][m == 0].all() for k, m in masks.items())


def test_masked_training_resumes_exactly(tmp_path):
    tok, cfg, ds, tcfg = _setup(dropout=0.1)
    masks = _random_masks(GPT(cfg, seed=0).params)
    hooks = dict(before_step=lambda g: apply_masks(g, masks), after_step=lambda p, opt: apply_masks(p, masks, opt))

    def pruned_model():
        model = GPT(cfg, seed=0, tokenizer=tok)
        apply_masks(model.params, masks)
        return model

    full = pruned_model()
    r_full = train(full, ds, tcfg, out=tmp_path / "full.npz", progress=False, **hooks)
    r1 = train(pruned_model(), ds, tcfg, out=tmp_path / "part.npz", progress=False,
               callback=lambda step, loss: step == 7, **hooks)
    ckpt = load_checkpoint(tmp_path / "part.npz")
    r2 = train(ckpt.model, ds, ckpt.train_config, out=tmp_path / "part.npz", resume=ckpt, progress=False, **hooks)
    assert r1.step == 7 and r2.step == 12
    assert r2.train_losses == r_full.train_losses and r2.val_losses == r_full.val_losses
    for k in full.params:
        assert np.array_equal(full.params[k], ckpt.model.params[k]), k


def test_identity_transform_and_no_op_hooks_reproduce_plain_training_bit_for_bit(tmp_path):
    from minigpt.train import cross_entropy_loss

    tok, cfg, ds, tcfg = _setup(dropout=0.1)  # dropout: the RNG streams must match too
    variants = {
        "plain": {},
        "identity": dict(weight_transform=lambda p: (p, lambda g: g)),
        "copies": dict(weight_transform=lambda p: ({k: v.copy() for k, v in p.items()}, lambda g: dict(g)),
                       loss_fn=cross_entropy_loss, before_step=lambda g: None, after_step=lambda p, o: None),
    }
    runs = {}
    for name, kwargs in variants.items():
        model = GPT(cfg, seed=0, tokenizer=tok)
        result = train(model, ds, tcfg, out=tmp_path / f"{name}.npz", progress=False, **kwargs)
        runs[name] = (result, load_checkpoint(tmp_path / f"{name}.npz"))
    ref, ref_ckpt = runs.pop("plain")
    for name, (result, ckpt) in runs.items():
        assert result.train_losses == ref.train_losses and result.val_losses == ref.val_losses, name
        for k, a in ref_ckpt.model.params.items():
            assert np.array_equal(ckpt.model.params[k], a), (name, k)
        for k, a in ref_ckpt.optimizer_state["arrays"].items():
            assert np.array_equal(ckpt.optimizer_state["arrays"][k], a), (name, k)


def test_fake_quant_weights_are_seen_by_the_forward_and_the_master_weights_are_trained(tmp_path):
    tok, cfg, ds, tcfg = _setup(dropout=0.0)
    tcfg = tcfg.replace(steps=6, eval_every=6)

    def fake_quant(params, bits=4):  # per output column, straight-through backward
        seen = dict(params)
        for k, w in params.items():
            if w.ndim == 2:
                s = np.maximum(np.abs(w).max(axis=0), 1e-12) / (2 ** (bits - 1) - 1)
                seen[k] = (np.round(w / s) * s).astype(w.dtype)
        return seen, lambda grads: grads

    model = GPT(cfg, seed=0, tokenizer=tok)
    first_batch = ds.get_batch("train", tcfg.batch_size, np.random.default_rng(tcfg.seed))
    quantized = GPT(cfg, params=fake_quant(model.params)[0], tokenizer=tok)
    expected_first_loss = quantized.loss(*first_batch)
    assert expected_first_loss != model.loss(*first_batch)  # 4 bits change the loss
    result = train(model, ds, tcfg, out=tmp_path / "q.npz", progress=False, weight_transform=fake_quant)
    assert result.train_losses[0][1] == expected_first_loss
    # validation sees the quantized weights too
    final_q = GPT(cfg, params=fake_quant(model.params)[0], tokenizer=tok)
    assert result.val_losses[-1][1] == evaluate(final_q, ds, "val", tcfg.batch_size, tcfg.eval_batches)
    # the checkpoint holds the float master weights (off the 4-bit grid), which the optimizer moved
    saved = load_checkpoint(tmp_path / "q.npz").model.params["h.0.mlp.c_fc.weight"]
    assert np.array_equal(saved, model.params["h.0.mlp.c_fc.weight"])
    assert not np.array_equal(saved, fake_quant(model.params)[0]["h.0.mlp.c_fc.weight"])


def _kl_pair(z, p_t):
    """Distillation loss and its gradient: L = mean over positions of
    KL(p_t || softmax(z)) = sum_j p_t,j (log p_t,j - log p_s,j); dL/dz = (p_s - p_t) / N."""
    z = z - z.max(axis=-1, keepdims=True)
    log_p_s = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))  # (B, T, V)
    n = z.shape[0] * z.shape[1]
    loss = float((p_t * (np.log(p_t) - log_p_s)).sum() / n)
    return loss, (np.exp(log_p_s) - p_t) / n


def test_kl_pair_gradient_matches_finite_differences():
    from minigpt.gradcheck import numerical_gradient, relative_error

    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 3, 5))
    p_t = np.exp(rng.normal(size=(2, 3, 5)))
    p_t /= p_t.sum(-1, keepdims=True)
    numeric = numerical_gradient(lambda: _kl_pair(z, p_t)[0], z)
    assert relative_error(_kl_pair(z, p_t)[1], numeric) < 1e-8  # float64 centered differences


def test_a_distillation_loss_drives_training():
    tok, cfg, ds, tcfg = _setup(dropout=0.0)
    teacher = GPT(cfg, seed=0, tokenizer=tok)
    train(teacher, ds, tcfg.replace(steps=40, eval_every=40, lr=1e-2), progress=False)
    student = GPT(cfg, seed=1, tokenizer=tok)
    x_val, _ = ds.get_batch("val", 8, np.random.default_rng(5))

    def soft_targets(x):
        z, _ = teacher.forward(x)
        p = np.exp(z - z.max(-1, keepdims=True))
        return p / p.sum(-1, keepdims=True)

    def kl_to_teacher(model):
        return _kl_pair(model.forward(x_val)[0].astype(np.float64), soft_targets(x_val))[0]

    calls = []

    def distill(model, x, y):  # y unused: the teacher's distribution is the target
        z, _ = model.forward(x, keep_cache=True)
        loss, dz = _kl_pair(z.astype(np.float64), soft_targets(x))
        calls.append(loss)
        return loss, dz.astype(z.dtype)

    before = kl_to_teacher(student)
    result = train(student, ds, tcfg.replace(steps=40, eval_every=40, lr=1e-2), progress=False, loss_fn=distill)
    after = kl_to_teacher(student)
    assert [loss for _, loss in result.train_losses] == calls  # the loop trained on (and reported) the KL
    assert after < 0.5 * before, (before, after)
