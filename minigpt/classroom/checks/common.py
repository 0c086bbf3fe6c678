"""What every check uses: comparisons that say what was compared and by how
much it missed, centered differences, and hints for recognisable mistakes.

A hint is a known-wrong variant of the right answer (the reference with one
term dropped, a matrix transposed, T^2 missing, ...): when the student's
result fails the comparison but matches a variant, the message names the
mistake. Nothing here is a stored answer: every expected value is computed
from the formula on inputs drawn fresh from the part's seed.
"""
from __future__ import annotations

import numpy as np

from ...gradcheck import numerical_gradient, relative_error


class CheckFailed(AssertionError):
    """A sub-check's comparison failed; the message says what and by how much."""


def fmt(x: float) -> str:
    return f"{x:.2g}"


def as_array(what, got):
    try:
        return np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        raise CheckFailed(f"{what}: expected an array of numbers, got {type(got).__name__}") from None


def matching_hint(got, hints, tol) -> str:
    """The description of the first variant the result matches, or ''."""
    for text, variant in hints:
        variant = np.asarray(variant, dtype=np.float64)
        if variant.shape == got.shape and np.all(np.isfinite(variant)) \
                and relative_error(got, variant) < max(tol, 1e-9) * 10:
            return text
    return ""


def compare(what, got, want, tol, hints=(), shape_hint=""):
    """Relative error ||got - want|| / (||got|| + ||want||) below tol, or CheckFailed.
    Returns the error (for the success line)."""
    want = np.asarray(want, dtype=np.float64)
    got = as_array(what, got)
    if got.shape != want.shape:
        msg = f"{what}: shape {got.shape}, expected {want.shape}"
        raise CheckFailed(msg + (f"; {shape_hint}" if shape_hint else ""))
    if not np.all(np.isfinite(got)):
        bad = int(np.size(got) - np.count_nonzero(np.isfinite(got)))
        hint = matching_hint(np.nan_to_num(got), hints, tol)
        raise CheckFailed(f"{what}: {bad} of {got.size} entries are nan or inf" + (f"; {hint}" if hint else ""))
    err = relative_error(got, want)
    if err > tol:
        hint = matching_hint(got, hints, tol)
        raise CheckFailed(f"{what}: relative error {fmt(err)}, tolerance {tol:.0e}" + (f"; {hint}" if hint else ""))
    return err


def compare_exact(what, got, want, hints=()):
    """Equal entries (masks, integers), or CheckFailed saying how many differ."""
    want = np.asarray(want)
    got = np.asarray(got)
    if got.shape != want.shape:
        raise CheckFailed(f"{what}: shape {got.shape}, expected {want.shape}")
    diff = int(np.count_nonzero(got.astype(np.float64) != want.astype(np.float64)))
    if diff:
        hint = ""
        for text, variant in hints:
            variant = np.asarray(variant)
            if variant.shape == got.shape and np.array_equal(got.astype(np.float64), variant.astype(np.float64)):
                hint = text
                break
        raise CheckFailed(f"{what}: {diff} of {got.size} entries differ from the formula's"
                          + (f"; {hint}" if hint else ""))


def numeric_grad(f, x):
    """Centered differences of scalar f() w.r.t. x (float64, h = 1e-5: the
    truncation error h^2 and the rounding error 1e-16 / h are both ~1e-10)."""
    return numerical_gradient(f, x, h=1e-5)


def tensor_shape(rng, dims, low=1, high=5):
    return tuple(int(rng.integers(low, high)) for _ in range(dims))


# float64 tolerances (why): a forward that follows the formula in float64
# agrees to ~1e-15 relative; reordered sums make 1e-12 at most, so FORWARD_TOL
# leaves room and still fails any wrong term. A backward against centered
# differences with h = 1e-5 agrees to ~1e-9 on these well-conditioned inputs:
# GRAD_TOL = 1e-6 is the project's gradient-check tolerance.
FORWARD_TOL = 1e-8
GRAD_TOL = 1e-6
