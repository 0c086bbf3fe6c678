"""Whole-model tests: gradients of every parameter against finite
differences, behaviour at init, training on one batch, KV-cache generation,
sampling, and config validation.

Gradient checks run in float64 with a relative error < 1e-6 per tensor: the
centered difference with h = 1e-5 is accurate to ~1e-10 (truncation h^2,
rounding eps |loss| / h), so only a wrong derivative can reach 1e-6.
"""
import math

import numpy as np
import pytest

from minigpt.config import GPTConfig
from minigpt.errors import ConfigError
from minigpt.gradcheck import numerical_gradient, relative_error
from minigpt.model import GPT, KVCache, param_shapes
from minigpt.optim import AdamW
from minigpt.sampling import check_sampling_args, next_token_probs, sample_next_token

FD_TOL = 1e-6
TINY = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)


def tiny_model(dtype="float64", dropout=0.0, noise=0.1, seed=0):
    """A tiny model whose parameters are pushed away from init: at init the
    biases are 0 and LayerNorm gains 1, where some gradient terms vanish or
    coincide and a wrong backward could still agree."""
    model = GPT(GPTConfig(**TINY, dropout=dropout, dtype=dtype), seed=seed)
    rng = np.random.default_rng(seed + 1)
    for p in model.params.values():
        p += (noise * rng.standard_normal(p.shape)).astype(p.dtype)
    return model


def batch(config, B=2, T=None, seed=0):
    rng = np.random.default_rng(seed)
    T = config.block_size if T is None else T
    idx = rng.integers(0, config.vocab_size, size=(B, T))
    targets = rng.integers(0, config.vocab_size, size=(B, T))
    return idx, targets


def entries_to_check(p, rng, k=12):
    """Every entry of a small tensor (a bias's key part has an exactly zero
    gradient, so a random few of it alone would compare rounding noise);
    k random entries of a large one."""
    if p.size <= 32:
        return np.arange(p.size)
    return rng.choice(p.size, size=k, replace=False)


def gradcheck_model(model, idx, targets, fd_errors, label):
    """Analytic gradient of every parameter vs finite differences of the loss.

    The model's dropout generator is rewound before every forward, so each
    loss evaluation (analytic and perturbed) uses the same dropout masks.
    """
    state = model.rng.bit_generator.state

    def loss():
        model.rng.bit_generator.state = state
        return model.forward(idx, targets)[1]

    loss()
    grads = model.backward()
    rng = np.random.default_rng(0)
    worst = 0.0
    for name, p in model.params.items():
        ids = entries_to_check(p, rng)
        num = numerical_gradient(loss, p, indices=ids)
        err = relative_error(grads[name], num, indices=ids)
        assert err < FD_TOL, (name, err)
        worst = max(worst, err)
    fd_errors.record(label, worst)


# --------------------------------------------------------------- gradients
def test_model_gradcheck_every_parameter(fd_errors):
    model = tiny_model()
    idx, targets = batch(model.config, B=2, T=8)
    gradcheck_model(model, idx, targets, fd_errors, "GPT (all params)")


def test_model_gradcheck_short_sequence_batch_one(fd_errors):
    # T=1, B=1: every attention row sees only itself; rows of wpe past T get 0
    model = tiny_model(seed=3)
    idx, targets = batch(model.config, B=1, T=1, seed=3)
    gradcheck_model(model, idx, targets, fd_errors, "GPT (all params), T=1")


def test_model_gradcheck_with_dropout(fd_errors):
    model = tiny_model(dropout=0.2, seed=5)
    model.training = True
    idx, targets = batch(model.config, B=2, T=8, seed=5)
    # the check is only meaningful if dropout really changes the loss
    state = model.rng.bit_generator.state
    train_loss = model.forward(idx, targets)[1]
    model.rng.bit_generator.state = state
    assert train_loss != model.loss(idx, targets)
    gradcheck_model(model, idx, targets, fd_errors, "GPT (all params), dropout")


# ---------------------------------------------------------------- behaviour
def test_backward_matches_params_keys_shapes_dtypes():
    for dtype in ("float64", "float32"):
        model = tiny_model(dtype=dtype)
        model.forward(*batch(model.config))
        grads = model.backward()
        assert list(grads) == list(model.params)
        assert list(model.params) == list(param_shapes(model.config))
        for name, p in model.params.items():
            assert grads[name].shape == p.shape, name
            assert grads[name].dtype == p.dtype == np.dtype(dtype), name


def test_float32_stays_float32():
    model = tiny_model(dtype="float32", dropout=0.1)
    model.training = True
    idx, targets = batch(model.config)
    logits, loss = model.forward(idx, targets)
    assert logits.dtype == np.float32
    assert np.isfinite(loss)
    assert all(g.dtype == np.float32 for g in model.backward().values())
    cache = KVCache(model.config, batch_size=2)
    logits, _ = model.forward(idx[:, :3], kv_cache=cache)
    assert logits.dtype == np.float32
    assert all(k.dtype == v.dtype == np.float32 for k, v in cache.layers)


def test_backward_needs_forward_with_targets():
    model = tiny_model()
    with pytest.raises(RuntimeError):
        model.backward()
    model.forward(batch(model.config)[0])  # no targets: no caches kept
    with pytest.raises(RuntimeError):
        model.backward()


def test_loss_at_init_is_about_log_vocab():
    # At init logits z_v = <ln_f(x), wte[v]>: ln_f(x) has unit RMS and wte
    # entries N(0, 0.02^2), so each logit has std s = 0.02 sqrt(C). For small s,
    # loss - ln V = (logsumexp(z) - ln V) - z_y ~ s^2/2 + (mean_v z - z_y), and
    # the last term is zero-mean with std <= s sqrt(2/B) even if the positions
    # of one sequence were fully correlated (B independent sequences).
    # 4 such std + s^2/2 makes a false alarm negligible; a wrong init scale, a
    # summed instead of averaged loss, or untied logits all land far outside.
    cfg = GPTConfig(**TINY, dtype="float64")
    B = 16
    s = 0.02 * math.sqrt(cfg.n_embd)
    tol = s**2 / 2 + 4 * s * math.sqrt(2 / B)
    for seed in range(3):
        loss = GPT(cfg, seed=seed).loss(*batch(cfg, B=B, seed=seed))
        assert abs(loss - math.log(cfg.vocab_size)) < tol, (seed, loss, tol)


def test_overfits_one_batch():
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)  # float32
    model = GPT(cfg, seed=0)
    idx, targets = batch(cfg, B=2, seed=1)
    opt = AdamW(model.params, lr=1e-2, weight_decay=0.0)
    first = model.loss(idx, targets)
    for _ in range(250):
        model.forward(idx, targets)
        opt.step(model.backward())
    # 16 random targets are memorised: from ~ln 11 = 2.4 to (measured) ~1e-3
    assert first > 2.0
    assert model.loss(idx, targets) < 0.02


def test_gpt2_init_statistics():
    cfg = GPTConfig(vocab_size=64, block_size=64, n_layer=4, n_head=4, n_embd=64)
    params = GPT(cfg, seed=0).params
    resid_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    for name, p in params.items():
        assert p.dtype == np.float32, name
        if name.endswith(".bias"):
            np.testing.assert_array_equal(p, 0.0, err_msg=name)
        elif ".ln_" in name or name.startswith("ln_"):
            np.testing.assert_array_equal(p, 1.0, err_msg=name)
        else:
            std = resid_std if name.endswith("c_proj.weight") else 0.02
            n = p.size  # >= 4096 draws
            # sample mean of n normals has std sigma/sqrt(n); the sample std
            # has std ~ sigma/sqrt(2n). 5 of those: a false alarm is ~1e-6.
            x = p.astype(np.float64)
            assert abs(x.mean()) < 5 * std / math.sqrt(n), name
            assert abs(x.std() / std - 1) < 5 / math.sqrt(2 * n), (name, x.std())


def test_init_is_seeded():
    cfg = GPTConfig(**TINY)
    a, b, c = GPT(cfg, seed=1).params, GPT(cfg, seed=1).params, GPT(cfg, seed=2).params
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["wte.weight"], c["wte.weight"])


def test_model_is_causal():
    model = tiny_model()
    idx, _ = batch(model.config, B=2)
    logits, _ = model.forward(idx)
    for t in range(idx.shape[1] - 1):
        changed = idx.copy()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % model.config.vocab_size
        logits2, _ = model.forward(changed)
        np.testing.assert_array_equal(logits2[:, : t + 1], logits[:, : t + 1])


def test_forward_rejects_bad_input():
    model = tiny_model()
    with pytest.raises(ConfigError, match="block_size"):
        model.forward(np.zeros((1, 9), dtype=int))
    with pytest.raises(ConfigError, match="token ids"):
        model.forward(np.array([[0, 11]]))
    with pytest.raises(ConfigError, match="shape"):
        model.forward(np.zeros(3, dtype=int))


# ----------------------------------------------------------------- KV cache
def test_kv_cache_forward_equals_full_forward():
    model = tiny_model()
    idx, _ = batch(model.config, B=2)
    full, _ = model.forward(idx)
    cache = KVCache(model.config, batch_size=2)
    parts = [model.forward(idx[:, :3], kv_cache=cache)[0]]
    for t in range(3, idx.shape[1]):
        parts.append(model.forward(idx[:, t : t + 1], kv_cache=cache)[0])
    assert cache.length == idx.shape[1]
    # float64, same ops on the same numbers in a different grouping: ~1e-15
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-12, atol=1e-13)


def _uncached_logits(model, idx):
    """Logits of a forward whose block dicts are rebuilt from model.params right now
    (what forward did before it kept them): the reference for the cached ones."""
    fresh = GPT(model.config, params=dict(model.params), backend=model.backend)
    return fresh.forward(idx)[0]


def test_cached_block_dicts_follow_params():
    """forward keeps each block's parameter dict between calls; every way
    model.params changes must show up in the next forward's logits."""
    from minigpt.model import add_head_gates
    from minigpt.prune import apply
    from minigpt.prune.structured import remove_heads

    model = tiny_model()
    idx, _ = batch(model.config, B=2)
    first = model.forward(idx)[0]
    np.testing.assert_array_equal(model.forward(idx)[0], first)  # the kept dicts: the same numbers
    np.testing.assert_array_equal(_uncached_logits(model, idx), first)
    changes = {
        # training's in-place step: the dicts hold the same arrays
        "in place": lambda m: m.params["h.1.mlp.c_fc.weight"].__iadd__(0.5),
        # a new array under an existing name
        "replaced": lambda m: m.params.__setitem__("h.0.attn.c_proj.weight", 2 * m.params["h.0.attn.c_proj.weight"]),
        # a new name (a gate at 0 switches head 1 of block 1 off)
        "gate added": lambda m: (add_head_gates(m.params, m.config), m.params["h.1.attn.head_gate"].__setitem__(1, 0.0)),
        # a new params dict with fewer heads (structured pruning), then magnitude pruning's copies
        "heads removed": lambda m: setattr(m, "params", remove_heads(m.params, m.config, {0: [0]})),
        "pruned": lambda m: setattr(m, "params", apply(m.params, {"h.1.mlp.c_proj.weight":
                                                                  np.abs(m.params["h.1.mlp.c_proj.weight"]) > 0.1})),
    }
    before = first
    for what, change in changes.items():
        change(model)
        after = model.forward(idx)[0]
        assert not np.allclose(after, before), what  # the change is seen ...
        np.testing.assert_array_equal(after, _uncached_logits(model, idx), err_msg=what)  # ... exactly
        before = after
    # block_params hands out a copy: a caller editing it leaves the model alone
    model.block_params(0).clear()
    np.testing.assert_array_equal(model.forward(idx)[0], before)


def test_cached_block_dicts_in_kv_cache_generation():
    """Decoding step by step with the kept dicts gives the logits of an
    uncached full forward, also after a parameter is replaced mid-way."""
    model = tiny_model()
    idx, _ = batch(model.config, B=2)
    cache = KVCache(model.config, batch_size=2)
    parts = [model.forward(idx[:, :3], kv_cache=cache)[0]]
    for t in range(3, idx.shape[1]):
        parts.append(model.forward(idx[:, t : t + 1], kv_cache=cache)[0])
    # float64, the same ops grouped differently (as test_kv_cache_forward_equals_full_forward)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), _uncached_logits(model, idx), rtol=1e-12, atol=1e-13)
    model.params["ln_f.weight"] = model.params["ln_f.weight"] * 3  # not a block's, but forward reads it fresh
    model.params["h.1.ln_2.bias"] = model.params["h.1.ln_2.bias"] + 1.0
    cache = KVCache(model.config, batch_size=2)
    parts = [model.forward(idx[:, :4], kv_cache=cache)[0]]
    for t in range(4, idx.shape[1]):
        parts.append(model.forward(idx[:, t : t + 1], kv_cache=cache)[0])
    np.testing.assert_allclose(np.concatenate(parts, axis=1), _uncached_logits(model, idx), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("split", [(1, 1), (2, 2)])
def test_inference_head_gives_the_reference_heads_numbers(split, monkeypatch):
    """Inference runs the tied head through the backend's linear (numba: split
    over the thread budget). GPT-2's vocab splits in two at row 25128, a
    multiple of 8, where BLAS's matrix-vector sums come out the same: the
    same float32 logits as the reference head, bit for bit, split or not."""
    from minigpt.kernels import matmul as km
    from minigpt.layers.lm_head import lm_head_forward
    from minigpt.ops import op_table

    monkeypatch.setattr(km, "pieces_for", lambda M, K, N, threads=None: split)  # as with 1 or 2 threads
    rng = np.random.default_rng(0)
    wte = rng.standard_normal((50257, 64)).astype(np.float32)  # (V, C)
    x = rng.standard_normal((1, 1, 64)).astype(np.float32)  # (B, T, C): one decoding step
    want = lm_head_forward(x, wte)[0]  # (B, T, V)
    for backend in ("numba", "numpy"):
        got = op_table(backend)["linear"][0](x, wte.T, np.zeros(50257, dtype=np.float32))[0]
        np.testing.assert_array_equal(got, want, err_msg=backend)


def test_last_only_logits_are_the_last_row():
    """generate's prompt pass asks for the last position's logits only."""
    model = tiny_model()
    idx, targets = batch(model.config, B=2)
    full, _ = model.forward(idx)
    last, _ = model.forward(idx, last_only=True)
    assert last.shape == (2, 1, model.config.vocab_size)
    # float64; a one-row product may group the head's sums differently: ~1e-16 relative
    np.testing.assert_allclose(last, full[:, -1:], rtol=1e-13, atol=1e-14)
    cache = KVCache(model.config, batch_size=2)
    np.testing.assert_allclose(model.forward(idx, kv_cache=cache, last_only=True)[0], full[:, -1:],
                               rtol=1e-12, atol=1e-13)
    assert cache.length == idx.shape[1]
    with pytest.raises(ValueError, match="last_only"):
        model.forward(idx, targets, last_only=True)


@pytest.mark.parametrize(
    "kwargs",
    [dict(temperature=0.0), dict(temperature=1.0, seed=7), dict(temperature=0.8, top_k=4, top_p=0.9, seed=3)],
)
def test_generate_same_tokens_with_and_without_kv_cache(kwargs):
    model = tiny_model()
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    # 3 + 20 tokens > block_size = 8: the window slides and the cache is rebuilt
    with_cache = model.generate(prompt, 20, use_kv_cache=True, **kwargs)
    without = model.generate(prompt, 20, use_kv_cache=False, **kwargs)
    assert with_cache.shape == (2, 23)
    np.testing.assert_array_equal(with_cache, without)
    np.testing.assert_array_equal(with_cache[:, :3], prompt)


def test_greedy_generation_is_argmax_of_cropped_context():
    model = tiny_model()
    out = model.generate(np.array([3, 1]), 12, temperature=0.0)
    ids = [3, 1]
    for _ in range(12):  # the definition, one full forward per token
        logits, _ = model.forward(np.array([ids[-model.config.block_size :]]))
        ids.append(int(np.argmax(logits[0, -1])))
    np.testing.assert_array_equal(out, ids)


@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_long_prompt_is_cropped_to_block_size(use_kv_cache):
    model = tiny_model()
    T = model.config.block_size
    prompt = np.random.default_rng(9).integers(0, 11, size=13)
    full = model.generate(prompt, 6, seed=4, use_kv_cache=use_kv_cache)
    cropped = model.generate(prompt[-T:], 6, seed=4, use_kv_cache=use_kv_cache)
    np.testing.assert_array_equal(full[:13], prompt)
    np.testing.assert_array_equal(full[13:], cropped[T:])


def test_generate_leaves_training_flag_alone():
    model = tiny_model(dropout=0.5)
    model.training = True
    a = model.generate(np.array([1]), 5, seed=0)
    b = model.generate(np.array([1]), 5, seed=0)
    np.testing.assert_array_equal(a, b)  # no dropout while generating
    assert model.training


# ----------------------------------------------------------------- sampling
LOGITS = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))  # probabilities by hand


def test_temperature_zero_is_argmax():
    logits = np.array([[0.1, 2.0, -1.0], [5.0, 4.9, 0.0]])
    ids = sample_next_token(logits, np.random.default_rng(0), temperature=0.0)
    np.testing.assert_array_equal(ids, [1, 0])


def test_temperature_scales_logits():
    p = next_token_probs(LOGITS, temperature=2.0)
    ref = np.sqrt([0.5, 0.3, 0.15, 0.05])  # exp(log(q)/2) = sqrt(q)
    np.testing.assert_allclose(p[0], ref / ref.sum(), rtol=1e-12)
    np.testing.assert_allclose(next_token_probs(LOGITS)[0], [0.5, 0.3, 0.15, 0.05], rtol=1e-12)


def test_top_k():
    p = next_token_probs(LOGITS, top_k=2)
    np.testing.assert_allclose(p[0], [0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0], rtol=1e-12)
    np.testing.assert_array_equal(next_token_probs(LOGITS, top_k=1)[0], [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(next_token_probs(LOGITS, top_k=10), next_token_probs(LOGITS), rtol=1e-15)


def test_top_k_one_is_greedy():
    model = tiny_model()
    greedy = model.generate(np.array([2, 7]), 10, temperature=0.0)
    top1 = model.generate(np.array([2, 7]), 10, temperature=1.3, top_k=1, seed=11)
    np.testing.assert_array_equal(top1, greedy)


@pytest.mark.parametrize(
    "top_p, kept",
    [
        (0.4, [0.5, 0, 0, 0]),  # the top token alone already has 0.5 >= 0.4
        (0.7, [0.5, 0.3, 0, 0]),  # 0.5 < 0.7 <= 0.8
        (0.81, [0.5, 0.3, 0.15, 0]),  # 0.8 < 0.81 <= 0.95
        (0.96, [0.5, 0.3, 0.15, 0.05]),  # needs all four
        (1.0, [0.5, 0.3, 0.15, 0.05]),
    ],
)
def test_top_p_keeps_smallest_nucleus(top_p, kept):
    # the probabilities are in scrambled order so that sorting matters
    perm = np.array([2, 0, 3, 1])
    p = next_token_probs(LOGITS[:, perm], top_p=top_p)
    kept = np.array(kept)[perm]
    np.testing.assert_allclose(p[0], kept / kept.sum(), rtol=1e-12)


def test_sampling_frequencies_match_probabilities():
    rng = np.random.default_rng(0)
    n = 40000
    logits = np.repeat(LOGITS, n, axis=0)  # (n, V): n independent draws
    ids = sample_next_token(logits, rng, temperature=1.0)
    freq = np.bincount(ids, minlength=4) / n
    q = np.array([0.5, 0.3, 0.15, 0.05])
    # each frequency has std sqrt(q(1-q)/n) <= 0.0025; 5 std
    np.testing.assert_array_less(np.abs(freq - q), 5 * np.sqrt(q * (1 - q) / n))
    # zero-probability tokens are never drawn
    ids = sample_next_token(logits, rng, temperature=1.0, top_k=2)
    assert set(np.unique(ids)) == {0, 1}


def test_seeded_sampling_is_reproducible():
    model = tiny_model()
    a = model.generate(np.array([1, 2]), 15, seed=42)
    b = model.generate(np.array([1, 2]), 15, seed=42)
    c = model.generate(np.array([1, 2]), 15, rng=np.random.default_rng(42))
    d = model.generate(np.array([1, 2]), 15, seed=43)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, d)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(temperature=-1.0),
        dict(temperature=float("nan")),
        dict(temperature=float("inf")),
        dict(top_k=0),
        dict(top_k=-2),
        dict(top_k=2.5),
        dict(top_p=0.0),
        dict(top_p=-0.1),
        dict(top_p=1.5),
        dict(top_p=float("nan")),
        dict(top_k=float("nan")),
        dict(top_k=True),
        dict(temperature="1"),
        dict(top_p="0.9"),
    ],
)
def test_invalid_sampling_args_raise(kwargs):
    model = tiny_model()
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        model.generate(np.array([1]), 3, **kwargs)
    args = dict(temperature=1.0, top_k=None, top_p=None) | kwargs
    with pytest.raises(ConfigError):
        check_sampling_args(**args)


def test_empty_prompt_raises():
    with pytest.raises(ConfigError, match="prompt"):
        tiny_model().generate(np.array([], dtype=int), 3)


# ------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "field, value",
    [
        ("vocab_size", 0),
        ("vocab_size", -3),
        ("block_size", 0),
        ("n_layer", 0),
        ("n_layer", -1),
        ("n_head", 0),
        ("n_embd", 0),
        ("n_embd", -4),
        ("vocab_size", 8.0),
        ("block_size", "64"),
        ("n_layer", 1.5),
        ("n_head", True),
        ("n_embd", None),
        ("dropout", -0.1),
        ("dropout", 1.0),
        ("dropout", 1.5),
        ("dropout", float("nan")),
        ("dropout", "0.1"),
        ("dropout", False),
        ("dtype", "float16"),
        ("dtype", "int32"),
        ("dtype", None),
    ],
)
def test_invalid_config_names_field_and_value(field, value):
    with pytest.raises(ConfigError) as err:
        GPTConfig(**{field: value})
    message = str(err.value)
    assert field in message
    assert str(value) in message or repr(value) in message


def test_n_embd_not_divisible_by_n_head():
    with pytest.raises(ConfigError) as err:
        GPTConfig(n_embd=10, n_head=4)
    assert "n_embd=10" in str(err.value) and "n_head=4" in str(err.value)


def test_numpy_scalars_are_valid_config_values():
    cfg = GPTConfig(n_layer=np.int64(2), dropout=np.float32(0.25))
    assert cfg.dropout == pytest.approx(0.25)


def test_valid_config_and_replace():
    cfg = GPTConfig(**TINY, dropout=0.5, dtype="float64")
    assert cfg.head_size == 4
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="n_head"):
        cfg.replace(n_head=3)  # replace() validates again
    with pytest.raises(ConfigError, match="unknown"):
        GPTConfig.from_dict(dict(cfg.to_dict(), n_heads=2))
