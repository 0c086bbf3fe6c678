"""Sparse weights: the CSR format, its product (NumPy reference and numba kernel),
the sparse linear pair, and a model stored sparse (forward, save/load, checks)."""
import dataclasses
import re

import numpy as np
import pytest

from minigpt.config import GPTConfig
from minigpt.errors import CheckpointError, ConfigError
from minigpt.gradcheck import check_op
from minigpt.kernels import threads
from minigpt.kernels.sparse import GATHER_ROWS, TILE_M, sparse_matmul
from minigpt.layers.linear import linear_backward, linear_forward
from minigpt.layers.sparse_linear import (
    csr_from_dense,
    csr_problem,
    csr_to_dense,
    sparse_linear_backward,
    sparse_linear_forward,
    sparse_matmul_ref,
)
from minigpt.model import GPT, check_params
from minigpt.ops import op_table
from minigpt.prune.sparse import csr_nbytes, dense_model, sparse_candidates, sparse_model, to_dense, to_sparse

# (M, K, N): a single entry; odd sizes; one decoding row; fewer rows than
# GATHER_ROWS (the row-by-row loop); a full tile plus a short rest (gather)
# and plus a long rest (padded tile); N not a multiple of the 16-output runs.
SHAPES = [(1, 1, 1), (3, 5, 7), (1, 70, 33), (GATHER_ROWS - 1, 9, 40),
          (TILE_M + 3, 17, 19), (TILE_M + GATHER_ROWS + 1, 33, 5), (2 * TILE_M, 6, 50)]
SPARSITIES = [0.0, 0.5, 0.9, 1.0]


def _sparse_weight(rng, K, N, sparsity, dtype):
    """A (K, N) weight with exactly round(sparsity K N) zeros, and one output (column) left empty."""
    w = rng.standard_normal((K, N)).astype(dtype)
    w.reshape(-1)[rng.permutation(K * N)[: round(sparsity * K * N)]] = 0
    if N > 2:
        w[:, N // 2] = 0  # an empty output: indptr repeats
    return w


def _close(got, x, w):
    """got equals x @ w up to summation order: |error| <= K eps (|x| @ |w|) per entry (the
    standard bound for a sum of K products rounded in any order), both dtypes."""
    K = x.shape[1]
    bound = K * np.finfo(x.dtype).eps * (np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64))
    exact = x.astype(np.float64) @ w.astype(np.float64)
    assert np.all(np.abs(got - exact) <= bound + np.finfo(x.dtype).tiny), np.max(np.abs(got - exact) - bound)


# ------------------------------------------------------------------ format
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (70, 33), (3, 0), (0, 4)])
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_csr_round_trip_is_exact(shape, sparsity, dtype):
    rng = np.random.default_rng(0)
    w = _sparse_weight(rng, *shape, sparsity, dtype)
    s = csr_from_dense(w)
    assert s["values"].size == np.count_nonzero(w) and s["values"].dtype == dtype
    assert s["indices"].dtype == np.uint16 and s["indptr"].dtype == np.int64
    assert csr_problem(s, *shape) is None
    back = csr_to_dense(s)
    assert back.dtype == dtype and back.shape == w.shape
    assert np.array_equal(back.view(np.uint8), w.view(np.uint8))  # bit for bit (no -0.0 here)


def test_csr_layout_by_output_column():
    w = np.array([[0.0, 2.0, 0.0],
                  [1.0, 3.0, 0.0],
                  [0.0, 0.0, 0.0],
                  [4.0, 0.0, 0.0]], dtype=np.float32)  # (K=4, N=3); output 2 is empty
    s = csr_from_dense(w)
    assert s["values"].tolist() == [1.0, 4.0, 2.0, 3.0]
    assert s["indices"].tolist() == [1, 3, 0, 1]
    assert s["indptr"].tolist() == [0, 2, 4, 4]
    assert s["shape"].tolist() == [4, 3]


def test_negative_zero_is_not_stored_and_comes_back_as_zero():
    w = np.array([[-0.0, 1.5], [2.0, -0.0]], dtype=np.float32)  # what w * mask gives for negative w
    s = csr_from_dense(w)
    assert s["values"].tolist() == [2.0, 1.5]
    assert np.array_equal(csr_to_dense(s), w)  # equal as numbers (-0.0 == 0.0)


def test_wide_inputs_get_int32_indices():
    s = csr_from_dense(np.zeros((70000, 1), dtype=np.float32))
    assert s["indices"].dtype == np.int32 and csr_problem(s, 70000, 1) is None


@pytest.mark.parametrize("break_it, message", [
    (lambda s: s.update(indices=s["indices"].astype(np.int64)), "csr_indices is int64"),
    (lambda s: s["indices"].__setitem__(0, 7), "must lie in [0, 7)"),
    (lambda s: s["indptr"].__setitem__(1, 9), "csr_indptr must rise"),
    (lambda s: s["indptr"].__setitem__(-1, 3), "csr_indptr must rise"),
    (lambda s: s["indices"].__setitem__(1, s["indices"][0]), "strictly increase"),
    (lambda s: s.update(shape=np.array([7, 6], dtype=np.int64)), "csr_shape says (7, 6)"),
    (lambda s: s.update(values=s["values"][None]), "csr_values must be 1-D"),
])
def test_csr_problems_are_found(break_it, message):
    w = np.zeros((7, 5), dtype=np.float32)
    w[[1, 4, 6], 0] = 1.0  # output 0 holds inputs 1, 4, 6
    w[2, 3] = 2.0
    s = csr_from_dense(w)
    break_it(s)
    assert message in csr_problem(s, 7, 5)


# ---------------------------------------------------------------- products
@pytest.fixture(params=["one thread", "threads"])
def thread_path(request, monkeypatch):
    """Small products run on one thread (minigpt.kernels.threads); also force the parallel path."""
    if request.param == "threads":
        monkeypatch.setattr(threads, "SMALL_WORK", 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_kernel_equals_dense_product_and_reference(shape, sparsity, dtype, thread_path):
    M, K, N = shape
    rng = np.random.default_rng(M * 1000 + K)
    w = _sparse_weight(rng, K, N, sparsity, dtype)
    x = rng.standard_normal((M, K)).astype(dtype)
    s = csr_from_dense(w)
    ref = sparse_matmul_ref(x, s["values"], s["indices"], s["indptr"])
    got = sparse_matmul(x, s["values"], s["indices"], s["indptr"])
    assert got.shape == ref.shape == (M, N) and got.dtype == ref.dtype == dtype
    _close(ref, x, w)  # the reference is the dense product
    _close(got, x, w)  # the kernel sums in another order: within the same bound
    if sparsity == 1.0:
        assert not got.any()
    if N > 2:
        assert not got[:, N // 2].any()  # the empty output


@pytest.mark.parametrize("shape", [(0, 5, 3), (3, 0, 4), (TILE_M + 6, 0, 4), (2, 4, 0), (TILE_M + 36, 4, 0)])
def test_kernel_on_empty_sizes(shape):
    # no rows, no inputs (every output is its bias alone: 0 here), no outputs; both paths
    M, K, N = shape
    s = csr_from_dense(np.ones((K, N), dtype=np.float32))
    x = np.ones((M, K), dtype=np.float32)
    got = sparse_matmul(x, s["values"], s["indices"], s["indptr"])
    assert got.shape == (M, N) and np.array_equal(got, x @ np.ones((K, N), dtype=np.float32))


def test_kernel_takes_any_layout_of_x():
    rng = np.random.default_rng(1)
    w = _sparse_weight(rng, 12, 9, 0.5, np.float32)
    s = csr_from_dense(w)
    x = rng.standard_normal((12, 40)).astype(np.float32).T  # (40, 12), not contiguous
    _close(sparse_matmul(x, s["values"], s["indices"], s["indptr"]), x, w)


def test_warm_up_compiles_both_paths_quietly_once_warm(capsys):
    from minigpt.kernels.sparse import warm_up

    warm_up("float32", verbose=False)  # compiles or loads
    assert warm_up("float32") >= 0.0
    assert capsys.readouterr().err == ""  # warm: nothing to announce


def test_op_table_has_the_kernel_and_the_reference():
    assert op_table("numba")["sparse_matmul"] == (sparse_matmul, None)
    assert op_table("numpy")["sparse_matmul"] == (sparse_matmul_ref, None)


# ------------------------------------------------------------ linear layer
@pytest.mark.parametrize("x_shape", [(2, 3, 8), (5, 8), (1, 1, 8)])
def test_sparse_linear_equals_dense_linear_and_gradcheck(x_shape, fd_errors):
    rng = np.random.default_rng(2)
    w = _sparse_weight(rng, 8, 6, 0.6, np.float64)
    b = rng.standard_normal(6)
    x = rng.standard_normal(x_shape)
    s = csr_from_dense(w)
    out, cache = sparse_linear_forward(x, s, b, sparse_matmul)
    ref, ref_cache = linear_forward(x, w, b)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-13)  # float64, another summation order
    dout = rng.standard_normal(out.shape)
    dx, dw, db = sparse_linear_backward(dout, cache)
    rdx, _, rdb = linear_backward(dout, ref_cache)
    assert dw is None  # frozen, like an integer weight
    np.testing.assert_allclose(dx, rdx, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(db, rdb, rtol=1e-12, atol=1e-13)
    errors = check_op(lambda x, b: sparse_linear_forward(x, s, b, sparse_matmul),
                      lambda d, c: sparse_linear_backward(d, c)[::2], [x, b])
    fd_errors.record("sparse linear (x, b)", max(errors))
    assert max(errors) < 1e-6, errors


# ------------------------------------------------------------------- model
CFG = GPTConfig(vocab_size=23, block_size=16, n_layer=2, n_head=2, n_embd=16)


def _pruned_model(backend, seed=0, cfg=CFG):
    """A model whose block linears are 0%, 50%, 80% and 100% zeros, by layer and kind."""
    model = GPT(cfg, seed=seed, backend=backend)
    rng = np.random.default_rng(seed)
    for i in range(CFG.n_layer):
        for j, kind in enumerate(("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")):
            w = model.params[f"h.{i}.{kind}.weight"]
            w.reshape(-1)[rng.permutation(w.size)[: round([0.0, 0.5, 0.8, 1.0][(i + j) % 4] * w.size)]] = 0
    return model


def _idx(seed=0, T=16):
    return np.random.default_rng(seed).integers(0, CFG.vocab_size, (2, T))


def test_to_sparse_picks_by_bytes_or_by_sparsity():
    model = _pruned_model("numpy")
    by_bytes = to_sparse(model.params)
    chosen = {n[: -len(".csr_indptr")] for n in by_bytes if n.endswith(".csr_indptr")}
    assert len(sparse_candidates(model.params)) == 8  # the four linear weights of each block
    for name in sparse_candidates(model.params):
        w = model.params[name]
        assert (name in chosen) == (csr_nbytes(csr_from_dense(w)) < w.nbytes), name
        assert (name in chosen) == (name not in by_bytes)
    assert len(chosen) == 6  # the 50%, 80% and 100% sparse ones (6 of 8)
    at_75 = to_sparse(model.params, 0.75)  # the 80% (rounded) and 100% ones
    assert sum(n.endswith(".csr_indptr") for n in at_75) == 4
    only = to_sparse(model.params, 0.0, names=["h.1.mlp.c_fc.weight"])
    assert [n for n in only if "csr" in n] == [f"h.1.mlp.c_fc.weight.csr_{k}" for k in
                                               ("values", "indices", "indptr", "shape")]
    assert list(to_dense(only)) == list(model.params)  # the dense weight back in its place
    assert only["wte.weight"] is model.params["wte.weight"]  # the rest is shared, not copied


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_to_sparse_refuses_a_bad_threshold_and_a_non_linear(bad):
    model = GPT(CFG, seed=0)
    with pytest.raises(ConfigError, match="min_sparsity"):
        to_sparse(model.params, bad)
    with pytest.raises(ConfigError, match="wte.weight"):
        to_sparse(model.params, names=["wte.weight"])


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_sparse_model_computes_the_dense_model(backend):
    model = _pruned_model(backend)
    sparse = sparse_model(model, 0.0)  # every block linear sparse, the full one too
    assert not sparse_candidates(sparse.params)
    assert sparse.num_params() == model.num_params()  # a sparse weight counts as the K x N it stands for
    idx = _idx()
    ref, _ = model.forward(idx)
    got, _ = sparse.forward(idx)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)  # float32, another summation order
    # decoding with the KV cache runs the one-row path
    assert np.array_equal(sparse.generate(idx[0, :3], 6, temperature=0), model.generate(idx[0, :3], 6, temperature=0))


def test_sparse_weights_are_frozen_and_the_rest_trains_as_in_the_dense_model():
    model = _pruned_model("numpy", cfg=dataclasses.replace(CFG, dtype="float64"))
    sparse = sparse_model(model, 0.5)
    idx, targets = _idx(1), _idx(2)
    model.forward(idx, targets)
    sparse.forward(idx, targets)
    g_dense, g_sparse = model.backward(), sparse.backward()
    frozen = {n[: -len(".csr_indptr")] for n in sparse.params if n.endswith(".csr_indptr")}
    assert set(g_sparse) == set(g_dense) - frozen
    for name, g in g_sparse.items():
        np.testing.assert_allclose(g, g_dense[name], rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_saved_sparse_model_loads_back_exactly(tmp_path, backend):
    model = _pruned_model(backend)
    sparse = sparse_model(model)
    sparse.save(tmp_path / "sparse.npz")
    loaded = GPT.load(tmp_path / "sparse.npz", backend=backend)
    assert list(loaded.params) == list(sparse.params)
    for name, a in sparse.params.items():
        b = loaded.params[name]
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    idx = _idx()
    assert np.array_equal(loaded.forward(idx)[0], sparse.forward(idx)[0])  # same logits, bit for bit
    back = to_dense(loaded.params)
    assert all(np.array_equal(back[n], model.params[n]) for n in model.params)
    assert np.array_equal(dense_model(loaded).forward(idx)[0], model.forward(idx)[0])
    model.save(tmp_path / "dense.npz")
    assert (tmp_path / "sparse.npz").stat().st_size < (tmp_path / "dense.npz").stat().st_size


@pytest.mark.parametrize("break_it, message", [
    (lambda p, w: p[w + ".csr_indices"].__setitem__(0, 999), "h.0.mlp.c_fc.weight: csr_indices must lie in [0, 16)"),
    (lambda p, w: p.pop(w + ".csr_values"), "sparse weight h.0.mlp.c_fc.weight has no array"),
    (lambda p, w: p.__setitem__(w + ".csr_values", p[w + ".csr_values"].astype(np.float64)),
     "h.0.mlp.c_fc.weight: csr_values is float64, but the layer computes in float32"),
    (lambda p, w: p.__setitem__(w, np.zeros((16, 64), np.float32)), "unexpected parameters"),
])
def test_a_broken_sparse_weight_is_named(tmp_path, break_it, message):
    params = to_sparse(_pruned_model("numpy").params, 0.0)
    w = "h.0.mlp.c_fc.weight"
    break_it(params, w)
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_params(params, CFG)
    model = GPT(CFG, params=to_sparse(_pruned_model("numpy").params, 0.0))
    model.params = params
    model.save(tmp_path / "broken.npz")
    with pytest.raises(CheckpointError, match="broken.npz"):
        GPT.load(tmp_path / "broken.npz")
