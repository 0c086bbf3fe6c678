"""Chapter 4 (backprop) runs end to end in fast mode and its checks hold."""

import numpy as np

FIGURES = ("04_backprop", "04_backprop_step_size", "04_backprop_model")


def test_chapter_04_backprop(run_chapter):
    g, out = run_chapter("04_backprop", FIGURES)

    # Centered differences in float64 have a best error near eps^(2/3) ~ 1e-11;
    # every correct backward must be far below 1e-7, a wrong one far above.
    assert g["max_op_error"] < 1e-7
    assert g["broken_error"] > 1e-2
    expected = {"linear: dW", "layernorm: dx", "gelu: dx", "softmax: dz", "attention [numpy]: dk",
                "multihead attn: dqkv", "cross-entropy: dlogits", "embedding: dwte", "lm head: dwte",
                "head gate: dg", "block: dx"}
    assert expected <= set(g["op_errors"])
    # every backend's attention and every compiled kernel's backward is checked
    for backend in g["BACKENDS"]:
        assert f"attention [{backend}]: dq" in g["op_errors"]
    assert {"gelu [numba]: dx", "layernorm [numba]: dx"} <= set(g["op_errors"])
    # cross-entropy's gradient is p - y exactly (same float64 operations up to
    # one subtraction), and agrees with finite differences.
    assert g["ce_p_minus_y_error"] < 1e-15 and g["ce_numeric_error"] < 1e-8
    assert g["softmax_jacobian_error"] < 1e-8

    # The V: the best step sits near eps^(1/3) for each dtype (within a factor
    # of ~30 on the sampled grid), and float32 is far worse than float64.
    for dtype in ("float64", "float32"):
        cube_root = np.finfo(dtype).eps ** (1 / 3)
        assert cube_root / 30 < g["best_h"][dtype] < cube_root * 30
    assert g["best_err"]["float64"] < 1e-9 < g["best_err"]["float32"]

    # The backward order is the forward order reversed, and the whole model
    # passes the finite-difference check for every tensor.
    order = g["cache_order"]
    assert order[0] == "emb" and order[-1] == "loss"
    assert set(g["model_errors"]) == set(g["model"].params)
    assert g["max_model_error"] < 1e-6
    assert "largest relative error over 28 tensors" in out
