"""Chapter 8 (distillation) runs end to end in fast mode and its checks hold."""
import math

import numpy as np

FIGURES = ("08_distillation_soft_targets", "08_distillation_curves", "08_distillation_sweeps")


def test_chapter_08_distillation(run_chapter):
    g, out = run_chapter("08_distillation", FIGURES)

    # Soft targets: flatter as T grows, same favourite character.
    e = g["entropies"]
    assert all(a < b for a, b in zip(e, e[1:]))

    # The T^2 limit: the scaled gradient tends to (s - t)/V, the unscaled one vanishes;
    # the hand-written gradient matches finite differences in float64.
    rows = g["t2_rows"]
    assert rows[-1][3] < 0.01 and rows[-1][1] < 1e-5 * rows[0][1]
    assert max(g["fd_errors"].values()) < 1e-6

    # Students: smaller, initialised from the teacher where shapes allow.
    assert g["probe"].num_params() < g["teacher"].num_params() / 4
    assert set(g["report"].values()) != {"random"}

    # The fair experiment: every run the same steps and batches; the distilled
    # runs after the first take the teacher's logits from the cache.
    steps = g["STEPS"]
    assert all(r.step == steps for r in g["runs"].values())
    assert len(g["final"]) == 4 and all(math.isfinite(v) for v in g["final"].values())
    assert g["cache"].misses == steps and g["cache"].hits > 0
    assert set(g["t_sweep"]) == set(g["SWEEP_T"]) and set(g["a_sweep"]) == set(g["SWEEP_ALPHA"])

    # Size, speed, samples, errata.
    assert g["size"]["parameters"][1] < g["size"]["parameters"][0]
    assert all(t.startswith(g["PROMPT"]) for t in g["samples"].values())
    assert "h." in g["errata_message"] or "wte" in g["errata_message"]
    assert "generation: teacher" in out and "ConfigError" in out
    assert np.isfinite(g["speed_s"]) and g["speed_s"] > 0
