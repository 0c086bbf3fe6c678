"""Students built from a teacher (minigpt.distill.student): the config, and
an initialisation that copies exactly the intended tensors.

The checks compare with indices written out by hand (a loop over heads and
dimensions), not with the module's own index arithmetic; equality is exact
because a copy does no arithmetic.
"""
import numpy as np
import pytest

from minigpt import GPT, GPTConfig
from minigpt.distill.errors import DistillError
from minigpt.distill.student import init_student, layer_map, make_student, student_config, summarize
from minigpt.model import init_params


def teacher(L=4, C=32, H=4, seed=0):
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=L, n_head=H, n_embd=C, dtype="float64")
    rng = np.random.default_rng(seed)  # distinct O(1) values everywhere, so a wrong index shows
    return GPT(cfg, params={k: rng.normal(size=v.shape) for k, v in init_params(cfg).items()}, backend="numpy")


def test_student_config_keeps_vocab_and_context():
    t = teacher()
    cfg = student_config(t.config, n_layer=2, n_embd=16, n_head=2)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head) == (2, 16, 2)
    assert (cfg.vocab_size, cfg.block_size, cfg.dtype) == (11, 8, "float64")
    assert student_config(t.config) == t.config
    with pytest.raises(DistillError, match="divisible"):
        student_config(t.config, n_embd=18, n_head=4)
    with pytest.raises(DistillError, match="n_layer"):
        student_config(t.config, n_layer=-1)


def test_layer_map_is_every_other_layer_for_half_the_depth():
    assert layer_map(4, 2) == [0, 2]
    assert layer_map(12, 6) == [0, 2, 4, 6, 8, 10]
    assert layer_map(3, 3) == [0, 1, 2]
    assert layer_map(5, 2) == [0, 2]


def test_same_shape_student_is_the_teacher():
    t = teacher()
    s, report = make_student(t, init="teacher")
    assert set(s.params) == set(t.params)
    for k in t.params:
        np.testing.assert_array_equal(s.params[k], t.params[k])
        assert s.params[k] is not t.params[k] and report[k] == k
    x = np.arange(8)[None] % 11
    # equal weights; BLAS may pick another kernel for differently aligned copies, so a few ulp
    np.testing.assert_allclose(s.forward(x)[0], t.forward(x)[0], rtol=1e-12, atol=1e-12)


def test_half_depth_copies_every_other_block_embeddings_and_final_layernorm():
    t = teacher(L=4)
    s, report = make_student(t, n_layer=2)
    for name in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"):
        np.testing.assert_array_equal(s.params[name], t.params[name])
    for i, j in ((0, 0), (1, 2)):
        for k in s.block_params(i):
            np.testing.assert_array_equal(s.params[f"h.{i}.{k}"], t.params[f"h.{j}.{k}"])
            assert report[f"h.{i}.{k}"] == f"h.{j}.{k}"
    assert summarize(report) == f"{len(s.params)} tensors copied, 0 sliced, 0 random"


def test_narrower_student_takes_the_first_heads_and_dimensions():
    """Teacher C=32, H=4 (D=8); student C=12, H=2 (D=6): heads 0, 1, their first 6 dims."""
    t = teacher(L=2, C=32, H=4)
    s, report = make_student(t, n_layer=1, n_embd=12, n_head=2)
    T, S = t.params, s.params
    np.testing.assert_array_equal(S["wte.weight"], T["wte.weight"][:, :12])
    np.testing.assert_array_equal(S["ln_f.bias"], T["ln_f.bias"][:12])
    cols = [part * 32 + h * 8 + d for part in range(3) for h in range(2) for d in range(6)]
    rows = [h * 8 + d for h in range(2) for d in range(6)]
    np.testing.assert_array_equal(S["h.0.attn.c_attn.weight"], T["h.0.attn.c_attn.weight"][:12][:, cols])
    np.testing.assert_array_equal(S["h.0.attn.c_attn.bias"], T["h.0.attn.c_attn.bias"][cols])
    np.testing.assert_array_equal(S["h.0.attn.c_proj.weight"], T["h.0.attn.c_proj.weight"][rows][:, :12])
    np.testing.assert_array_equal(S["h.0.mlp.c_fc.weight"], T["h.0.mlp.c_fc.weight"][:12, :48])
    np.testing.assert_array_equal(S["h.0.mlp.c_proj.weight"], T["h.0.mlp.c_proj.weight"][:48, :12])
    np.testing.assert_array_equal(S["h.0.ln_2.weight"], T["h.0.ln_2.weight"][:12])
    assert all(v.endswith("[slice]") for v in report.values())


def test_wider_heads_than_the_teacher_stay_random():
    """Student C=16 with one head of 16 dims: the teacher's heads have 8, so
    attention cannot be sliced and keeps GPT-2's random init; the rest is copied."""
    t = teacher(L=2, C=32, H=4)
    s, report = make_student(t, n_layer=2, n_embd=16, n_head=1, seed=3)
    rand = init_params(s.config, seed=3)
    for k in ("attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight"):
        assert report[f"h.0.{k}"] == "random"
        np.testing.assert_array_equal(s.params[f"h.0.{k}"], rand[f"h.0.{k}"])
    np.testing.assert_array_equal(s.params["h.1.mlp.c_fc.weight"], t.params["h.1.mlp.c_fc.weight"][:16, :64])


def test_random_init_is_gpt2_init_and_ignores_the_teacher():
    t = teacher()
    s, report = make_student(t, n_layer=3, n_embd=48, n_head=3, init="random", seed=5)  # even a wider one
    for k, v in init_params(s.config, seed=5).items():
        np.testing.assert_array_equal(s.params[k], v)
    assert set(report.values()) == {"random"}


def test_impossible_teacher_init_is_a_user_error():
    t = teacher(L=2, C=16, H=2)
    with pytest.raises(DistillError, match="cannot start"):
        make_student(t, n_layer=3)
    with pytest.raises(DistillError, match="cannot start"):
        make_student(t, n_embd=32)
    with pytest.raises(DistillError, match="unknown init"):
        make_student(t, init="copy")
    q = dict(t.params)
    q["h.0.mlp.c_fc.weight"] = q["h.0.mlp.c_fc.weight"].astype(np.int8)
    with pytest.raises(DistillError, match="float"):
        init_student(q, t.config, student_config(t.config, n_layer=1))


def test_training_the_student_leaves_the_teacher_alone():
    t = teacher(L=2)
    before = {k: v.copy() for k, v in t.params.items()}
    s, _ = make_student(t, n_layer=1)
    for v in s.params.values():
        v += 1.0
    for k, v in t.params.items():
        np.testing.assert_array_equal(v, before[k])
