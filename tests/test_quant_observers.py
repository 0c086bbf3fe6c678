"""Calibration observers against their definitions, and calibration through the model's activations."""
import numpy as np
import pytest

from minigpt import GPT, GPTConfig
from minigpt.kernels.quantizer import quantize_tensor, scale_zero_point
from minigpt.quant.observers import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    calibrate,
    linear_inputs,
)


def batches(n=4, shape=(3, 5, 8), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1 + i, shape).astype(np.float32) for i in range(n)]


@pytest.mark.parametrize("axis", [None, -1])
def test_min_max_is_the_extremes_of_everything_seen(axis):
    xs = batches()
    obs = MinMaxObserver(axis=axis)
    for x in xs:
        obs.update(x)
    allx = np.concatenate([x.reshape(-1, 8) for x in xs])
    lo, hi = obs.range()
    if axis is None:
        assert lo == allx.min() and hi == allx.max()
    else:
        np.testing.assert_array_equal(lo, allx.min(axis=0))
        np.testing.assert_array_equal(hi, allx.max(axis=0))
    s, z = obs.scale_zero_point()
    s2, z2 = scale_zero_point(lo, hi, 8, False)
    np.testing.assert_array_equal(s, s2)
    np.testing.assert_array_equal(z, z2)


def test_moving_average_follows_its_recurrence():
    xs = batches(5)
    obs = MovingAverageMinMaxObserver(averaging_constant=0.25)
    lo, hi = float(xs[0].min()), float(xs[0].max())  # the first batch sets the range
    for x in xs[1:]:
        lo += 0.25 * (float(x.min()) - lo)
        hi += 0.25 * (float(x.max()) - hi)
    for x in xs:
        obs.update(x)
    assert np.isclose(obs.range()[0], lo, rtol=1e-6) and np.isclose(obs.range()[1], hi, rtol=1e-6)


def test_percentile_is_numpys_and_100_is_min_max():
    xs = batches()
    allx = np.concatenate([x.ravel() for x in xs])
    p = PercentileObserver(percentile=99.0)
    for x in xs:
        p.update(x)
    lo, hi = p.range()
    assert np.isclose(lo, np.percentile(allx, 1.0)) and np.isclose(hi, np.percentile(allx, 99.0))
    full = PercentileObserver(percentile=100)
    for x in xs:
        full.update(x)
    assert full.range() == (allx.min(), allx.max())
    with pytest.raises(ValueError, match="percentile must lie in"):
        PercentileObserver(percentile=40)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("axis", [None, -1])
def test_mse_clipping_is_the_best_candidate_and_never_worse_than_min_max(bits, axis):
    rng = np.random.default_rng(bits)
    x = rng.standard_normal((400, 6))
    x[7, :] = 12.0  # one outlier token: min-max would waste most of the grid on it
    obs = MSEObserver(bits=bits, symmetric=True, axis=axis, grid=50).update(x)
    lo, hi = obs.range()
    ax = None if axis is None else 1
    err = ((obs.quantize(x).dequantize() - x) ** 2).mean(axis=0 if ax else None)
    minmax = ((quantize_tensor(x, bits, True, axis=ax).dequantize() - x) ** 2).mean(axis=0 if ax else None)
    assert np.all(err <= minmax * (1 + 1e-12))
    # by brute force over the same candidates, the chosen one has the least error
    np.testing.assert_allclose(err, obs.errors.min(axis=0), rtol=1e-12)
    if bits <= 4:
        assert np.all(hi < x.max(axis=0 if ax else None))  # clipped below the outlier
        assert np.all(err < 0.9 * minmax)


def test_an_observer_needs_data_first():
    with pytest.raises(ValueError, match="MinMaxObserver has seen no data yet"):
        MinMaxObserver().scale_zero_point()


def test_calibrate_feeds_each_linear_input_from_the_models_accessor():
    cfg = GPTConfig(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=16)
    model = GPT(cfg, seed=0)
    rng = np.random.default_rng(0)
    idxs = [rng.integers(0, 20, (2, 8)) for _ in range(3)]
    obs = calibrate(model, idxs, lambda: MinMaxObserver(axis=-1))
    assert list(obs) == linear_inputs(model) and len(obs) == 8
    for name in ("h.0.attn.c_attn", "h.1.mlp.c_proj"):
        acts = [model.activations(i)[name] for i in idxs]  # (B, T, K)
        np.testing.assert_array_equal(obs[name].range()[0], np.min([a.min(axis=(0, 1)) for a in acts], axis=0))
        np.testing.assert_array_equal(obs[name].range()[1], np.max([a.max(axis=(0, 1)) for a in acts], axis=0))
    assert obs["h.1.mlp.c_proj"].range()[0].shape == (64,)  # the MLP's width: the input of c_proj


def test_mse_range_group_wise_per_group():
    from minigpt.quant.observers import mse_range

    rng = np.random.default_rng(5)
    w = rng.standard_normal((64, 6))
    w[3, 2] = 9.0  # one outlier in group 0 of column 2
    lo, hi, errors = mse_range(w, 3, True, group=16, grid=40)
    assert lo.shape == hi.shape == (4, 6) and errors.shape == (40, 4, 6)
    t = quantize_tensor(w, 3, True, group=16, lo=lo, hi=hi)
    err = ((t.dequantize() - w) ** 2).reshape(4, 16, 6).mean(axis=1)
    np.testing.assert_allclose(err, errors.min(axis=0), rtol=1e-12)
    minmax = ((quantize_tensor(w, 3, True, group=16).dequantize() - w) ** 2).reshape(4, 16, 6).mean(axis=1)
    assert np.all(err <= minmax * (1 + 1e-12)) and err.sum() < 0.9 * minmax.sum()
