"""Chapter 1 (attention) runs end to end in fast mode and its checks hold."""

import numpy as np

FIGURES = ("01_attention", "01_attention_maps")


def test_chapter_01_attention(run_chapter):
    g, out = run_chapter("01_attention", FIGURES)

    # Var(q.k) = d_k and Var(q.k / sqrt(d_k)) = 1: with >= 4000 pairs the
    # sample variance is within ~0.1 of the truth (sd sqrt(8/4000) at d_k=1)
    assert abs(g["scaled_var_mean"] - 1) < 0.1
    assert np.all(np.abs(g["var_over_dk"] - 1) < 0.25)
    np.testing.assert_allclose(g["unscaled_var"], np.array(g["d_ks"]) * g["scaled_var"], rtol=1e-9)
    # saturation without scaling, none with it
    assert g["max_p_unscaled_512"] > 0.8 and g["max_p_scaled_spread"] < 0.1
    assert g["entropy_unscaled_512"] < 1.0 < 2.5 < g["entropy_scaled_min"] <= np.log(32)

    # the causal mask: editing a later token changes no earlier output
    assert g["causal_core_change"] == 0.0 and g["last_row_change"] > 0
    assert g["causal_model_change"] < 1e-5 and g["first_edit_change"] > 0
    assert g["kv_row_diff"] < 1e-12

    # every registered backend equals the formula: float64 to rounding,
    # float32 to a few ulps of the O(1) outputs
    assert "numpy" in g["backend_max_diff"]
    for name, (d64, d32) in g["backend_max_diff"].items():
        assert d64 < 1e-12 and d32 < 1e-5, name
        assert name in out

    # attention maps of the trained model are causal distributions
    assert g["hand_vs_probe"] < 1e-6 and g["future_weight"] == 0.0 and g["row_sum_error"] < 1e-5
    assert len(g["maps"]) == g["model"].config.n_layer
    assert "mean Var(q.k / sqrt(d_k))" in out
