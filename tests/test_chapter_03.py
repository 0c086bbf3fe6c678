"""Chapter 3 (the block) runs end to end in fast mode and its checks hold."""
import math
from pathlib import Path

import numpy as np

FIGURES = ("03_block_ln", "03_block_gelu")


def test_chapter_03_block(run_chapter):
    g, out = run_chapter("03_block", FIGURES)

    # the FFN built from minigpt layers is the model's MLP (float32 logits)
    assert g["hand_vs_model"] < 1e-4 and g["positionwise_diff"] < 1e-5
    # the loose formula is affine (float64 rounding ~1e-16); the FFN is not
    assert g["loose_nonlinearity"] < 1e-12 and g["collapse_diff"] < 1e-12
    assert g["ffn_nonlinearity"] > 0.05
    assert "A formula to avoid" in (Path(__file__).resolve().parent.parent / "chapters" / "03_block.py").read_text()

    # LayerNorm output: mean 0, variance 1 (eps = 1e-5 shifts the variance slightly)
    assert g["ln_mean_err"] < 1e-5 and g["ln_var_err"] < 1e-3
    # pre-LN vs post-LN at init
    assert g["pre_growth"] < g["unscaled_growth"]
    assert np.allclose(g["post_rms"], 1.0, atol=1e-3)
    assert g["post_grad_ratio"] > 3
    for loss, rms, gn in g["runs"].values():
        assert abs(loss - math.log(64)) < 0.3  # untrained: near-uniform predictions
        assert len(rms) == len(gn) == g["L_deep"] and np.all(gn > 0)

    # GELU: the tanh approximation is within 5e-4 of x Phi(x); its minimum is -0.17
    assert g["gelu_tanh_error"] < 1e-3 and -0.18 < g["gelu_min"] < -0.16

    # P = VC + TC + L(12C^2 + 13C) + 2C, against model.params and GPT-2's shapes
    f = g["gpt_params_formula"]
    assert len(g["param_count_checks"]) >= 4
    assert all(formula == counted for _, formula, counted in g["param_count_checks"])
    assert g["gpt2_counted"] == f(50257, 1024, 12, 768) == 124_439_808
    cfg = g["cfg"]
    assert g["model"].num_params() == f(cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_embd)
    assert "124,439,808" in out
