"""The distillation loss against PyTorch: T^2 kl_div (log-target form) plus
cross_entropy, and its gradient by autograd, in float64.

Forward KL: torch's kl_div(input, target, log_target=True) is
sum target.exp() * (target - input), i.e. KL(p || q) with input = log q
(student) and target = log p (teacher); reduction "batchmean" divides by the
first dimension, so the logits are flattened to (N, V) first. Reverse KL swaps
input and target. Both sides compute in float64 with different formulas and
orders, so they agree to rounding: rtol 1e-10. Needs the crosscheck extra;
skipped otherwise (a failure under MINIGPT_REQUIRE_CROSSCHECK=1).
"""
import numpy as np
import pytest

from crosscheck_support import need

torch = need("torch")
F = torch.nn.functional

from minigpt.distill.loss import distill_backward, distill_forward  # noqa: E402


def torch_loss(s, t, y, T, alpha, reverse):
    V = s.shape[-1]
    zs = torch.tensor(s.reshape(-1, V), dtype=torch.float64, requires_grad=True)
    zt = torch.tensor(t.reshape(-1, V), dtype=torch.float64)
    log_q, log_p = F.log_softmax(zs / T, -1), F.log_softmax(zt / T, -1)
    if reverse:
        kl = F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)  # KL(q || p)
    else:
        kl = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)  # KL(p || q)
    loss = alpha * T * T * kl + (1 - alpha) * F.cross_entropy(zs, torch.tensor(y.reshape(-1)))
    loss.backward()
    return loss.item(), zs.grad.numpy().reshape(s.shape)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T,alpha,scale", [(1.0, 0.5, 2.0), (0.5, 0.9, 3.0), (4.0, 0.3, 1.0), (20.0, 0.7, 100.0),
                                           (2.0, 1.0, 5.0), (3.0, 0.0, 5.0)])
def test_matches_torch_kl_div_and_cross_entropy(T, alpha, scale, reverse):
    rng = np.random.default_rng(0)
    s = rng.normal(0, scale, (3, 5, 13))
    t = rng.normal(0, scale, (3, 5, 13))
    y = rng.integers(0, 13, (3, 5))
    loss, cache = distill_forward(s, t, y, T, alpha, reverse)
    ref_loss, ref_grad = torch_loss(s, t, y, T, alpha, reverse)
    assert loss == pytest.approx(ref_loss, rel=1e-10)
    np.testing.assert_allclose(distill_backward(1.0, cache), ref_grad, rtol=1e-10, atol=1e-14)
