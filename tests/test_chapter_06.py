"""Chapter 6 (pruning) runs end to end in fast mode and its checks hold."""
import numpy as np

FIGURES = ("06_pruning_weights", "06_pruning_sweep", "06_pruning_sensitivity", "06_pruning_heads",
           "06_pruning_speed")


def test_chapter_06_pruning(run_chapter):
    g, out = run_chapter("06_pruning", FIGURES)

    # the errata: the snippet drops whole tensors (embeddings and block 0), zeroes nothing
    assert g["dropped"][:2] == ["wte.weight", "wpe.weight"] and g["slots_misfit"] > 0
    # removing the smallest half of a matrix moves its output less than a random half
    assert g["change"]["smallest half"] < g["change"]["random half"]
    assert g["energy"]["smallest half"] < g["energy"]["random half"]

    # every sweep point was measured, and is a finite loss
    for table, grid in ((g["oneshot"], g["SPARSITIES"]), (g["finetuned"], g["FT_SPARSITIES"])):
        assert all(len(v) == len(grid) and np.isfinite(v).all() for v in table.values())
    assert set(g["finetuned"]) == {"random", "magnitude", "global", "Wanda", "gradual"}
    assert set(g["nm_oneshot"]) == {"3:4", "2:4", "1:4", "1:8"}
    assert "sparsity at +0.05 nats" in out

    # sensitivity: the budget holds on the training windows it was measured on, and
    # the three methods compared prune the same total
    assert g["sens_rise"] <= g["BUDGET"]
    totals = {k: sum(int((~m).sum()) for m in v.values()) for k, v in g["same_total"].items()}
    assert max(totals.values()) - min(totals.values()) <= len(g["sens_per"])  # rounding per matrix at most

    # heads: the gate gradient agrees with finite differences, and gating all heads
    # of all layers off gives one loss whatever the order
    assert abs(g["analytic"] - g["numeric"]) <= 1e-6 * max(1e-3, abs(g["analytic"]))
    L, H = g["importance"].shape
    ends = {curve[-1] for curve in g["removal"].values()}
    assert len(ends) == 1 and all(len(c) == L * H + 1 for c in g["removal"].values())

    # removal for real: smaller matrices, the gated model's logits
    assert g["small"].layer_shapes() == [(H // 2, g["F"] // 2)] * L
    assert g["max_diff"] < 1e-4 * np.abs(g["logits_gated"]).max()

    # size: masks add 1/32, structured removal shrinks the file
    disk = g["disk"]
    assert disk["dense"] < disk["90% unstructured + masks"] < 1.05 * disk["dense"]
    assert disk["half heads + half neurons"] < 0.7 * disk["dense"]
    assert disk["90% unstructured, CSR"] < 0.5 * disk["dense"]
    assert g["csr_max_diff"] < 1e-4 * np.abs(g["dense_logits"]).max()
    assert set(g["sparse_speedup"]) == {1, 512} and all(np.isfinite(v).all() for v in g["sparse_speedup"].values())
    assert len(g["speedups"]) == 3  # measured and printed; timings are not asserted in tests
