"""Chapter 7 (quantization) runs end to end in fast mode and its checks hold."""
import math

import numpy as np

FIGURES = ("07_quantization_grid", "07_quantization_error", "07_quantization_model", "07_quantization_outliers",
           "07_quantization_methods", "07_quantization_speed")


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

    # GPTQ: on the inputs each layer saw, its output error never above RTN's, for every scheme.
    for label, r in g["gptq"].items():
        assert np.isfinite(r["gptq"]) and np.isfinite(r["rtn"]), label
        assert all(0 <= e["gptq"] <= e["rtn"] for e in r["layers"].values()), label
    assert len(g["gptq"]["W3 groups of 32"]["layers"]) == 4 * g["model"].config.n_layer

    # Outliers and SmoothQuant: every linear input's channel maxima, the smoothed float model is
    # the same model, and smoothing cuts the W8A8 error of the layer with outlier channels.
    assert set(g["maxima"]) == set(g["gptq"]["W3 groups of 32"]["layers"])
    assert all(m.min() >= 0 and m.max() > 0 for m in g["maxima"].values())
    assert abs(g["smooth_float_loss"] - g["float_loss"]) < 1e-4
    none, a25, a50, a75 = g["outlier_error"]["two outlier channels"]
    assert a50 < none / 2 and all(np.isfinite(v) for v in g["smooth_loss"].values())

    # AWQ: alpha on the grid, each scaled layer's calibration error at most RTN's (alpha = 0 is a candidate).
    for label, r in g["awq"].items():
        assert np.isfinite(r["loss"]), label
        assert len(r["report"]) == 3 * g["model"].config.n_layer  # mlp.c_proj is not scaled
        assert all(0 <= rep["alpha"] <= 1 and rep["awq"] <= rep["rtn"] for rep in r["report"].values()), label

    # Samples start with the prompt; speed is measured and printed (never asserted).
    assert all(s.startswith(g["PROMPT"]) for s in g["samples"].values())
    assert "CPU: " in out and "vs float32" in out
    assert len(g["speed"]) == 8 and all(t > 0 for t, _ in g["speed"].values())

    # Deep Compression: the five stages of every run, the bytes never growing after pruning (a CSR
    # matrix may outweigh the dense one when few weights are pruned), each compressing stage
    # strictly smaller, the Huffman stage lossless, and the reported ratio one a run reached within 0.05 nats.
    for run, rows in g["dc_rows"].items():
        assert [r["stage"].split()[0] for r in rows] == [s.split()[0] for s in g["STAGES"]], run
        ratios = [r["ratio"] for r in rows]
        assert ratios[0] == 1.0 and all(a <= b for a, b in zip(ratios[1:], ratios[2:])), (run, ratios)
        assert ratios[2] == ratios[1] and ratios[4] == ratios[3], run  # fine-tuning changes values, not bytes
        assert ratios[3] > ratios[2] and ratios[5] > ratios[4] > 1, run
        assert rows[5]["val_loss"] == rows[4]["val_loss"], run  # Huffman coding is lossless
        assert all(np.isfinite(r["val_loss"]) for r in rows), run
    within = [ratio for rise, ratio in g["dc_final"].values() if rise <= 0.05]
    assert g["dc_best"] == max(within, default=None)
    assert "at a validation-loss increase of at most 0.05 nats" in out and "35x AlexNet, 49x VGG-16" in out

    # Weight sharing alone: b-bit packed indices and a codebook a matrix, fewer bits than the
    # linear formats' (a scale a channel or group); Huffman codes (optimal, so never longer than fixed
    # width, but with a length byte a symbol besides) come out shorter on weights peaked around 0.
    for bits, r in g["kmeans_vs_linear"].items():
        assert bits < r["bits"] < results_bits(g, bits), (bits, r)
        assert r["huffman bits"] <= r["bits"] and all(np.isfinite(v) for v in r.values())

    # The errata: codes without their scales are not the weights.
    assert g["errata_loss"] > g["float_loss"]


def results_bits(g, bits):
    """Bits a weight of round to nearest per channel at `bits` (section 6 of the chapter)."""
    return g["results"][f"W{bits} per channel"][1]
