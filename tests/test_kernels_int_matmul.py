"""Integer matmul kernels against the NumPy references that define them."""
import numpy as np
import pytest

from minigpt.kernels import int_matmul as K
from minigpt.kernels import int_matmul_ref as R
from minigpt.kernels import vnni
from minigpt.kernels.vnni import HAS_AVX2_FMA, HAS_AVX512F, HAS_VNNI

# (M, K, N): one row, one column, N not a multiple of the 4-channel tiles,
# M not a multiple of the 4-row int4 blocks, N beyond one 256-column tile.
SHAPES = [(1, 1, 1), (3, 5, 7), (1, 64, 6), (5, 32, 300), (17, 96, 12)]

# Float results: the kernels sum the K products in another order (vectorised
# partial sums), so they differ from BLAS by ~K eps relative to the row norms.
FTOL = {np.float32: 1e-5, np.float64: 1e-13}


@pytest.fixture(params=["vnni tiles", "vnni dots", "portable"])
def int8_path(request, monkeypatch):
    """Run an int8 x int8 test through each kernel: VNNI's packed register tiles (forced for every M),
    VNNI's dot products (forced for every M), both where the CPU has VNNI, and the portable one."""
    vnni = request.param.startswith("vnni")
    if vnni and not HAS_VNNI:
        pytest.skip("this CPU has no AVX-512 VNNI")
    monkeypatch.setattr(K, "USE_VNNI", vnni)
    monkeypatch.setattr(K, "GEMM_MIN_ROWS", 1 if request.param == "vnni tiles" else 10**9)
    return request.param


def _f32_tiles(monkeypatch, tiles):
    """Send the weight-only batches to the float32 GEMM with `tiles` ("avx512" or "avx2": both run
    here, AVX2's instructions being part of AVX-512 CPUs), skipping where this CPU has not got them."""
    if tiles == "avx512" and not HAS_AVX512F:
        pytest.skip("this CPU has no AVX-512")
    if tiles == "avx2" and not HAS_AVX2_FMA:
        pytest.skip("this CPU has no AVX2 + FMA")
    monkeypatch.setattr(K, "USE_F32_GEMM", True)
    monkeypatch.setattr(K, "F32_TILES", tiles)
    return K._F32_GEMMS[tiles][2]


@pytest.fixture(params=["integer loops", "integer loops, no row kernel", "integer loops, parallel",
                        "dequantize + BLAS", "float32 GEMM", "float32 GEMM, AVX2 tiles"])
def weight_path(request, monkeypatch):
    """Run a weight-only test through every path, whatever the number of rows: the float32
    decoding row kernels (16-wide vectors: int4's vnni.nibble_rows4_f32, int8's vnni.int8_rows4_f32)
    or, switched off, the general loops; the decoding kernels' serial twins (small products) and their parallel originals;
    the batch paths: dequantize + BLAS, and (float32) the GEMM that dequantizes into its panels,
    with AVX-512's tiles and with AVX2's (float64 x takes BLAS's path there too)."""
    batch = request.param in ("dequantize + BLAS", "float32 GEMM", "float32 GEMM, AVX2 tiles")
    monkeypatch.setattr(K, "DEQUANT_MIN_ROWS", 1 if batch else 10**9)
    monkeypatch.setattr(K, "F32_GEMM_MIN_ROWS", 1 if batch else 10**9)
    monkeypatch.setattr(K, "USE_F32_GEMM", False)
    if request.param.startswith("float32 GEMM"):
        _f32_tiles(monkeypatch, "avx2" if "AVX2" in request.param else "avx512")
    monkeypatch.setattr(K, "USE_VECTORS", request.param != "integer loops, no row kernel")
    if request.param == "integer loops, parallel":
        monkeypatch.setattr(K, "SMALL_WORK", 0)
    return request.param


def _int8(rng, shape):
    return rng.integers(-128, 128, shape).astype(np.int8)


# K = one VNNI step, and 3 + a tail; the tiles: M past one MR = 6 row tile and not a multiple of it,
# N past one 64-channel panel and not a multiple of 16, K not a multiple of 4
@pytest.mark.parametrize("shape", SHAPES + [(3, 64, 8), (2, 200, 9), (13, 37, 150), (64, 256, 64)])
def test_int8_int32_is_exact(shape, int8_path):
    M, Kd, N = shape
    rng = np.random.default_rng(0)
    a, w = _int8(rng, (M, Kd)), _int8(rng, (N, Kd))
    np.testing.assert_array_equal(K.int8_matmul_int32(a, w), R.int8_matmul_int32_ref(a, w))


@pytest.mark.parametrize("value_a, value_w", [(-128, -128), (127, -128), (127, 127), (0, -128)])
def test_int8_extremes(value_a, value_w, int8_path):
    # the largest products: K * 128 * 128 must not wrap in the int32 accumulator
    Kd = 1000
    a = np.full((2, Kd), value_a, dtype=np.int8)
    w = np.full((5, Kd), value_w, dtype=np.int8)
    out = K.int8_matmul_int32(a, w)
    assert out.dtype == np.int32
    assert np.all(out == Kd * value_a * value_w)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_int8_rescaled_matches_reference(shape, dtype, int8_path):
    M, Kd, N = shape
    rng = np.random.default_rng(1)
    x = rng.standard_normal((M, Kd)).astype(dtype)
    w = rng.standard_normal((Kd, N)).astype(dtype)
    a_q, a_s = R.quantize_per_row(x)
    w_q, w_s = R.quantize_per_channel(w)
    got = K.int8_matmul(a_q, a_s, w_q, w_s)
    assert got.dtype == dtype
    # int32 sums are exact and converted exactly; the two scale products are
    # done in the same order and dtype as the reference: bit-for-bit equal
    np.testing.assert_array_equal(got, R.int8_matmul_ref(a_q, a_s, w_q, w_s))
    # and the whole thing approximates the float product to int8 precision
    np.testing.assert_allclose(K.quantized_linear_int8(x, w_q, w_s), x @ w, atol=0.05 * np.sqrt(Kd))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES + [(13, 37, 150), (40, 64, 70)])
def test_w8a8_from_float_is_the_reference_exactly(shape, dtype, int8_path):
    # the fused per-token quantization (tiles path) must give the same integers and
    # scales as quantize_per_row, so the whole product is bit-for-bit the reference's
    M, Kd, N = shape
    rng = np.random.default_rng(5)
    x = rng.standard_normal((M, Kd)).astype(dtype)
    x[0, : min(Kd, 3)] = [0.5, -0.5, 1.5][: min(Kd, 3)]  # halves: round half to even
    if M > 2:
        x[2] = 0  # an all-zero token gets scale 1
    w_q, w_s = R.quantize_per_channel(rng.standard_normal((Kd, N)).astype(dtype))
    got = K.quantized_linear_int8(x, w_q, w_s)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, R.w8a8_matmul_ref(x, w_q, w_s))


@pytest.mark.skipif(not HAS_VNNI, reason="the tile layout is the VNNI kernel's")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M, Kd", [(8, 10), (7, 37), (1, 16)])  # padded rows and bytes; exactly 16
def test_fused_quantizer_writes_the_tiles(M, Kd, dtype):
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((M, Kd)) * 3).astype(dtype)
    a4, scale = K._packed_activations(M, Kd), np.empty(M, dtype=dtype)
    K._quantize_rows_u8(x, a4.view(np.uint32)[..., 0], scale, dtype(127))
    q, s = R.quantize_per_row(x)
    np.testing.assert_array_equal(scale, s)
    rows = a4.transpose(0, 2, 1, 3).reshape(a4.shape[0] * a4.shape[2], -1)  # back to (Mp, 4 K4)
    np.testing.assert_array_equal(rows[:M, :Kd].astype(np.int16) - 128, q)  # padding: zero weights meet it


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_int8_weight_only_matches_reference(shape, dtype, weight_path):
    M, Kd, N = shape
    rng = np.random.default_rng(2)
    x = rng.standard_normal((M, Kd)).astype(dtype)
    w_q, w_s = R.quantize_per_channel(rng.standard_normal((Kd, N)).astype(dtype))
    got = K.int8_weight_matmul(x, w_q, w_s)
    ref = R.int8_weight_matmul_ref(x, w_q, w_s)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, ref, rtol=FTOL[dtype], atol=FTOL[dtype] * np.sqrt(Kd))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
# one row (the decoding kernel): group / 2 = 1, 6 (four byte rows a pass + 2), 16; N past
# the 64-column vector steps and not a multiple of them
@pytest.mark.parametrize("shape, group", [((1, 2, 1), 2), ((3, 8, 7), 4), ((5, 64, 300), 32),
                                          ((1, 96, 9), 32), ((6, 128, 20), 64), ((1, 24, 37), 12),
                                          ((1, 64, 150), 32), ((1, 48, 200), 8)])
def test_int4_weight_only_matches_reference(shape, group, dtype, weight_path):
    M, Kd, N = shape
    rng = np.random.default_rng(3)
    x = rng.standard_normal((M, Kd)).astype(dtype)
    packed, scales = R.quantize_int4_groupwise(rng.standard_normal((Kd, N)).astype(dtype), group)
    assert packed.shape == (Kd // 2, N) and packed.dtype == np.uint8 and scales.shape == (Kd // group, N)
    got = K.int4_weight_matmul(x, packed, scales, group)
    ref = R.int4_weight_matmul_ref(x, packed, scales, group)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, ref, rtol=FTOL[dtype], atol=FTOL[dtype] * np.sqrt(Kd))


def _summation_bound(x, w_hat):
    """|x @ w_hat computed in float32 in any order - the exact product| <= K eps32 (|x| @ |w_hat|):
    each of the K - 1 additions and K products rounds by at most eps32 / 2 relative to the partial
    sums, which are bounded by |x| @ |w_hat| (the classic gamma_K bound, taken loosely)."""
    return x.shape[1] * np.finfo(np.float32).eps * (np.abs(x).astype(np.float64) @ np.abs(w_hat).astype(np.float64))


def _assert_float32_product(got, x, w_hat):
    """got (float32) is x @ w_hat to float32 rounding in some summation order: within
    _summation_bound of the float64 product of the same float32 values, element by element."""
    assert got.dtype == np.float32 and got.shape == (x.shape[0], w_hat.shape[1])
    exact = x.astype(np.float64) @ w_hat.astype(np.float64)
    assert np.all(np.abs(got - exact) <= _summation_bound(x, w_hat) + 1e-30)


# The float32 GEMM of the batch path: M around its 6-row tiles (fewer rows than one tile, one,
# past one and not a multiple: the last M % 6 = 1 .. 5 rows run in tiles of 2, 4 and 6), N around
# its panels (64 columns, AVX2's 16) and vectors (16, 8), K not a multiple of int8's 4-byte words,
# int4 groups 32 / 64 / 128 with K = one group; k_block forces the k blocks (panel rows): K in one
# block, several, and a last block shorter than the others.
F32_GEMM_CASES = [(1, 3, 1, 32), (5, 37, 70, 32), (6, 64, 64, 64), (7, 130, 129, 32), (13, 256, 200, 128),
                  (28, 128, 16, 128), (21, 96, 65, 32), (8, 64, 300, 32)]


# AVX-512's tiles read int8 panels by gathers or by loads; AVX2's by loads only
TILES_AND_GATHER = [("avx512", False), ("avx512", True), ("avx2", False)]


@pytest.mark.parametrize("k_block", [None, 32, 40])
@pytest.mark.parametrize("M, Kd, N, group", F32_GEMM_CASES)
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("tiles, gather", TILES_AND_GATHER)
def test_float32_gemm_is_the_dequantized_product(M, Kd, N, group, k_block, parallel, tiles, gather, monkeypatch):
    # AVX2: 6 x 16 tiles, so the N here also fall around its 16-column panels (16, 65, 70, 129)
    shape = _f32_tiles(monkeypatch, tiles)
    monkeypatch.setattr(K, "F32_GEMM_MIN_ROWS", 1)
    monkeypatch.setattr(K, "USE_GATHER", gather)
    if k_block is not None:  # panels of k_block rows (int4: at least one group; int8: a multiple of 4)
        monkeypatch.setattr(K, "PANEL_BYTES", 4 * shape.NB * k_block)
    if parallel:  # two threads even for these small products, in up to 3 pieces (runs of panels)
        monkeypatch.setattr(K, "pieces_for", lambda M, K, N: (2, 3))
    rng = np.random.default_rng(M * 1000 + Kd)
    x = rng.standard_normal((M, Kd)).astype(np.float32)
    w = rng.standard_normal((Kd, N)).astype(np.float32)
    w_q, w_s = R.quantize_per_channel(w)
    got8 = K.int8_weight_matmul(x, w_q, w_s)
    _assert_float32_product(got8, x, R.dequantize_int8(w_q, w_s).T)
    assert K._F32_GEMMS[tiles][0].signatures  # these tiles' kernel ran (was compiled)
    if Kd % group == 0:
        packed, scales = R.quantize_int4_groupwise(w, group)
        got4 = K.int4_weight_matmul(x, packed, scales, group)
        _assert_float32_product(got4, x, R.dequantize_int4(packed, scales, group))


# The int8 decoding rows (fewer than F32_GEMM_MIN_ROWS rows of float32 x): vnni.int8_rows4_f32's 16-wide
# vectors over the first K - K % 64 k of four weight rows, numba's loop for the rest of K and the last
# N % 4 rows. Rows 1-5; K below one 64-k step, exactly one, past one and odd, a GPT-2 width + 3; N below
# one task of 4 rows, a multiple of it, and not. The VNNI / float32 GEMM switches must not matter here.
@pytest.mark.parametrize("M", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("Kd, N", [(3, 2), (64, 4), (67, 9), (130, 37), (771, 6)])
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("switches", [False, True])
def test_int8_decoding_rows_are_the_dequantized_product(M, Kd, N, parallel, switches, monkeypatch):
    monkeypatch.setattr(K, "USE_VNNI", switches and HAS_VNNI)
    monkeypatch.setattr(K, "USE_F32_GEMM", switches and K.USE_F32_GEMM)
    if parallel:  # the prange original, not the serial twin, even for these small products
        monkeypatch.setattr(K, "SMALL_WORK", 0)
    rng = np.random.default_rng(M * 1000 + Kd)
    x = rng.standard_normal((M, Kd)).astype(np.float32)
    w_q, w_s = R.quantize_per_channel(rng.standard_normal((Kd, N)).astype(np.float32))
    got = K.int8_weight_matmul(x, w_q, w_s)
    _assert_float32_product(got, x, R.dequantize_int8(w_q, w_s).T)
    assert (K._int8_row_kernel if parallel else K._int8_row_kernel_serial).signatures  # the row kernel ran

@pytest.mark.parametrize("M, Kd, N", [(20, 0, 5), (20, 4, 0), (0, 4, 5)])
def test_weight_only_empty_products(M, Kd, N, weight_path):
    x = np.ones((M, Kd), dtype=np.float32)
    got8 = K.int8_weight_matmul(x, np.ones((N, Kd), dtype=np.int8), np.ones(N, dtype=np.float32))
    got4 = K.int4_weight_matmul(x, np.zeros((Kd // 2, N), dtype=np.uint8), np.ones((Kd // 2, N), dtype=np.float32), 2)
    for got in (got8, got4):  # K = 0: a sum of nothing
        assert got.shape == (M, N) and got.dtype == np.float32 and not got.any()


@pytest.mark.parametrize("tiles, gather", TILES_AND_GATHER)
def test_float32_gemm_packs_the_reference_weights(tiles, gather, monkeypatch):
    # x = the identity picks the rows of the dequantized weight out of the product: no sum, so the
    # panels must hold the reference's dequantized values exactly (every int8 value and nibble);
    # N = 70: full panels (int4: vnni's vector packing) and a last narrow one (the column loop)
    _f32_tiles(monkeypatch, tiles)
    monkeypatch.setattr(K, "F32_GEMM_MIN_ROWS", 1)
    monkeypatch.setattr(K, "USE_GATHER", gather)
    Kd, N = 64, 70
    rng = np.random.default_rng(11)
    w_q = rng.integers(-128, 128, (N, Kd)).astype(np.int8)
    w_q[:, :2] = [[-128, 127]]
    w_s = rng.uniform(0.01, 2, N).astype(np.float32)
    eye = np.eye(Kd, dtype=np.float32)
    np.testing.assert_array_equal(K.int8_weight_matmul(eye, w_q, w_s), R.dequantize_int8(w_q, w_s).T)
    q = rng.integers(-8, 8, (Kd, N)).astype(np.int8)
    q[:16, 0] = np.arange(-8, 8)
    packed, scales = R.pack_int4(q, 32), rng.uniform(0.01, 2, (Kd // 32, N)).astype(np.float32)
    np.testing.assert_array_equal(K.int4_weight_matmul(eye, packed, scales, 32), R.dequantize_int4(packed, scales, 32))


@pytest.mark.parametrize("forced, features, expected", [
    ("", "+avx2,+fma,+avx512f,+avx512vnni", "avx512"), ("", "+avx2,+fma,-avx512f", "avx2"),
    ("", "+avx2,-fma", None), ("", "+sse4.2,+avx", None), ("avx2", "+avx2,+fma,+avx512f", "avx2"),
    ("AVX512", "+avx2,+fma", "avx512"), ("off", "+avx2,+fma,+avx512f", None)])
def test_float32_tiles_follow_numbas_cpu_features(forced, features, expected, monkeypatch):
    # the tiles are chosen from what numba compiles for (NUMBA_CPU_FEATURES, set by kernels/__init__
    # on AVX-512 CPUs), unless MINIGPT_F32_TILES says otherwise
    monkeypatch.setenv("MINIGPT_F32_TILES", forced)
    monkeypatch.setenv("NUMBA_CPU_FEATURES", features)
    assert vnni._f32_tiles_choice() == expected


def test_int4_extremes_and_zero_inputs(weight_path):
    # every nibble value -8..7, including -8 which the quantizer never emits
    q = np.tile(np.arange(-8, 8, dtype=np.int8), 4).reshape(32, 2)  # (K=32, N=2)
    packed = R.pack_int4(q, 8)
    np.testing.assert_array_equal(R.unpack_int4(packed, 8), q)
    scales = np.full((4, 2), 0.5)
    x = np.ones((1, 32))
    np.testing.assert_allclose(K.int4_weight_matmul(x, packed, scales, 8), R.int4_weight_matmul_ref(x, packed, scales, 8))
    zero = K.int4_weight_matmul(np.zeros((3, 32)), packed, scales, 8)
    assert zero.shape == (3, 2) and not zero.any()


def test_all_zero_inputs(int8_path):
    x = np.zeros((3, 16), dtype=np.float32)
    a_q, a_s = R.quantize_per_row(x)
    assert not a_q.any() and np.all(a_s == 1.0)  # no division by zero
    w_q, w_s = R.quantize_per_channel(np.zeros((16, 5), dtype=np.float32))
    assert not K.int8_matmul(a_q, a_s, w_q, w_s).any()
    assert not K.int8_weight_matmul(x, w_q, w_s).any()


def test_quantizers_round_to_nearest_level():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((64, 10))
    w_q, w_s = R.quantize_per_channel(w)
    assert w_q.shape == (10, 64) and np.abs(w_q).max() == 127
    assert np.all(np.abs(R.dequantize_int8(w_q, w_s).T - w) <= w_s / 2 + 1e-12)
    packed, scales = R.quantize_int4_groupwise(w, 16)
    err = np.abs(R.dequantize_int4(packed, scales, 16) - w)
    assert np.all(err <= np.repeat(scales, 16, axis=0) / 2 + 1e-12)


def test_shape_errors():
    with pytest.raises(ValueError):
        K.int8_matmul_int32(np.zeros((2, 3), np.int8), np.zeros((4, 5), np.int8))
    with pytest.raises(ValueError):
        R.quantize_int4_groupwise(np.zeros((12, 2)), 8)  # K not a multiple of the group
    packed, scales = R.quantize_int4_groupwise(np.ones((16, 2)), 8)
    with pytest.raises(ValueError):
        K.int4_weight_matmul(np.ones((1, 16)), packed, scales, 4)  # wrong group for these scales


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("kind, tol", [("int8", 0.02), ("int4", 0.2)])
def test_quantized_weights_run_the_unchanged_model(kind, tol, backend, tmp_path):
    from minigpt import GPT, GPTConfig, load_checkpoint
    from minigpt.layers.quantized_linear import dequantize, quantized_arrays, quantized_linear_forward
    from minigpt.ops import op_table
    from minigpt.quant import quantize_model, weight_bytes

    cfg = GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=32)
    model = GPT(cfg, seed=0, backend=backend)
    qmodel = quantize_model(model, kind)
    assert all(isinstance(p, np.ndarray) for p in qmodel.params.values())  # plain arrays only
    assert "h.0.mlp.c_fc.weight" not in qmodel.params and f"h.0.mlp.c_fc.weight.{kind}" in qmodel.params
    assert weight_bytes(qmodel.params) < weight_bytes(model.params)
    assert qmodel.num_params() == model.num_params()
    # the layer's product goes through the integer kernel and equals x @ dequantized W
    q = quantized_arrays(qmodel.block_params(0), "mlp.c_fc")
    ops = op_table(backend)
    x = np.random.default_rng(0).standard_normal((2, 3, 32)).astype(np.float32)
    b = np.zeros(128, np.float32)
    out, _ = quantized_linear_forward(x, q, b, {"int8": ops["int8_weight_matmul"][0],
                                                "int4": ops["int4_weight_matmul"][0]})
    np.testing.assert_allclose(out, x @ dequantize(q), rtol=1e-5, atol=1e-5)
    idx = np.array([[1, 5, 2, 7, 3]])
    ref, _ = model.forward(idx)
    got, _ = qmodel.forward(idx)
    # weights off by up to half a step (1/254 or 1/14 of the largest weight)
    assert np.abs(got - ref).max() < tol * np.abs(ref).max()
    assert qmodel.generate([1, 2], 5, temperature=0).shape == (7,)
    # saves and loads with the no-pickle checkpoint, same numbers
    qmodel.save(tmp_path / "q.npz")
    back = load_checkpoint(tmp_path / "q.npz", backend=backend).model
    np.testing.assert_array_equal(back.forward(idx)[0], got)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_absmax_is_numpys(dtype):
    rng = np.random.default_rng(8)
    for n in list(range(1, 40)) + [768]:  # below, at and past the 16 running maxima
        v = rng.standard_normal(n).astype(dtype)
        v[rng.integers(n)] = -5.0  # the largest magnitude is negative somewhere
        assert K._absmax(v) == np.abs(v).max()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dequantizing_kernels_are_the_reference_value_for_value(dtype):
    # the batch path multiplies BLAS by exactly the reference's dequantized weight
    rng = np.random.default_rng(7)
    w = rng.standard_normal((64, 40)).astype(dtype)
    w_q, w_s = R.quantize_per_channel(w)
    got8 = np.empty((40, 64), dtype=dtype)
    K._dequantize_int8_rows(w_q, w_s, got8)
    np.testing.assert_array_equal(got8, R.dequantize_int8(w_q, w_s))
    packed, scales = R.quantize_int4_groupwise(w, 16)
    got4 = np.empty((64, 40), dtype=dtype)
    K._dequantize_int4_cols(packed, scales, 16, got4)
    np.testing.assert_array_equal(got4, R.dequantize_int4(packed, scales, 16))


def test_scratch_buffer_is_reused_and_grown():
    a = K._scratch_buffer((3, 4), np.float32)
    b = K._scratch_buffer((2, 5), np.float32)
    assert b.base is a.base  # the same memory, reshaped
    c = K._scratch_buffer((100, 100), np.float32)
    assert c.shape == (100, 100) and c.dtype == np.float32
    assert K._scratch_buffer((2, 2), np.float64).dtype == np.float64
