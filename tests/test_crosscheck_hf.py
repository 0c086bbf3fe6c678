"""minigpt against a reference nobody here wrote: Hugging Face's
GPT2LMHeadModel and PyTorch autograd / AdamW.

Both models get the same weights (no download: the HF model is built from a
GPT2Config of our shape), then we compare logits and loss (float32), every
gradient (float64), ten AdamW steps with clipping and a warm-up + cosine
schedule (float64), greedy decoding, and weights exported / imported
through model.safetensors. Run with -s to see the measured differences.
Needs the crosscheck extra; skipped otherwise (a failure under
MINIGPT_REQUIRE_CROSSCHECK=1).
"""
import logging

import numpy as np
import pytest

from crosscheck_support import need

torch = need("torch")
transformers = need("transformers")

from minigpt import GPT, GPTConfig  # noqa: E402
from minigpt.hf import export_hf, import_hf  # noqa: E402
from minigpt.optim import AdamW, clip_grad_norm, decays, lr_schedule  # noqa: E402

# (vocab, block, layers, heads, width, batch, T): includes one head, T = 1,
# a head size of 8 with 3 heads, and T = block - 1 (the longest a loss allows)
SHAPES = [
    (37, 16, 2, 4, 32, 3, 9),
    (50, 8, 1, 1, 16, 2, 7),
    (20, 8, 2, 2, 8, 4, 1),
    (65, 32, 3, 3, 24, 2, 31),
]
# attention kernels: the NumPy reference and the default compiled one
BACKENDS = ["numpy", "numba"]


def random_model(V, block, L, H, C, dtype, seed=0, backend=None):
    """A GPT whose weights are O(1) random, not GPT-2's small init: a zero or
    near-constant weight would hide a wrong index or a missing term."""
    cfg = GPTConfig(vocab_size=V, block_size=block, n_layer=L, n_head=H, n_embd=C, dtype=dtype)
    rng = np.random.default_rng(seed)
    params = {}
    for name, p in GPT(cfg, seed=seed).params.items():
        if name in ("wte.weight", "wpe.weight"):
            q = rng.normal(0.0, 0.5, p.shape)
        elif p.ndim == 2:
            q = rng.normal(0.0, 1.0 / np.sqrt(p.shape[0]), p.shape)  # keeps activations O(1)
        elif ".ln_" in name or name.startswith("ln_"):
            q = (1.0 if name.endswith("weight") else 0.0) + rng.normal(0.0, 0.1, p.shape)
        else:
            q = rng.normal(0.0, 0.1, p.shape)
        params[name] = q.astype(dtype)
    return GPT(cfg, params=params, backend=backend)


def hf_twin(model):
    """GPT2LMHeadModel with model's config and a copy of its weights."""
    c = model.config
    hcfg = transformers.GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
        n_head=c.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=None, eos_token_id=None, attn_implementation="eager")
    hf = transformers.GPT2LMHeadModel(hcfg).to(getattr(torch, c.dtype)).eval()
    state = {"transformer." + k: torch.from_numpy(v.copy()) for k, v in model.params.items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert list(missing) == ["lm_head.weight"] and not unexpected  # lm_head is tied to wte
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    return hf


def tokens(V, B, T, seed):
    return np.random.default_rng(seed).integers(0, V, size=(B, T))


# float32 parity: both sides round every operation to float32 (eps = 1.2e-7)
# but sum in different orders (BLAS blocking, fused kernels), so each logit
# differs by rounding noise that grows with the number of terms it sums
# (about sqrt(C) eps per matmul) and with depth. 1e-5 relative to the largest
# logit is ~100 eps: far below any real bug (a wrong scale, mask or
# transpose changes logits by O(1)) and above the noise we measure (<= 1e-6).
F32_RTOL = 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("V, block, L, H, C, B, T", SHAPES)
def test_logits_and_loss_match_gpt2(V, block, L, H, C, B, T, backend):
    model = random_model(V, block, L, H, C, "float32", seed=T, backend=backend)
    hf = hf_twin(model)
    seq = tokens(V, B, T + 1, seed=1)  # (B, T+1): inputs are seq[:, :-1], targets seq[:, 1:]
    logits, loss = model.forward(seq[:, :-1], seq[:, 1:])
    with torch.no_grad():
        ref = hf(torch.from_numpy(seq[:, :-1])).logits.numpy()
        # HF shifts labels itself: position t predicts labels[t+1]
        ref_loss = hf(torch.from_numpy(seq), labels=torch.from_numpy(seq)).loss.item()
    scale = max(1.0, float(np.abs(ref).max()))
    d_logits, d_loss = float(np.abs(logits - ref).max()), abs(loss - ref_loss)
    print(f"\n{backend} V={V} L={L} H={H} C={C} B={B} T={T}: max|d logits| = {d_logits:.2e} "
          f"(max|logit| {scale:.1f}), |d loss| = {d_loss:.2e} (loss {loss:.4f})")
    assert logits.dtype == np.float32 and logits.shape == ref.shape
    assert d_logits <= F32_RTOL * scale
    assert d_loss <= F32_RTOL * max(1.0, ref_loss)


def _rel(a, b):
    """||a - b|| / (||a|| + ||b||): the gradcheck measure, 0 when both are 0."""
    den = np.linalg.norm(a) + np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / den) if den else 0.0


@pytest.fixture(scope="module")
def grad_table():
    """Worst gradient error per parameter kind over all shapes, printed (-s) at the end."""
    table = {}
    yield table
    print("\nfloat64 gradient vs torch autograd, worst over shapes: rel err (max |diff|)")
    for kind, (rel, diff) in table.items():
        print(f"    {kind:22s} {rel:.1e}  ({diff:.1e})")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("V, block, L, H, C, B, T", SHAPES)
def test_every_gradient_matches_torch_autograd_in_float64(V, block, L, H, C, B, T, backend, grad_table):
    model = random_model(V, block, L, H, C, "float64", seed=T, backend=backend)
    hf = hf_twin(model)
    x, y = tokens(V, B, T, seed=2), tokens(V, B, T, seed=3)
    _, loss = model.forward(x, y)
    grads = model.backward()
    logits = hf(torch.from_numpy(x)).logits
    ref_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.from_numpy(y).reshape(-1))
    ref_loss.backward()
    named = dict(hf.named_parameters())  # the tied lm_head shares wte's tensor and gradient
    errors = {k: _rel(g, named["transformer." + k].grad.numpy()) for k, g in grads.items()}
    for k, g in grads.items():
        kind = k.split(".", 2)[-1] if k.startswith("h.") else k  # h.1.ln_1.weight -> ln_1.weight
        diff = float(np.abs(g - named["transformer." + k].grad.numpy()).max())
        prev = grad_table.get(kind, (0.0, 0.0))
        grad_table[kind] = (max(prev[0], errors[k]), max(prev[1], diff))
    worst = max(errors, key=errors.get)
    print(f"\n{backend} V={V} L={L} H={H} C={C} T={T}: |d loss| = {abs(loss - ref_loss.item()):.1e}, "
          f"max gradient rel err {errors[worst]:.1e} ({worst})")
    for k in sorted(errors, key=errors.get, reverse=True)[:3]:
        print(f"    {k:28s} {errors[k]:.1e}")
    assert abs(loss - ref_loss.item()) < 1e-12 * max(1.0, abs(loss))
    # float64: both sides are exact up to ~1e-16 per operation; 1e-10 leaves
    # room for depth and conditioning, and any wrong term would show as >1e-3
    assert all(e < 1e-10 for e in errors.values()), {k: e for k, e in errors.items() if e >= 1e-10}


def test_ten_adamw_steps_match_torch_optim_adamw():
    """Same losses and final weights, in float64, as torch.optim.AdamW with
    clip_grad_norm_ and torch's own warm-up (LinearLR) + cosine
    (CosineAnnealingLR) schedulers; weight decay only on 2-D tensors, as
    minigpt does (two parameter groups)."""
    V, block, L, H, C, B, T = 37, 16, 2, 4, 32, 4, 12
    steps, warmup, lr, min_lr, wd, betas, eps = 10, 3, 3e-3, 3e-4, 0.1, (0.9, 0.99), 1e-8
    model = random_model(V, block, L, H, C, "float64", seed=5)
    hf = hf_twin(model).train()  # dropout is 0, so train mode only matters for form
    batches = [(tokens(V, B, T, 100 + s), tokens(V, B, T, 200 + s)) for s in range(steps)]
    model.forward(*batches[0])
    max_norm = 0.5 * clip_grad_norm(model.backward(), 0.0)  # so that clipping really acts

    opt = AdamW(model.params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    ours_losses, ours_norms = [], []
    for s, (x, y) in enumerate(batches):
        _, loss = model.forward(x, y)
        grads = model.backward()
        ours_norms.append(clip_grad_norm(grads, max_norm))
        opt.step(grads, lr_schedule(s, lr, min_lr, warmup, steps))
        ours_losses.append(loss)

    named = {k[len("transformer."):]: p for k, p in hf.named_parameters()}
    groups = [{"params": [p for k, p in named.items() if decays(k, p)], "weight_decay": wd},
              {"params": [p for k, p in named.items() if not decays(k, p)], "weight_decay": 0.0}]
    topt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    sched = torch.optim.lr_scheduler.SequentialLR(topt, [
        torch.optim.lr_scheduler.LinearLR(topt, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1),
        torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=steps - warmup, eta_min=min_lr),
    ], milestones=[warmup])
    ref_losses, ref_norms = [], []
    for x, y in batches:
        topt.zero_grad()
        logits = hf(torch.from_numpy(x)).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.from_numpy(y).reshape(-1))
        loss.backward()
        ref_norms.append(torch.nn.utils.clip_grad_norm_(hf.parameters(), max_norm).item())
        topt.step()
        sched.step()
        ref_losses.append(loss.item())

    assert sum(n > max_norm for n in ours_norms) >= 3  # clipping was exercised
    d_loss = max(abs(a - b) for a, b in zip(ours_losses, ref_losses))
    d_norm = max(abs(a - b) / b for a, b in zip(ours_norms, ref_norms))
    # The key part of c_attn.bias is the one parameter whose true gradient is
    # exactly 0 (adding b_k to every key shifts each score row by a constant,
    # which softmax ignores). Both sides compute it as rounding noise (~1e-17),
    # and Adam divides by sqrt(v) + eps, turning the noise into a step of
    # lr * noise / (noise + eps) ~ lr * 1e-9 in a noise-chosen direction. So
    # those entries are compared by "neither moved beyond that", the rest exactly.
    start = random_model(V, block, L, H, C, "float64", seed=5).params
    d_w, key_moves = {}, []
    for k, p in model.params.items():
        ref = named[k].detach().numpy()
        if k.endswith("attn.c_attn.bias"):
            key = slice(C, 2 * C)
            key_moves += [float(np.abs(p[key] - start[k][key]).max()), float(np.abs(ref[key] - start[k][key]).max())]
            p, ref = np.delete(p, np.s_[C:2 * C]), np.delete(ref, np.s_[C:2 * C])
        d_w[k] = float(np.abs(p - ref).max())
    worst = max(d_w, key=d_w.get)
    moved = max(float(np.abs(p - start[k]).max()) for k, p in model.params.items())
    print(f"\nAdamW 10 steps: losses {ours_losses[0]:.4f} -> {ours_losses[-1]:.4f}, max|d loss| = {d_loss:.1e}, "
          f"max rel d grad-norm = {d_norm:.1e}, max|d weight| = {d_w[worst]:.1e} ({worst}); "
          f"weights moved up to {moved:.1e}; key biases (zero gradient) moved <= {max(key_moves):.1e}")
    assert ours_losses[-1] < ours_losses[0]
    # float64 throughout; the weights move by up to ~1e-2, so 1e-12 is ~1e-10 of that
    assert d_loss < 1e-12 and d_norm < 1e-12
    assert d_w[worst] < 1e-12
    assert max(key_moves) < steps * lr * 1e-7  # noise / eps <= 1e-7 per step: no real movement


@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_greedy_decoding_matches_generate(use_kv_cache):
    model = random_model(41, 24, 2, 4, 32, "float32", seed=7)
    hf = hf_twin(model)
    prompt = tokens(41, 2, 4, seed=8)
    n = 24 - 4  # fill the context window exactly
    ours = model.generate(prompt, n, temperature=0, use_kv_cache=use_kv_cache)
    with torch.no_grad():
        ref = hf.generate(torch.from_numpy(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                          max_new_tokens=n, do_sample=False, num_beams=1, eos_token_id=None,
                          pad_token_id=0).numpy()
    assert ref.shape == ours.shape == (2, 24)
    assert np.array_equal(ours, ref)


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_exported_directory_loads_in_transformers_without_warnings(tmp_path):
    model = random_model(37, 16, 2, 4, 32, "float32", seed=9)
    export_hf(model, tmp_path)
    catcher = _Warnings()
    log = logging.getLogger("transformers")
    log.addHandler(catcher)
    try:
        hf, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    finally:
        log.removeHandler(catcher)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    weight_talk = [m for m in catcher.messages if "weight" in m.lower() or "initialized" in m.lower()]
    assert not weight_talk, weight_talk
    for k, p in model.params.items():  # the weights arrive bit-exactly
        assert np.array_equal(hf.state_dict()["transformer." + k].numpy(), p), k
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()


def test_directory_saved_by_transformers_imports_bit_exactly(tmp_path):
    torch.manual_seed(0)
    hcfg = transformers.GPT2Config(vocab_size=30, n_positions=12, n_embd=16, n_layer=2, n_head=2)
    hf = transformers.GPT2LMHeadModel(hcfg).eval()
    hf.save_pretrained(tmp_path)
    model, note = import_hf(tmp_path)
    assert "no tokenizer" in note
    assert model.config == GPTConfig(vocab_size=30, block_size=12, n_layer=2, n_head=2, n_embd=16, dropout=0.1)
    for k, p in model.params.items():
        assert np.array_equal(p, hf.state_dict()["transformer." + k].numpy()), k
    idx = tokens(30, 2, 12, seed=4)
    with torch.no_grad():
        ref = hf(torch.from_numpy(idx)).logits.numpy()
    logits, _ = model.forward(idx)
    assert np.abs(logits - ref).max() <= F32_RTOL * max(1.0, float(np.abs(ref).max()))
