"""Chapter 7 (quantization) runs end to end in fast mode and its checks hold."""
import math

import numpy as np

FIGURES = ("07_quantization_grid", "07_quantization_error", "07_quantization_model", "07_quantization_speed")


def test_chapter_07_quantization(run_chapter):
    g, out = run_chapter("07_quantization", FIGURES)

    # The quantizer on five numbers: zero exact, error within half a step.
    assert g["affine"].dequantize()[2] == 0.0
    assert np.all(np.abs(g["affine"].dequantize() - g["x"]) <= g["affine"].scale / 2 + 1e-12)

    # Error against bits: about 6 dB a bit, MSE clipping never worse than min-max,
    # finer layouts never worse here.
    sqnr = g["sqnr"]
    assert abs(g["slope"] - 20 * math.log10(2)) < 0.5
    for name in g["LAYOUTS"]:
        assert all(c >= a - 1e-9 for a, c in zip(sqnr[name, False], sqnr[name, True]))
    assert sqnr["per channel", False][2] > sqnr["per tensor", False][2]  # at 4 bits

    # Block formats: sizes and what the nibbles mean.
    assert g["block"].size == 18 and g["format_sqnr"]["Q8_0"] > g["format_sqnr"]["Q4_0"]

    # The model: every format evaluated, fewer bytes than float32, and the
    # integer model is what the quantizer stores.
    res = g["results"]
    assert set(res) >= {"float32", "W8A8 (per-token int8 activations)", "Q4_0", "W2 groups of 32, QAT"}
    assert all(r[2] < res["float32"][2] for k, r in res.items() if k != "float32")
    assert res["Q4_0"][1] == 4.5 and res["Q8_0"][1] == 8.5
    assert all(np.isfinite(r[0]) for r in res.values())

    # The straight-through boundary.
    assert list(g["grad_demo"]) == [1, 1, 1, 0, 0]

    # Samples start with the prompt; speed is measured and printed (never asserted).
    assert all(s.startswith(g["PROMPT"]) for s in g["samples"].values())
    assert "CPU: " in out and "vs float32" in out
    assert len(g["speed"]) == 8 and all(t > 0 for t, _ in g["speed"].values())

    # The errata: codes without their scales are not the weights.
    assert g["errata_loss"] > g["float_loss"]
