"""minigpt.probes.attention_maps returns the model's own attention probabilities."""
import math

import numpy as np

from minigpt.config import GPTConfig
from minigpt.layers import layernorm_forward, linear_forward, softmax
from minigpt.model import GPT
from minigpt.probes import attention_maps


def _model():
    cfg = GPTConfig(vocab_size=11, block_size=9, n_layer=2, n_head=3, n_embd=12, dtype="float64")
    model = GPT(cfg, seed=3)
    # larger weights than GPT-2's init so the maps are far from uniform
    rng = np.random.default_rng(1)
    for name, p in model.params.items():
        if name.endswith("c_attn.weight"):
            model.params[name] = rng.normal(0, 0.5, p.shape)
    return model


def test_maps_are_causal_distributions_and_state_is_restored():
    model = _model()
    model.training = True
    backend = model.backend  # the default, numba once it is registered
    idx = np.array([[1, 4, 2, 9, 0, 3, 3], [5, 5, 1, 0, 2, 8, 7]])
    maps = attention_maps(model, idx)
    assert len(maps) == 2 and all(p.shape == (2, 3, 7, 7) for p in maps)
    for p in maps:
        # float64 sums of 7 terms: rounding is ~1e-16 each
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-12)
        assert np.all(np.triu(p, 1) == 0.0)  # the mask gives exact zeros
        assert p.std() > 0.05  # not all uniform: the test would otherwise be blind
    assert model.training is True and model.backend == backend and model._caches is None
    # 1-D input drops the batch axis and gives the same maps
    one = attention_maps(model, idx[1])
    np.testing.assert_array_equal(one[1], maps[1][1])


def test_layer_zero_matches_the_formula():
    model = _model()
    P = model.params
    idx = np.array([2, 7, 1, 1, 4, 0])
    T, C, H = len(idx), model.config.n_embd, model.config.n_head
    D = C // H
    x = P["wte.weight"][idx] + P["wpe.weight"][:T]  # (T, C)
    a, _ = layernorm_forward(x, P["h.0.ln_1.weight"], P["h.0.ln_1.bias"])
    qkv, _ = linear_forward(a, P["h.0.attn.c_attn.weight"], P["h.0.attn.c_attn.bias"])  # (T, 3C)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    p0 = attention_maps(model, idx)[0]
    for h in range(H):
        q = qkv[:, h * D:(h + 1) * D]
        k = qkv[:, C + h * D:C + (h + 1) * D]
        expected = softmax(q @ k.T / math.sqrt(D) + mask)
        # same float64 operations in a different order: agree to ~1e-15
        np.testing.assert_allclose(p0[h], expected, rtol=0, atol=1e-12)
