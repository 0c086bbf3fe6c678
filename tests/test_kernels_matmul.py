"""The numba backend's linear op: BLAS products split over a thread pool, against the NumPy reference."""
import numba
import numpy as np
import pytest

from minigpt.gradcheck import check_op
from minigpt.kernels import matmul as K
from minigpt.layers.linear import linear_backward, linear_forward


@pytest.fixture
def split_everything(monkeypatch):
    """Split every product, however small, over 2 threads: the tests' shapes are small."""
    monkeypatch.setattr(K, "MIN_FLOPS", 1)
    monkeypatch.setattr(K, "pieces_for", lambda M, K_, N, threads=None: (2, min(3, M)) if M * K_ * N else (1, 1))


# float32: the same BLAS kernel on each piece sums the same K terms per output;
# a piece's blocking may differ, so allow a few ulps of the sums' size
TOL = {np.float32: 1e-5, np.float64: 1e-12}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 9, 16, 24), (1, 1, 16, 24), (3, 5, 7, 1), (40, 33, 17)])
def test_split_linear_matches_the_reference(shape, dtype, split_everything):
    rng = np.random.default_rng(0)
    *lead, n_in, n_out = shape if len(shape) == 4 else (shape[0], *shape)
    x = rng.standard_normal((*lead, n_in)).astype(dtype)
    w, b = rng.standard_normal((n_in, n_out)).astype(dtype), rng.standard_normal(n_out).astype(dtype)
    out, cache = K.linear_forward(x, w, b)
    ref, ref_cache = linear_forward(x, w, b)
    np.testing.assert_allclose(out, ref, rtol=TOL[dtype], atol=TOL[dtype] * np.abs(ref).max())
    dout = rng.standard_normal(out.shape).astype(dtype)
    for got, want in zip(K.linear_backward(dout, cache), linear_backward(dout, ref_cache)):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype] * np.abs(want).max())


def test_split_linear_backward_against_finite_differences(split_everything):
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((2, 5, 6)), rng.standard_normal((6, 4)), rng.standard_normal(4)]
    assert max(check_op(K.linear_forward, K.linear_backward, inputs)) < 1e-6


def test_pruned_empty_layers(split_everything):
    x = np.ones((2, 3, 4))
    for w in (np.ones((4, 0)), np.ones((0, 5))):
        xx = x[..., : w.shape[0]]
        out, cache = K.linear_forward(xx, w, np.zeros(w.shape[1]))
        assert out.shape == (2, 3, w.shape[1])
        dx, dw, db = K.linear_backward(np.ones_like(out), cache)
        assert dx.shape == xx.shape and dw.shape == w.shape and db.shape == (w.shape[1],)


def test_row_and_column_splits_fill_every_entry(monkeypatch):
    monkeypatch.setattr(K, "MIN_FLOPS", 1)
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one core: nothing to split")
    rng = np.random.default_rng(2)
    for M in (1, 3, 64):  # one decoding row and a few: columns split; many rows: rows split
        a, b = rng.standard_normal((M, 20)), rng.standard_normal((20, 31))
        assert K.pieces_for(M, 20, 31)[1] >= 2
        np.testing.assert_allclose(K.matmul(a, b), a @ b, rtol=1e-12)
        np.testing.assert_allclose(K.matmul(b.T, a.T), b.T @ a.T, rtol=1e-12)  # transposed views


@pytest.mark.parametrize("M", [1, 3, 64, 0])  # columns split, columns, rows (partial row sums), no rows
@pytest.mark.parametrize("split", [True, False])
def test_bias_and_row_sums_in_the_pieces(M, split, monkeypatch):
    # bias added by each piece to its own block, a's row sum from per-piece
    # partial sums: float64, so only the summation order differs (1e-12)
    if split:
        monkeypatch.setattr(K, "MIN_FLOPS", 1)
        monkeypatch.setattr(K, "pieces_for", lambda M_, K_, N, threads=None: (2, 3) if M_ * K_ * N else (1, 1))
    rng = np.random.default_rng(3)
    a, b, bias = rng.standard_normal((M, 20)), rng.standard_normal((20, 31)), rng.standard_normal(31)
    np.testing.assert_allclose(K.matmul(a, b, bias=bias), a @ b + bias, rtol=1e-12, atol=1e-12)
    out, sums = K.matmul(a, b, row_sum=True)
    np.testing.assert_allclose(out, a @ b, rtol=1e-12, atol=1e-12)
    assert sums.shape == (20,)
    np.testing.assert_allclose(sums, a.sum(axis=0), rtol=1e-12, atol=1e-12)


def test_small_products_are_not_split():
    assert K.pieces_for(1, 64, 64, threads=2) == (1, 1)  # a decoding step's small product
    assert K.pieces_for(2048, 128, 512, threads=2) == (2, 2 * K.PIECES_PER_THREAD)  # the base preset's MLP
    assert K.pieces_for(2048, 128, 512, threads=1) == (1, 1)
    assert K.pieces_for(128, 128, 384, threads=2) == (2, min(3, 2 * K.PIECES_PER_THREAD))  # none under MIN_FLOPS


def test_pieces_are_all_done_whoever_takes_them_and_errors_reach_the_caller():
    done = []
    pieces = K._Pieces(list(range(7)), done.append)
    pieces.work()  # the caller alone (a worker that never got a core)
    pieces.wait()
    assert sorted(done) == list(range(7))

    def boom(job):
        raise ValueError(f"piece {job}")

    failing = K._Pieces([0, 1], boom)
    failing.work()
    with pytest.raises(ValueError, match="piece 0"):
        failing.wait()
