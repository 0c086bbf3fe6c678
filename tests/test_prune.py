"""Unstructured pruning (minigpt.prune): exact counts and the tie rule,
pruning what is still alive, global pruning's single threshold, random
pruning, N:M, Wanda, the cubic schedule, and masks that survive training,
saving and resuming."""
import numpy as np
import pytest

from minigpt import GPT, CheckpointError, GPTConfig, TrainConfig, load_checkpoint, save_checkpoint
from minigpt.data import Dataset
from minigpt.prune import (
    GradualPruning,
    PruneError,
    apply,
    cubic_sparsity,
    global_masks,
    input_norms,
    is_nm,
    magnitude_masks,
    nm_masks,
    parse_nm,
    prunable_names,
    prune_by_scores,
    random_masks,
    sparsity,
    wanda_masks,
    wanda_scores,
)
from minigpt.tokenizer import CharTokenizer
from minigpt.train import train

W = "h.0.mlp.c_fc.weight"  # a prunable name for one-tensor dicts


def pruned_count(mask):
    return int((~mask).sum())


# ---------------------------------------------------------------- counting
@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 10, 16, 101])
@pytest.mark.parametrize("a", [0.0, 0.1, 0.25, 0.3, 0.5, 0.7, 0.95, 0.99])
def test_prunes_exactly_round_a_n(n, a):
    w = np.random.default_rng(n).standard_normal((n, 1))
    mask = magnitude_masks({W: w}, a)[W]
    assert pruned_count(mask) == round(a * n)  # Python's round: half to even
    # and they are the smallest: every pruned |w| <= every kept |w|
    if 0 < pruned_count(mask) < n:
        assert np.abs(w[~mask]).max() <= np.abs(w[mask]).min()


def test_round_half_to_even_on_tiny_tensors():
    for n, a, expected in [(1, 0.5, 0), (3, 0.5, 2), (5, 0.5, 2), (7, 0.5, 4), (1, 0.6, 1), (2, 0.25, 0)]:
        assert pruned_count(magnitude_masks({W: np.ones((n, 1))}, a)[W]) == expected, (n, a)


def test_ties_are_broken_by_flat_index():
    w = np.array([[3.0, 1.0, 1.0], [1.0, -1.0, 2.0]])  # four weights of |w| = 1 at flat 1, 2, 3, 4
    mask = magnitude_masks({W: w}, 0.5)[W]  # prunes 3 of them: the three earliest
    assert mask.tolist() == [[True, False, False], [False, True, True]]
    # the same rule in a global ranking: the earlier tensor first
    V = "h.0.mlp.c_proj.weight"
    g = global_masks({W: np.ones((2, 2)), V: np.ones((2, 2))}, 0.5)
    assert not g[W].any() and g[V].all()


def test_pruning_again_prunes_the_alive_weights():
    w = np.random.default_rng(0).standard_normal((16, 4))  # 64 weights
    m1 = magnitude_masks({W: w}, 0.5)
    m2 = magnitude_masks({W: w}, 0.5, masks=m1)
    assert m1[W].sum() == 32 and m2[W].sum() == 16  # 0.5 then 0.5 leaves 25%
    assert not (m2[W] & ~m1[W]).any()  # nothing revived
    # the second pass ranks only what was alive: its pruned are the 16 smallest of the 32 alive
    alive = np.sort(np.abs(w[m1[W]]))
    assert np.array_equal(np.sort(np.abs(w[m2[W]])), alive[16:])
    # and a target sparsity (of="all") counts what is already pruned
    m3 = magnitude_masks({W: w}, 0.8, masks=m1, of="all")
    assert pruned_count(m3[W]) == round(0.8 * 64) and not (m3[W] & ~m1[W]).any()


def test_per_output_prunes_each_column():
    rng = np.random.default_rng(1)
    w = rng.uniform(1, 2, (10, 3)) * rng.choice([-1, 1], (10, 3)) * np.array([1.0, 10.0, 100.0])  # columns apart
    mask = magnitude_masks({W: w}, 0.3, scope="output")[W]
    assert (~mask).sum(axis=0).tolist() == [3, 3, 3]  # per tensor would prune only column 0
    assert (~magnitude_masks({W: w}, 0.3)[W][:, 0]).sum() == 9


def test_global_pruning_uses_one_threshold():
    rng = np.random.default_rng(2)
    params = {"h.0.attn.c_attn.weight": rng.standard_normal((8, 24)) * 0.1,  # small weights
              "h.0.mlp.c_fc.weight": rng.standard_normal((8, 32)),
              "h.0.mlp.c_proj.weight": rng.standard_normal((32, 8)) * 3.0}
    masks = global_masks(params, 0.6)
    total = sum(p.size for p in params.values())
    assert sum(pruned_count(m) for m in masks.values()) == round(0.6 * total)
    pruned = np.concatenate([np.abs(params[k][~m]) for k, m in masks.items()])
    kept = np.concatenate([np.abs(params[k][m]) for k, m in masks.items()])
    assert pruned.max() <= kept.min()  # a single threshold across tensors
    threshold = np.sort(np.concatenate([np.abs(p).ravel() for p in params.values()]))[round(0.6 * total) - 1]
    assert all(np.array_equal(m, np.abs(params[k]) > threshold) for k, m in masks.items())  # no ties here
    # the small-weight layer loses more than the global 60%, the large one less
    s = {k: pruned_count(m) / m.size for k, m in masks.items()}
    assert s["h.0.attn.c_attn.weight"] > 0.6 > s["h.0.mlp.c_proj.weight"]


def test_random_pruning_is_exact_and_random():
    w = np.random.default_rng(3).standard_normal((20, 10))
    m1 = random_masks({W: w}, 0.37, seed=1)[W]
    m2 = random_masks({W: w}, 0.37, seed=2)[W]
    assert pruned_count(m1) == pruned_count(m2) == round(0.37 * 200)
    assert not np.array_equal(m1, m2)
    again = random_masks({W: w}, 0.5, masks={W: m1}, seed=3)[W]
    assert again.sum() == m1.sum() - round(0.5 * m1.sum()) and not (again & ~m1).any()


def test_prunable_names_and_bad_requests():
    params = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)).params
    names = prunable_names(params)
    assert names == [f"h.{i}.{k}" for i in range(2) for k in
                     ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")]
    assert prunable_names(params, embeddings=True)[:2] == ["wte.weight", "wpe.weight"]
    for bad in (1.0, -0.1, 1.5, float("nan"), "half"):
        with pytest.raises(PruneError, match="sparsity"):
            magnitude_masks(params, bad)
    with pytest.raises(PruneError, match="not a prunable weight"):
        magnitude_masks(params, 0.5, names=["h.0.ln_1.weight"])
    with pytest.raises(PruneError, match="not a prunable weight"):
        magnitude_masks(params, 0.5, names=["h.0.mlp.c_fc.bias"])
    masks = magnitude_masks(params, 0.5, embeddings=True)
    assert set(masks) == set(names) | {"wte.weight", "wpe.weight"}
    pruned = apply(params, masks)
    pruned["h.0.ln_1.weight"][0] = 7.0  # a copy of everything: training it leaves params alone
    assert params["h.0.ln_1.weight"][0] == 1.0 and not np.shares_memory(pruned["wte.weight"], params["wte.weight"])
    assert all(pruned[k].dtype == params[k].dtype and not pruned[k][~m].any() for k, m in masks.items())
    assert abs(sparsity(masks) - 0.5) < 1e-3


# ------------------------------------------------------------------- N:M
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 4), (1, 8), (4, 4)])
def test_nm_keeps_exactly_n_largest_per_group(n, m):
    w = np.random.default_rng(4).standard_normal((16, 5))
    mask = nm_masks({W: w}, n, m)[W]
    groups_w = np.abs(w).reshape(16 // m, m, 5)  # group g of output j: inputs gm..gm+m-1
    groups_m = mask.reshape(16 // m, m, 5)
    assert (groups_m.sum(axis=1) == n).all() and is_nm(mask, n, m)
    kept_min = np.where(groups_m, groups_w, np.inf).min(axis=1)
    pruned_max = np.where(groups_m, -np.inf, groups_w).max(axis=1)
    assert (kept_min >= pruned_max).all()  # the n largest of each group


def test_nm_ties_errors_and_existing_masks():
    mask = nm_masks({W: np.ones((4, 1))}, 2, 4)[W]
    assert mask[:, 0].tolist() == [False, False, True, True]  # ties: the lower index is pruned
    with pytest.raises(PruneError, match="not a multiple of 4"):
        nm_masks({W: np.ones((6, 2))}, 2, 4)
    for text in ("3:2", "0:4", "2-4", "a:b"):
        with pytest.raises(PruneError):
            parse_nm(text)
    assert parse_nm("2:4") == (2, 4)
    # weights already pruned count towards the M - N a group loses
    w = np.arange(1.0, 9.0).reshape(8, 1)
    prior = {W: np.array([[False], [True], [True], [True], [True], [True], [True], [True]])}
    mask = nm_masks({W: w}, 2, 4, masks=prior)[W]
    assert mask[:, 0].tolist() == [False, False, True, True, False, False, True, True]


# ----------------------------------------------------------------- Wanda
CFG = GPTConfig(vocab_size=13, block_size=9, n_layer=2, n_head=2, n_embd=8, dtype="float64")


def perturbed_model(seed=0):
    model = GPT(CFG, seed=seed, backend="numpy")
    rng = np.random.default_rng(seed + 1)
    for p in model.params.values():
        p += 0.3 * rng.standard_normal(p.shape)
    return model


def test_wanda_equals_magnitude_per_output_when_input_norms_are_equal():
    params = perturbed_model().params
    names = prunable_names(params)
    equal = {n: np.full(params[n].shape[0], 2.5) for n in names}
    wanda = prune_by_scores(wanda_scores(params, equal, names), 0.5, scope="output")
    assert all(np.array_equal(wanda[n], m) for n, m in magnitude_masks(params, 0.5, scope="output").items())
    wanda_t = prune_by_scores(wanda_scores(params, equal, names), 0.5, scope="tensor")
    assert all(np.array_equal(wanda_t[n], m) for n, m in magnitude_masks(params, 0.5).items())


def test_wanda_reads_input_norms_from_the_activations():
    model = perturbed_model()
    idx = np.random.default_rng(5).integers(0, CFG.vocab_size, (3, 7))
    norms = input_norms(model, idx)
    acts = model.activations(idx)
    x = acts["h.1.mlp.c_proj"].reshape(-1, 4 * CFG.n_embd)  # (B T, 4C)
    np.testing.assert_allclose(norms["h.1.mlp.c_proj.weight"], np.sqrt((x ** 2).sum(axis=0)), rtol=1e-12)
    # one pass on the dense model (sequential=False) is the score |W| ||X_j|| compared per output
    names = prunable_names(model.params)
    expected = prune_by_scores({n: np.abs(model.params[n]) * norms[n][:, None] for n in names}, 0.5,
                               scope="output")
    got = wanda_masks(model, idx, 0.5, sequential=False)
    assert all(np.array_equal(got[n], expected[n]) for n in names)
    assert all((~got[n]).sum(axis=0).tolist() == [round(0.5 * got[n].shape[0])] * got[n].shape[1] for n in names)
    # sequential: block 0's masks are the same, block 1 sees block 0 pruned
    seq = wanda_masks(model, idx, 0.5)
    assert all(np.array_equal(seq[n], got[n]) for n in names if n.startswith("h.0."))
    with pytest.raises(PruneError, match="embeddings"):
        wanda_masks(model, idx, 0.5, names=["wte.weight"])


def test_wanda_keeps_small_weights_on_large_inputs():
    w = np.array([[0.1], [1.0]])  # input 0: small weight, input 1: large weight
    norms = {W: np.array([100.0, 1.0])}  # but input 0 is 100x larger
    assert wanda_scores({W: w}, norms, [W])[W][:, 0].tolist() == [10.0, 1.0]
    mask = prune_by_scores(wanda_scores({W: w}, norms, [W]), 0.5, scope="output")[W]
    assert mask[:, 0].tolist() == [True, False]  # magnitude would keep the other one
    assert magnitude_masks({W: w}, 0.5)[W][:, 0].tolist() == [False, True]


# ---------------------------------------------------------- the schedule
def test_cubic_schedule_endpoints_and_values():
    s_i, s_f, t0, n, dt = 0.1, 0.9, 100, 8, 25
    assert cubic_sparsity(t0, s_i, s_f, t0, n, dt) == s_i
    assert cubic_sparsity(t0 + n * dt, s_i, s_f, t0, n, dt) == s_f
    assert cubic_sparsity(0, s_i, s_f, t0, n, dt) == s_i and cubic_sparsity(10_000, s_i, s_f, t0, n, dt) == s_f
    # halfway: s_f + (s_i - s_f) / 8; a quarter: s_f + (s_i - s_f) (3/4)^3
    assert abs(cubic_sparsity(t0 + n * dt / 2, s_i, s_f, t0, n, dt) - (0.9 - 0.8 / 8)) < 1e-15
    assert abs(cubic_sparsity(t0 + n * dt / 4, s_i, s_f, t0, n, dt) - (0.9 - 0.8 * 27 / 64)) < 1e-15
    values = [cubic_sparsity(t0 + k * dt, s_i, s_f, t0, n, dt) for k in range(n + 1)]
    steps = np.diff(values)
    assert (steps > 0).all() and (np.diff(steps) < 0).all()  # rising, fast first
    with pytest.raises(PruneError):
        cubic_sparsity(0, 0, 0.5, 0, 0, 10)


# ---------------------------------------------- masks through training
def tiny_setup(tmp_path=None, steps=50):
    text = "def f(x):\n    return x * 2 + 1\n" * 60
    tok = CharTokenizer.from_text(text)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16)
    ds = Dataset.from_text(text, tok, 16)
    tcfg = TrainConfig(steps=steps, batch_size=4, lr=1e-2, warmup_steps=5, eval_every=25, eval_batches=1,
                       checkpoint_every=1000)
    return GPT(cfg, seed=0, tokenizer=tok, backend="numpy"), ds, tcfg


def test_masks_exact_after_50_finetuning_steps_saved_and_resumed(tmp_path):
    model, ds, tcfg = tiny_setup()
    masks = magnitude_masks(model.params, 0.6)
    train(model, ds, tcfg, out=tmp_path / "p.npz", progress=False, masks=masks)
    for k, m in masks.items():
        assert not model.params[k][~m].any() and model.params[k][m].all()  # pruned exactly 0, the rest moved
    ckpt = load_checkpoint(tmp_path / "p.npz")
    assert set(ckpt.masks) == set(masks) and all(np.array_equal(ckpt.masks[k], m) for k, m in masks.items())
    assert all(ckpt.masks[k].dtype == np.bool_ for k in masks)
    arrays = ckpt.optimizer_state["arrays"]
    for k, m in masks.items():  # AdamW's moments of pruned weights are 0 too
        assert not arrays[f"optimizer.m.{k}"][~m].any() and not arrays[f"optimizer.v.{k}"][~m].any()
    # resuming without passing masks keeps the checkpoint's
    train(ckpt.model, ds, tcfg.replace(steps=80), out=tmp_path / "q.npz", resume=ckpt, progress=False)
    again = load_checkpoint(tmp_path / "q.npz")
    assert again.step == 80 and all(not again.model.params[k][~m].any() for k, m in masks.items())
    assert all(np.array_equal(again.masks[k], m) for k, m in masks.items())


def test_a_checkpoint_without_masks_has_none_and_bad_masks_are_refused(tmp_path):
    model, _, _ = tiny_setup()
    model.save(tmp_path / "plain.npz")
    assert load_checkpoint(tmp_path / "plain.npz").masks is None
    with pytest.raises(CheckpointError, match="mask of h.0.mlp.c_fc.weight"):
        save_checkpoint(tmp_path / "x.npz", model, masks={W: np.ones((2, 2), bool)})
    # a file whose mask disagrees with its parameter
    good = {W: np.ones(model.params[W].shape, bool)}
    save_checkpoint(tmp_path / "m.npz", model, masks=good)
    with np.load(tmp_path / "m.npz") as f:
        arrays = {k: f[k] for k in f.files}
    assert arrays["mask." + W].dtype == np.uint8 and arrays["mask." + W].size == -(-good[W].size // 8)  # packed
    arrays["mask." + W] = arrays["mask." + W][:3]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(CheckpointError, match="mask.h.0.mlp.c_fc.weight"):
        load_checkpoint(tmp_path / "bad.npz")


def test_gradual_pruning_reaches_its_target_inside_training():
    model, ds, tcfg = tiny_setup(steps=60)
    gp = GradualPruning(model.params, final_sparsity=0.75, t0=10, n=4, dt=10)
    train(model, ds, tcfg, progress=False, **gp.hooks())
    assert [t for t, _ in gp.history] == [10, 20, 30, 40, 50]
    assert [s for _, s in gp.history] == [cubic_sparsity(t, 0.0, 0.75, 10, 4, 10) for t in range(10, 60, 10)]
    for k, m in gp.masks.items():
        assert pruned_count(m) == round(0.75 * m.size)  # per tensor, exactly
        assert not model.params[k][~m].any()
