"""minigpt.prune against torch.nn.utils.prune, a reference nobody here wrote:
the masks of l1_unstructured (once, and again on what is left: torch's
PruningContainer) and of global_unstructured equal minigpt's masks on the
same tensors.

Both prune round(amount x n) entries (Python's round) with the smallest
|w|. They differ only in how ties are broken (torch.topk's order is not
specified), so the tensors are float64 normal draws, where two equal
magnitudes have probability ~0, and each test checks that no tie sits at
the threshold. Needs the crosscheck extra; skipped otherwise (a failure
under MINIGPT_REQUIRE_CROSSCHECK=1).
"""
import numpy as np
import pytest

from crosscheck_support import need

torch = need("torch")
prune = need("torch.nn.utils.prune")

from minigpt import GPT, GPTConfig  # noqa: E402
from minigpt.prune import global_masks, magnitude_masks, prunable_names  # noqa: E402


def holder(w):
    """A module with one parameter "weight" holding a copy of w."""
    m = torch.nn.Module()
    m.weight = torch.nn.Parameter(torch.from_numpy(np.array(w)))
    return m


def no_tie_at_threshold(values, k):
    """The k-th and (k+1)-th smallest |w| differ, so the pruned set is unique."""
    s = np.sort(np.abs(np.concatenate([v.ravel() for v in values])))
    return k == 0 or k == s.size or s[k - 1] < s[k]


SHAPES = [(1, 1), (3, 1), (7, 3), (16, 48), (48, 16), (64, 256), (5, 13)]
AMOUNTS = [0.0, 0.1, 0.25, 0.33, 0.5, 0.7, 0.9, 0.99]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("amount", AMOUNTS)
def test_l1_unstructured_masks_are_identical(shape, amount):
    w = np.random.default_rng(shape[0] * 100 + shape[1]).standard_normal(shape)
    assert no_tie_at_threshold([w], round(amount * w.size))
    m = holder(w)
    prune.l1_unstructured(m, "weight", amount=amount)
    ours = magnitude_masks({"h.0.mlp.c_fc.weight": w}, amount)["h.0.mlp.c_fc.weight"]
    np.testing.assert_array_equal(ours, m.weight_mask.numpy().astype(bool))


@pytest.mark.parametrize("first,second", [(0.5, 0.5), (0.3, 0.6), (0.9, 0.5), (0.25, 0.0)])
def test_pruning_twice_prunes_what_is_left_like_torch(first, second):
    w = np.random.default_rng(7).standard_normal((24, 40))
    m = holder(w)
    prune.l1_unstructured(m, "weight", amount=first)
    prune.l1_unstructured(m, "weight", amount=second)  # torch's PruningContainer: a fraction of the alive
    name = "h.0.attn.c_proj.weight"
    ours = magnitude_masks({name: w}, first)
    ours = magnitude_masks({name: w}, second, masks=ours)[name]
    np.testing.assert_array_equal(ours, m.weight_mask.numpy().astype(bool))
    if (first, second) == (0.5, 0.5):
        assert ours.sum() == w.size // 4  # 0.5 then 0.5 leaves 25%


@pytest.mark.parametrize("amount", [0.2, 0.5, 0.8, 0.95])
def test_global_unstructured_on_a_models_matrices(amount):
    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=3, n_head=4, n_embd=32, dtype="float64")
    params = GPT(cfg, seed=0).params  # residual projections have a smaller scale: layers lose unequal shares
    names = prunable_names(params)
    holders = [holder(params[n]) for n in names]
    k = round(amount * sum(params[n].size for n in names))
    assert no_tie_at_threshold([params[n] for n in names], k)
    prune.global_unstructured([(h, "weight") for h in holders], pruning_method=prune.L1Unstructured, amount=amount)
    ours = global_masks(params, amount)
    for n, h in zip(names, holders):
        np.testing.assert_array_equal(ours[n], h.weight_mask.numpy().astype(bool), err_msg=n)
    shares = [1 - ours[n].mean() for n in names]
    assert max(shares) - min(shares) > 0.05  # one threshold, not the same fraction per tensor


def test_per_tensor_on_a_models_matrices():
    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32, dtype="float64")
    params = GPT(cfg, seed=1).params
    ours = magnitude_masks(params, 0.6, embeddings=True)
    for n, mask in ours.items():
        assert no_tie_at_threshold([params[n]], round(0.6 * params[n].size))
        h = holder(params[n])
        prune.l1_unstructured(h, "weight", amount=0.6)
        np.testing.assert_array_equal(mask, h.weight_mask.numpy().astype(bool), err_msg=n)
