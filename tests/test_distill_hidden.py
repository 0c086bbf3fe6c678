"""Hidden-state matching losses (minigpt.distill.hidden): forward against the
formula, backward against centered finite differences in float64
(relative error < 1e-6; see tests/test_layers.py for why)."""
import numpy as np
import pytest

from minigpt.distill.errors import DistillError
from minigpt.distill.hidden import (cosine_backward, cosine_forward, init_projection, projected_mse_backward,
                                    projected_mse_forward)
from minigpt.gradcheck import numerical_gradient, relative_error


def test_cosine_forward_and_backward():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
    loss, cache = cosine_forward(a, b)
    want = np.mean([1 - u @ v / np.linalg.norm(u) / np.linalg.norm(v)
                    for u, v in zip(a.reshape(-1, 5), b.reshape(-1, 5))])
    assert loss == pytest.approx(want, rel=1e-12)
    g = cosine_backward(1.0, cache)
    assert relative_error(g, numerical_gradient(lambda: cosine_forward(a, b)[0], a)) < 1e-6
    assert cosine_forward(3.0 * b, b)[0] == pytest.approx(0.0, abs=1e-12)  # scale does not matter
    with pytest.raises(DistillError, match="projection"):
        cosine_forward(a[..., :4], b)


def test_projected_mse_forward_and_backward():
    rng = np.random.default_rng(1)
    a, b, W = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 6)), rng.normal(size=(4, 6))
    loss, cache = projected_mse_forward(a, b, W)
    assert loss == pytest.approx(np.mean((a @ W - b) ** 2), rel=1e-12)
    da, dW = projected_mse_backward(1.0, cache)
    f = lambda: projected_mse_forward(a, b, W)[0]  # noqa: E731
    assert relative_error(da, numerical_gradient(f, a)) < 1e-6
    assert relative_error(dW, numerical_gradient(f, W)) < 1e-6
    with pytest.raises(DistillError, match="projection W"):
        projected_mse_forward(a, b, W[:3])


def test_projection_starts_near_a_width_slice():
    W = init_projection(4, 6, seed=0)
    assert W.shape == (4, 6) and np.abs(W - np.eye(4, 6)).max() < 0.1
