"""Chapter 2 (multi-head attention) runs end to end in fast mode and its checks hold."""

import numpy as np

FIGURES = ("02_multi_head", "02_multi_head_cost")


def test_chapter_02_multi_head(run_chapter):
    g, out = run_chapter("02_multi_head", FIGURES)

    # slicing c_attn / c_proj per head reproduces the model's split: float32
    # sums of 64 terms in another order agree to ~1e-6
    assert max(g["q0_diff"], g["slice_vs_split"], g["concat_vs_sum"], g["map_vs_model"]) < 1e-5
    assert len(g["heads"]) == g["H"] and g["heads"][0].shape[-1] == g["D"]

    # 4C^2 + 4C parameters per attention layer, whatever the head count
    assert len(g["param_checks"]) >= 5
    assert all(f == c for _, _, f, c in g["param_checks"])
    assert {h for _, h, _, _ in g["param_checks"]} >= {1, 2, 8}
    C = g["C"]
    assert g["attn_params_counted"](g["P"]) == 4 * C * C + 4 * C

    # 8TC^2 + 4T^2C FLOPs, counted from the multiplied arrays
    T = g["T"]
    assert g["flops_counted"] == g["flops_formula"] == 8 * T * C * C + 4 * T * T * C
    assert "8TC^2 + 4T^2C" in out

    # one statistic and one ablation per head; removing a head changes the loss
    n = g["cfg"].n_layer * g["H"]
    assert len(g["head_stats"]) == len(g["ablation"]) == n
    assert all(np.isfinite(v) and v != 0.0 for v in g["ablation"].values())
    for s in g["head_stats"].values():
        assert s["dist"] >= 0 and 0 <= s["prev"] <= 1 and 0 <= s["self"] <= 1
        assert 0 <= s["entropy"] <= np.log(g["cfg"].block_size) + 1e-6
