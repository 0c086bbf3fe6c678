"""Sensitivity scan (issue 16 item 1): the scan prunes one matrix at a time,
the allocation reads each curve at a threshold, and the bisection meets a
loss budget measured on the whole model.

A synthetic loss makes the checks exact: L(params) = sum over matrices of
c_w * (sum of the squared weights removed from w), so each matrix's rise
is known in closed form and rises add up across matrices."""
import numpy as np
import pytest

from minigpt import GPT, GPTConfig
from minigpt.prune import PruneError, magnitude_masks, prunable_names
from minigpt.prune.masks import apply
from minigpt.prune.sensitivity import allocate, masks_for, sensitivity_masks, sensitivity_scan, total_sparsity

CFG = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)


def setup():
    params = GPT(CFG, seed=0).params
    names = prunable_names(params)
    weight = {n: 10.0 ** (i - 4) for i, n in enumerate(names)}  # matrices from insensitive to sensitive

    def loss(p):
        return float(sum(weight[n] * (np.sum(params[n] ** 2) - np.sum(p[n] ** 2)) for n in names))

    return params, names, loss


def test_scan_prunes_one_matrix_at_a_time():
    params, names, loss = setup()
    grid = (0.25, 0.5, 0.75)
    scan = sensitivity_scan(params, loss, grid)
    assert list(scan) == names
    for n in names[:3]:
        for s, got in zip(grid, scan[n]):
            only = apply(params, magnitude_masks(params, s, [n]))
            assert got == loss(only)
            assert all(np.array_equal(only[m], params[m]) for m in names if m != n)  # the others stay dense
        assert (np.diff(scan[n]) > 0).all()


def test_allocate_reads_each_curve_at_the_threshold():
    grid = [0.2, 0.4, 0.6]
    scan = {"a": np.array([1.0, 1.1, 1.5]),   # rises 0, 0.1, 0.5 over dense loss 1.0
            "b": np.array([1.2, 1.05, 1.3]),  # a dip at 0.4: the envelope is 0.2, 0.2, 0.3
            "c": np.array([1.0, 1.0, 1.0])}   # never rises: the whole grid
    got = allocate(scan, grid, 1.0, 0.1)
    assert got["a"] == pytest.approx(0.4) and got["c"] == 0.6
    assert got["b"] == pytest.approx(0.2 * 0.1 / 0.2)  # between 0 (rise 0) and 0.2 (rise 0.2): not at the dip
    assert allocate(scan, grid, 1.0, 0.3)["a"] == pytest.approx(0.4 + 0.2 * 0.2 / 0.4)
    assert allocate(scan, grid, 1.0, 0.0)["a"] == 0.2  # rise 0 up to 0.2 exactly


def test_budget_is_met_on_the_whole_model_and_grows_with_it():
    params, names, loss = setup()
    grid = tuple(np.linspace(0.1, 0.9, 9))
    scan = sensitivity_scan(params, loss, grid)
    results = [sensitivity_masks(params, loss, d, scan, grid) for d in (1e-4, 1e-3, 1e-2)]
    totals = []
    for budget, (masks, per, rise) in zip((1e-4, 1e-3, 1e-2), results):
        assert rise == pytest.approx(loss(apply(params, masks)) - loss(params)) and rise <= budget
        assert set(masks) == set(names)
        for n, m in masks.items():  # each matrix pruned to its own sparsity, exactly
            assert int((~m).sum()) == round(min(per[n], 1) * m.size)
        totals.append(total_sparsity(params, per))
    assert totals[0] <= totals[1] <= totals[2] and totals[2] > 0
    # sensitive matrices (large c_w) keep more than insensitive ones
    per = results[1][1]
    assert per[names[0]] >= per[names[-1]]
    with pytest.raises(PruneError):
        sensitivity_masks(params, loss, 0.0, scan, grid)


def test_masks_for_and_total_sparsity():
    params, names, _ = setup()
    per = {names[0]: 0.5, names[1]: 0.25}
    masks = masks_for(params, per)
    sizes = {n: params[n].size for n in per}
    assert total_sparsity(params, per) == (round(0.5 * sizes[names[0]]) + round(0.25 * sizes[names[1]])) / sum(
        sizes.values())
    assert int((~masks[names[1]]).sum()) == round(0.25 * sizes[names[1]])
