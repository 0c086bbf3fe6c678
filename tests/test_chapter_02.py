"""Chapter 2 (multi-head attention) runs end to end in fast mode and its checks hold."""
import runpy
from pathlib import Path

import numpy as np

CHAPTER = Path(__file__).resolve().parent.parent / "chapters" / "02_multi_head.py"
FIGURES = ("02_multi_head", "02_multi_head_cost")


def test_chapter_02_multi_head(tmp_path, tmp_path_factory, monkeypatch, capsys):
    monkeypatch.setenv("MINIGPT_FAST", "1")
    # shared by the chapter tests of this session: the fast model trains once
    monkeypatch.setenv("MINIGPT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "minigpt-cache"))
    monkeypatch.setenv("MINIGPT_FIGURES_DIR", str(tmp_path / "figs"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    g = runpy.run_path(str(CHAPTER), run_name="__main__")
    out = capsys.readouterr().out

    for name in FIGURES:
        png = tmp_path / "figs" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert png.stat().st_size < 150_000

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
