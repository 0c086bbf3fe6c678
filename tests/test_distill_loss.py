"""The distillation loss (minigpt.distill.loss) against its formula and
finite differences.

Tolerances. Forward: float64 against a naive per-position loop of the
docstring formula, rtol 1e-12 (the same few dozen flops in another order).
Gradient: centered differences in float64, relative error < 1e-6 (h = 1e-5:
truncation ~h^2 |f'''| ~ 1e-10, rounding ~eps |f| / h ~ 1e-11; a wrong term
or a missing 1/T gives errors of 1e-2 or more).
"""
import math

import numpy as np
import pytest

from minigpt.distill.errors import DistillError
from minigpt.distill.loss import distill_backward, distill_forward, soft_targets
from minigpt.gradcheck import numerical_gradient, relative_error
from minigpt.layers.cross_entropy import cross_entropy_forward

FD_TOL = 1e-6
RTOL = 1e-12


def naive(s, t, y, T, alpha, reverse=False):
    """The docstring formula, one position at a time, with math.exp/log."""
    s, t = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
    y = None if y is None else y.reshape(-1)
    total = 0.0
    for n in range(s.shape[0]):
        def logprobs(z, tau):  # log softmax(z / tau) = z_j / tau - m - log sum_k exp(z_k / tau - m)
            m = max(z / tau)
            lse = m + math.log(sum(math.exp(v / tau - m) for v in z))
            return [v / tau - lse for v in z]
        lp, lq = logprobs(t[n], T), logprobs(s[n], T)
        if reverse:
            kl = sum(math.exp(b) * (b - a) for a, b in zip(lp, lq))
        else:
            kl = sum(math.exp(a) * (a - b) for a, b in zip(lp, lq))
        ce = -logprobs(s[n], 1.0)[y[n]] if alpha < 1 else 0.0
        total += alpha * T * T * kl + (1 - alpha) * ce
    return total / s.shape[0]


def data(seed=0, B=2, T=3, V=7, scale=2.0):
    rng = np.random.default_rng(seed)
    s = rng.normal(0, scale, (B, T, V))
    t = rng.normal(0, scale, (B, T, V))
    y = rng.integers(0, V, (B, T))
    return s, t, y


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (0.5, 0.9), (2.0, 0.0), (4.0, 1.0), (20.0, 0.3)])
def test_forward_matches_formula(T, alpha, reverse):
    s, t, y = data()
    loss, _ = distill_forward(s, t, y, T, alpha, reverse)
    assert loss == pytest.approx(naive(s, t, y, T, alpha, reverse), rel=RTOL)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (0.5, 0.9), (2.0, 0.0), (4.0, 1.0), (20.0, 0.3), (7.0, 0.7)])
def test_backward_matches_finite_differences(T, alpha, reverse):
    s, t, y = data(seed=1)
    _, cache = distill_forward(s, t, y, T, alpha, reverse)
    g = distill_backward(1.0, cache)
    num = numerical_gradient(lambda: distill_forward(s, t, y, T, alpha, reverse)[0], s)
    assert relative_error(g, num) < FD_TOL


def test_backward_is_the_issue_formula_and_scales_with_dloss():
    s, t, y = data(seed=2)
    T, alpha, N = 3.0, 0.6, y.size
    _, cache = distill_forward(s, t, y, T, alpha)
    p, q = soft_targets(t, T), soft_targets(s, T)
    onehot = np.eye(s.shape[-1])[y]
    want = (alpha * T * (q - p) + (1 - alpha) * (soft_targets(s, 1.0) - onehot)) / N
    np.testing.assert_allclose(distill_backward(1.0, cache), want, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(distill_backward(2.5, cache), 2.5 * want, rtol=1e-12, atol=1e-15)


def test_alpha_zero_is_plain_cross_entropy():
    s, t, y = data(seed=3)
    loss, _ = distill_forward(s, t, y, 5.0, 0.0)
    ce, _ = cross_entropy_forward(s, y)
    assert loss == pytest.approx(float(ce), rel=RTOL)


@pytest.mark.parametrize("reverse", [False, True])
def test_kl_is_zero_for_logits_equal_up_to_a_shift(reverse):
    """softmax ignores a constant added to a row, so the student matches the teacher exactly."""
    s, _, y = data(seed=4)
    shift = np.random.default_rng(0).normal(0, 10, s.shape[:-1] + (1,))
    loss, cache = distill_forward(s, s + shift, None, 3.0, 1.0, reverse)
    assert abs(loss) < 1e-12
    assert np.abs(distill_backward(1.0, cache)).max() < 1e-15


def test_t_squared_keeps_the_soft_gradient_the_same_at_every_temperature():
    """For large T and zero-mean logits, T (q - p) -> (s - t) / V: the T^2-scaled
    soft term's gradient per position no longer depends on T. Without T^2 it
    would shrink as 1/T^2. The next term of the expansion is O(1/T), so the
    error falls about tenfold for each tenfold T (we ask for fivefold)."""
    s, t, _ = data(seed=5, B=1, T=4, V=9, scale=1.0)
    s -= s.mean(-1, keepdims=True)
    t -= t.mean(-1, keepdims=True)
    N, V = 4, 9
    limit = (s - t) / (V * N)
    errs = []
    for T in (10.0, 100.0, 1000.0):
        _, cache = distill_forward(s, t, None, T, 1.0)
        g = distill_backward(1.0, cache)
        errs.append(np.abs(g - limit).max() / np.abs(limit).max())
        unscaled = g / (T * T)  # the gradient of KL without the T^2
        assert np.abs(unscaled).max() < 2 * np.abs(limit).max() / T ** 2
    assert errs[0] < 0.1 and errs[1] < errs[0] / 5 and errs[2] < errs[1] / 5, errs


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T", [0.5, 1.0, 5.0, 20.0])
def test_stable_for_logits_in_the_hundreds(T, reverse):
    """Logits of +-300 overflow a naive exp(z / 0.5) (e^600 > float64 max); the loss
    and gradient stay finite and agree with the formula evaluated stably."""
    rng = np.random.default_rng(6)
    s = rng.uniform(-300, 300, (3, 4, 11))
    t = rng.uniform(-300, 300, (3, 4, 11))
    y = rng.integers(0, 11, (3, 4))
    for dtype in (np.float64, np.float32):
        loss, cache = distill_forward(s.astype(dtype), t.astype(dtype), y, T, 0.5, reverse)
        g = distill_backward(1.0, cache)
        assert math.isfinite(loss) and np.isfinite(g).all() and g.dtype == dtype
    loss64, _ = distill_forward(s, t, y, T, 0.5, reverse)
    assert loss64 == pytest.approx(naive(s, t, y, T, 0.5, reverse), rel=1e-10)
    # the soft gradient per position is a difference of probabilities: |T (q - p)| <= T;
    # reverse: |q (log q - log p - KL)| grows with the log-ratio, which is finite
    if not reverse:
        assert np.abs(g).max() <= (0.5 * T + 0.5) / y.size * (1 + 1e-6)  # alpha |q - p| T + (1 - alpha) |softmax - onehot|


@pytest.mark.parametrize("T,alpha", [(0.0, 0.5), (-1.0, 0.5), (float("nan"), 0.5), (float("inf"), 0.5),
                                     (1.0, -0.1), (1.0, 1.5), (1.0, float("nan"))])
def test_bad_temperature_or_alpha_is_a_user_error(T, alpha):
    s, t, y = data()
    with pytest.raises(DistillError):
        distill_forward(s, t, y, T, alpha)


def test_vocabularies_must_match():
    s, t, y = data()
    with pytest.raises(DistillError, match="vocabulary"):
        distill_forward(s, t[..., :-1], y, 2.0, 0.5)
