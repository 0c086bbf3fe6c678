"""Chapter 9 (compression, put together) runs end to end in fast mode; its
frontier is the one the definition gives, and the formulas it states hold."""
import math
from itertools import product

import numpy as np

from minigpt.compose import pareto_front
from minigpt.quant.weights import is_quantizable

FIGURES = ("09_compression_bytes", "09_compression_speed")


def brute_force_front(xs, ys):
    """Indices no other point dominates (x_j <= x_i and y_j <= y_i, one strictly): the definition."""
    n = len(xs)
    return sorted(i for i in range(n)
                  if not any(xs[j] <= xs[i] and ys[j] <= ys[i] and (xs[j] < xs[i] or ys[j] < ys[i])
                             for j in range(n)))


def test_pareto_front_is_the_definition():
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 30):
        for _ in range(50):  # small integers: ties in x, in y and whole duplicates
            xs, ys = rng.integers(0, 6, n).tolist(), rng.integers(0, 6, n).tolist()
            assert sorted(pareto_front(xs, ys)) == brute_force_front(xs, ys), (xs, ys)
    for xs, ys in product([[1, 1, 2]], [[3, 3, 1], [3, 2, 2], [1, 1, 1]]):
        assert sorted(pareto_front(xs, ys)) == brute_force_front(xs, ys)


def test_chapter_09_compression(run_chapter):
    g, out = run_chapter("09_compression", FIGURES)
    rows, names = g["rows"], g["NAMES"]

    # The chain composes and says how it was made; the impossible orders are refused in one line.
    assert len(g["lineage"](g["chain"].meta)) == 5
    assert g["refused"] and all(code == 2 for code, _ in g["refused"].values())
    assert "made by: train" in out

    # Every artefact was measured, the same way.
    assert set(rows) == {"teacher", *g["ART"]} and len(rows) >= 30
    for n, r in rows.items():
        assert math.isfinite(r["loss"]) and r["tok/s"] > 0 and r["bytes"] > 0
        assert r["bpc"] == r["loss"] / math.log(2)  # bits per character = nats / ln 2

    # The frontiers are the definition's, on the chapter's own numbers.
    for front, key, sign in ((g["front_b"], "bytes", 1), (g["front_s"], "tok/s", -1)):
        xs = [sign * rows[n][key] for n in names]
        ys = [rows[n]["loss"] for n in names]
        assert sorted(front) == sorted(names[i] for i in brute_force_front(xs, ys))
    assert all(g["dominated_by"](n) is None for n in g["front_b"])

    # The formulas it states: CSR bytes, parameters stored, int4 four times smaller than float32 in the blocks.
    assert all(m == f for m, f, _ in g["csr_rows"].values())
    m90 = g["models"]["m90-csr"].params
    assert rows["m90-csr"]["params"] < rows["teacher"]["params"] / 2
    nnz = sum(a.size for k, a in m90.items() if k.endswith(".csr_values"))
    dense = sum(a.size for k, a in g["models"]["teacher"].params.items() if is_quantizable(k))  # block linears
    assert rows["m90-csr"]["params"] == rows["teacher"]["params"] - dense + nnz
    assert rows["r4"]["params"] == rows["teacher"]["params"] and rows["r4"]["bytes"] < rows["r8"]["bytes"]

    # Every frontier point comes with the commands that make it; the exercises' checks hold.
    for n in g["front_b"]:
        lines = g["commands"](n)
        assert (n == "teacher") == (not lines)
        assert all(line.startswith("minigpt ") for line in lines) and (not lines or lines[-1].endswith(f"--out {n}.npz"))
    assert g["check_smallest_within"](g["smallest_within"])
    assert g["best"] in g["front_b"] and rows[g["best"]]["loss"] <= rows["teacher"]["loss"] + 0.1
    assert len(g["samples"]) == 3 and all(t.startswith(g["PROMPT"]) for t in g["samples"].values())
    assert "timed on" in out  # speed numbers name the CPU

    # Exercise 3: the worked masked GPTQ and the library's mask pass the check on all eight block linears
    # (which plain GPTQ fails), and the whole model quantized with keep_zeros keeps every pruned zero.
    assert len(g["mine"]) == len(g["library"]) == 8 and all(r <= 1 for r in g["mine"].values())
    assert "plain GPTQ fails the check" in out and g["kept_kz"][True] == 1.0
    # Exercise 4: quantize-then-prune refused in one line; both fine-tuning orders measured.
    assert "pruning needs float weights" in g["check_quantize_then_prune_refused"]()
    assert set(g["order_loss"]) == {"n50ft-r4", "n50-r4", "n50-r4-qat"}
    assert all(math.isfinite(v) for v in g["order_loss"].values())
