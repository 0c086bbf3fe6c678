"""The AVX-512 VNNI int8 dot product, for CPUs that have it.

LLVM's vectoriser turns an int8 dot product written in numba into
sign-extend + vpmaddwd (32 multiply-adds per instruction), which is still
slower than float32 BLAS. VNNI's vpdpbusd does 64 multiply-adds of
unsigned x signed bytes into 16 int32 sums in one instruction, but LLVM
does not find it from plain code, so this module emits it directly: an
intrinsic that runs the whole k loop for one activation row against four
weight rows, 64 bytes per step, and returns the four int32 sums.

vpdpbusd wants the first operand unsigned. With a_u = a + 128 (in 0..255;
for int8 that is a XOR 0x80 on the bits):
    sum_k a[k] w[k] = sum_k a_u[k] w[k] - 128 sum_k w[k]
so the caller subtracts 128 * (row sum of w). Products of a u8 and an s8
fit in int16 pairs without saturation (vpdpbusd sums four of them into
int32 directly), so the result is exact.

Only used when llvmlite reports the host has 'avx512vnni' and numba may
compile for it (see HAS_VNNI); the kernel that calls the intrinsic is
compiled on first use only, so other CPUs never see the instruction.

Four intrinsics: dot4_u8s8 (one activation row x 4 weight rows, for a few
rows), gemm_tile_u8s8 (6 rows x 64 channels in registers, for batches; see
its section), and two that are not VNNI at all, in plain 16-wide LLVM
vectors for any CPU: nibble_rows4_f32, the int4 decoding row's inner pass,
and int8_rows4_f32, the int8 weight-only decoding row's (float32 x times
four int8 weight rows).
The weight-only batch product's float32 GEMM, not VNNI either, has three
intrinsics per tile shape, in a small module per CPU kind: F32_AVX512
(AVX-512F: 6 rows x 64 columns in 24 zmm accumulators) and F32_AVX2 (AVX2 +
FMA: 6 rows x 16 columns in 12 ymm, four side by side in a 64-column
panel), each with gemm_tile_f32 (the register
tile), pack_int8_panel_f32 (int8 weight rows dequantized into its panels, 4 k
of LANES rows at a time) and pack_int4_panel_f32 (int4 byte rows, a vector of
bytes at a time); see their section. F32_TILES names the one this process
uses: from the CPU features numba compiles for, or forced by the environment
variable MINIGPT_F32_TILES=avx512 / avx2 / off, read once at import (the
AVX2 tiles run on AVX-512 CPUs too: that is how they are measured here,
together with NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=+avx2,+fma so that
numba compiles for AVX2 alone). The tests reach both shapes without it
(int_matmul.F32_TILES).

numba's cache (cache=True) keys each kernel on its own source file's
contents, not on the intrinsics it inlines: after editing this file, delete
the int_matmul.* files of kernels/__pycache__, or the kernels keep the old
machine code.
"""
import os
import types as types_module
import warnings

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _numba_features():
    """The CPU features numba compiles for: NUMBA_CPU_FEATURES where set (kernels/__init__.py sets it
    on AVX-512 CPUs; set by hand, it restricts numba, e.g. to AVX2), else the host's; the '+' ones."""
    features = os.environ.get("NUMBA_CPU_FEATURES") or llvm.get_host_cpu_features().flatten()
    return {f[1:] for f in features.split(",") if f.startswith("+")}


# VNNI where numba may emit it (with numba restricted to fewer features LLVM could not compile vpdpbusd)
HAS_VNNI = bool(llvm.get_host_cpu_features().get("avx512vnni", False)) and "avx512vnni" in _numba_features()
HAS_AVX512F = bool(llvm.get_host_cpu_features().get("avx512f", False))
HAS_AVX2_FMA = all(llvm.get_host_cpu_features().get(f, False) for f in ("avx2", "fma"))  # the ymm tiles
STEP = 64  # bytes per vpdpbusd


@intrinsic
def dot4_u8s8(typingctx, a, w, j, k_end):
    """(a_u[:k_end] . w[j + r, :k_end]) for r = 0..3 as four int32; k_end a multiple of 64.

    a: 1-D uint8 C-contiguous array; w: 2-D int8 C-contiguous (N, K) array.
    """
    sig = types.UniTuple(types.int32, 4)(a, w, j, k_end)

    def codegen(context, builder, signature, args):
        a_arr = context.make_array(signature.args[0])(context, builder, args[0])
        w_arr = context.make_array(signature.args[1])(context, builder, args[1])
        j_val = context.cast(builder, args[2], signature.args[2], types.intp)
        k_val = context.cast(builder, args[3], signature.args[3], types.intp)
        i8p = ir.IntType(8).as_pointer()
        v16 = ir.VectorType(ir.IntType(32), 16)
        intp = context.get_value_type(types.intp)
        row_stride = builder.extract_value(w_arr.strides, 0)  # bytes per weight row
        a_ptr = builder.bitcast(a_arr.data, i8p)
        w_base = builder.bitcast(w_arr.data, i8p)
        rows = [builder.gep(w_base, [builder.mul(builder.add(j_val, ir.Constant(intp, r)), row_stride)])
                for r in range(4)]
        dpbusd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16, [v16, v16, v16]),
                                                "llvm.x86.avx512.vpdpbusd.512")
        accs = [cgutils.alloca_once_value(builder, ir.Constant(v16, None)) for _ in range(4)]

        def load64(ptr, offset):
            p = builder.bitcast(builder.gep(ptr, [offset]), v16.as_pointer())
            return builder.load(p, align=1)

        with cgutils.for_range_slice(builder, ir.Constant(intp, 0), k_val, ir.Constant(intp, STEP),
                                     intp=intp) as (k, _):
            av = load64(a_ptr, k)
            for acc, row in zip(accs, rows):
                builder.store(builder.call(dpbusd, [builder.load(acc), av, load64(row, k)]), acc)

        reduce_add = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), [v16]),
                                                    "llvm.vector.reduce.add.v16i32")
        sums = [builder.call(reduce_add, [builder.load(acc)]) for acc in accs]
        return context.make_tuple(builder, signature.return_type, sums)

    return sig, codegen


# ---------------------------------------------------------------- GEMM tile
# A register-blocked micro-kernel for batches (M rows of activations):
# MR activation rows x NR zmm of 16 output channels = MR * NR accumulators,
# each holding 16 int32 sums of ONE row against 16 channels, so nothing is
# reduced horizontally. The weights are first packed (by the caller, per
# panel of NR * 16 channels) so that one 64-byte load holds 4 consecutive k
# of 16 channels: panel[k4, c, 0:4] = w[j0 + c, 4 k4 : 4 k4 + 4]. Per step of
# 4 k: NR weight loads, MR 4-byte broadcasts of the activations, MR * NR
# vpdpbusd; each weight load is used MR times and each broadcast NR times.
MR, NR = 6, 4  # 24 accumulators + 4 weight registers + a broadcast: within the 32 zmm


@intrinsic
def gemm_tile_u8s8(typingctx, a, a_at, panel, k4, c):
    """c[r, :] = sum over k4 steps of the activations' 4 bytes x the panel's columns, r < MR: int32 sums.

    a: uint8 array holding packed activations: MR rows interleaved 4 bytes at a
    time, a[a_at + MR * 4 k4 + 4 r : + 4] = row r's bytes 4 k4 .. 4 k4 + 3
    (one contiguous stream per tile); panel: the packed layout above for
    NR * 16 channels (any array type: only its bytes are read);
    c: 2-D int32 C-contiguous (MR, NR * 16), overwritten.
    """
    sig = types.void(a, a_at, panel, k4, c)

    def codegen(context, builder, signature, args):
        a_arr = context.make_array(signature.args[0])(context, builder, args[0])
        p_arr = context.make_array(signature.args[2])(context, builder, args[2])
        c_arr = context.make_array(signature.args[4])(context, builder, args[4])
        at_val = context.cast(builder, args[1], signature.args[1], types.intp)
        k4_val = context.cast(builder, args[3], signature.args[3], types.intp)
        intp = context.get_value_type(types.intp)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        v16 = ir.VectorType(i32, 16)
        c_stride = builder.extract_value(c_arr.strides, 0)
        a_base, p_base, c_base = (builder.bitcast(arr.data, i8p) for arr in (a_arr, p_arr, c_arr))
        a_tile = builder.gep(a_base, [at_val])
        dpbusd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16, [v16, v16, v16]),
                                                "llvm.x86.avx512.vpdpbusd.512")
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(v16, None)) for _ in range(NR)] for _ in range(MR)]
        panel_step = ir.Constant(intp, NR * 64)  # bytes of the panel per 4 k
        zeros16 = ir.Constant(ir.VectorType(i32, 16), None)

        with cgutils.for_range(builder, k4_val, intp=intp) as loop:
            k = loop.index
            w_at = builder.gep(p_base, [builder.mul(k, panel_step)])
            wv = [builder.load(builder.bitcast(builder.gep(w_at, [ir.Constant(intp, 64 * n)]), v16.as_pointer()),
                               align=1) for n in range(NR)]
            a_at_k = builder.gep(a_tile, [builder.mul(k, ir.Constant(intp, 4 * MR))])
            for r in range(MR):
                a32 = builder.load(builder.bitcast(builder.gep(a_at_k, [ir.Constant(intp, 4 * r)]), i32.as_pointer()),
                                   align=1)
                splat = builder.shuffle_vector(builder.insert_element(ir.Constant(v16, ir.Undefined), a32,
                                                                      ir.Constant(i32, 0)),
                                               ir.Constant(v16, ir.Undefined), zeros16)
                for n in range(NR):
                    acc = accs[r][n]
                    builder.store(builder.call(dpbusd, [builder.load(acc), splat, wv[n]]), acc)

        for r in range(MR):
            c_row = builder.gep(c_base, [builder.mul(ir.Constant(intp, r), c_stride)])
            for n in range(NR):
                dst = builder.bitcast(builder.gep(c_row, [ir.Constant(intp, 64 * n)]), v16.as_pointer())
                builder.store(builder.load(accs[r][n]), dst, align=1)
        return context.get_dummy_value()

    return sig, codegen


# ------------------------------------------------------- int4 decoding row
# Not VNNI: plain LLVM vectors of 16 float32, which every x86 CPU runs (one zmm
# with AVX-512, two ymm with AVX2). numba's own loop left LLVM to choose: 8
# lanes, or with 512-bit vectors allowed, gathers (10x slower); written out,
# the vectors are what the loop means on every CPU.
COLS = 64  # columns a step of nibble_rows4_f32: 4 vectors of 16


@intrinsic
def nibble_rows4_f32(typingctx, part, packed, r, j0, n, xs):
    """part[j] += sum_{i<4} xs[i] lo(packed[r + i, j0 + j]) + xs[4 + i] hi(packed[r + i, j0 + j]) for j < n.

    part: 1-D float32 C-contiguous; packed: 2-D uint8 C-contiguous (byte rows);
    lo / hi: a byte's low / high nibble as a float (0..15); xs: 1-D float32, 8 values;
    n a multiple of COLS. Prefetches the next four byte rows' bytes as it goes.
    """
    sig = types.void(part, packed, r, j0, n, xs)

    def codegen(context, builder, signature, args):
        part_arr = context.make_array(signature.args[0])(context, builder, args[0])
        p_arr = context.make_array(signature.args[1])(context, builder, args[1])
        xs_arr = context.make_array(signature.args[5])(context, builder, args[5])
        r_val, j0_val, n_val = (context.cast(builder, args[i], signature.args[i], types.intp) for i in (2, 3, 4))
        intp = context.get_value_type(types.intp)
        i8, i32, f32 = ir.IntType(8), ir.IntType(32), ir.FloatType()
        v16f, v16i, v16b = ir.VectorType(f32, 16), ir.VectorType(i32, 16), ir.VectorType(i8, 16)
        stride = builder.extract_value(p_arr.strides, 0)
        p_base = builder.bitcast(p_arr.data, i8.as_pointer())
        rows = [builder.gep(p_base, [builder.add(builder.mul(builder.add(r_val, ir.Constant(intp, i)), stride),
                                                 j0_val)]) for i in range(4)]
        ahead = [builder.gep(row, [builder.mul(ir.Constant(intp, 4), stride)]) for row in rows]  # rows r+4..r+7
        part_ptr = builder.bitcast(part_arr.data, f32.as_pointer())
        xs_ptr = builder.bitcast(xs_arr.data, f32.as_pointer())
        zero = ir.Constant(v16i, None)

        def splat(v):
            return builder.shuffle_vector(builder.insert_element(ir.Constant(v16f, ir.Undefined), v,
                                                                 ir.Constant(i32, 0)), ir.Constant(v16f, ir.Undefined),
                                          zero)

        xv = [splat(builder.load(builder.gep(xs_ptr, [ir.Constant(intp, i)]))) for i in range(8)]
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16f, [v16f, v16f, v16f]),
                                             "llvm.fma.v16f32")
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8.as_pointer(), i32, i32, i32]), "llvm.prefetch.p0i8")
        mask, four = ir.Constant(v16i, [15] * 16), ir.Constant(v16i, [4] * 16)

        with cgutils.for_range_slice(builder, ir.Constant(intp, 0), n_val, ir.Constant(intp, COLS),
                                     intp=intp) as (j, _):
            for row in ahead:
                builder.call(prefetch, [builder.gep(row, [j]), ir.Constant(i32, 0), ir.Constant(i32, 3),
                                        ir.Constant(i32, 1)])
            for c in range(COLS // 16):
                jc = builder.add(j, ir.Constant(intp, 16 * c))
                terms = []
                for i, row in enumerate(rows):
                    b = builder.load(builder.bitcast(builder.gep(row, [jc]), v16b.as_pointer()), align=1)
                    u = builder.zext(b, v16i)
                    lo = builder.uitofp(builder.and_(u, mask), v16f)
                    hi = builder.uitofp(builder.lshr(u, four), v16f)
                    terms.append(builder.call(fma, [xv[4 + i], hi, builder.fmul(xv[i], lo)]))
                dst = builder.bitcast(builder.gep(part_ptr, [jc]), v16f.as_pointer())
                s = builder.fadd(builder.fadd(terms[0], terms[1]), builder.fadd(terms[2], terms[3]))
                builder.store(builder.fadd(builder.load(dst, align=4), s), dst, align=4)
        return context.get_dummy_value()

    return sig, codegen


# ------------------------------------------------------- int8 decoding row
# Not VNNI either: x (float32) times four int8 weight rows, the bytes sign-extended and converted to
# float32 16 at a time, in plain LLVM vectors (one zmm with AVX-512, two ymm with AVX2). numba's own
# dot-product loop ran at 8 lanes, about half of memory bandwidth for a weight streamed from DRAM.
I8_STEP = 64  # k a step of int8_rows4_f32: one 64-byte line of each weight row
I8_AHEAD_L2 = (16, 32)  # ... which also prefetches the rows this far ahead into L2


@intrinsic
def int8_rows4_f32(typingctx, x, i, w, j, k_end):
    """(sum_{k < k_end} x[i, k] float(w[j + r, k]) for r = 0..3) as four float32; k_end a multiple of I8_STEP.

    x: 2-D float32 C-contiguous (M, K); w: 2-D int8 C-contiguous (N, K). Each row's sum is kept in
    one 16-wide vector (lane = k mod 16), added pairwise at the end: four chains of FMAs outrun
    the conversions that feed them, and four vectors a row would be 32 ymm with AVX2 (spilled:
    under the AVX2 proxy, 768 x 3072 one row took 0.143 ms with four, 0.110 with one, numba's own
    loop 0.148; AVX-512 the same 0.09 ms either way). Prefetched a line a step: the
    next call's four weight rows (j + 4 .. j + 7) into L1, and rows j + 16 .. j + 19, j + 32 .. j + 35
    into L2 (I8_AHEAD_L2). Measured, one thread, a GPT-2-small token's int8 weights (48 matrices and
    the 50257 x 768 head, 124 MB) streamed from memory: without prefetching 5.8 GB/s, numba's own
    loop 7.4, the next rows alone 11.8, with the L2 prefetches 12.7 (float32 BLAS matvecs: 14.5).
    """
    sig = types.UniTuple(types.float32, 4)(x, i, w, j, k_end)

    def codegen(context, builder, signature, args):
        x_arr = context.make_array(signature.args[0])(context, builder, args[0])
        w_arr = context.make_array(signature.args[2])(context, builder, args[2])
        i_val, j_val, k_val = (context.cast(builder, args[n], signature.args[n], types.intp) for n in (1, 3, 4))
        intp = context.get_value_type(types.intp)
        i8, i32, f32 = ir.IntType(8), ir.IntType(32), ir.FloatType()
        v16f, v16i, v16b = ir.VectorType(f32, 16), ir.VectorType(i32, 16), ir.VectorType(i8, 16)
        i8p = i8.as_pointer()
        w_stride, x_stride = (builder.extract_value(arr.strides, 0) for arr in (w_arr, x_arr))
        w_base = builder.bitcast(w_arr.data, i8p)
        rows = [builder.gep(w_base, [builder.mul(builder.add(j_val, ir.Constant(intp, r)), w_stride)])
                for r in range(4)]
        ahead = [(builder.gep(row, [builder.mul(ir.Constant(intp, d), w_stride)]), locality)
                 for d, locality in ((4, 3),) + tuple((d, 2) for d in I8_AHEAD_L2) for row in rows]
        x_row = builder.bitcast(builder.gep(builder.bitcast(x_arr.data, i8p), [builder.mul(i_val, x_stride)]),
                                f32.as_pointer())
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16f, [v16f, v16f, v16f]),
                                             "llvm.fma.v16f32")
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8")
        accs = [cgutils.alloca_once_value(builder, ir.Constant(v16f, None)) for _ in range(4)]

        with cgutils.for_range_slice(builder, ir.Constant(intp, 0), k_val, ir.Constant(intp, I8_STEP),
                                     intp=intp) as (k, _):
            for row, locality in ahead:
                builder.call(prefetch, [builder.gep(row, [k]), ir.Constant(i32, 0), ir.Constant(i32, locality),
                                        ir.Constant(i32, 1)])
            for c in range(I8_STEP // 16):
                kc = builder.add(k, ir.Constant(intp, 16 * c))
                xv = builder.load(builder.bitcast(builder.gep(x_row, [kc]), v16f.as_pointer()), align=4)
                for r, row in enumerate(rows):
                    b = builder.load(builder.bitcast(builder.gep(row, [kc]), v16b.as_pointer()), align=1)
                    wv = builder.sitofp(builder.sext(b, v16i), v16f)
                    builder.store(builder.call(fma, [xv, wv, builder.load(accs[r])]), accs[r])

        def hsum(v):  # halves added until one lane is left
            for width in (8, 4, 2, 1):
                lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, width), list(range(width))))
                hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, width),
                                                              list(range(width, 2 * width))))
                v = builder.fadd(lo, hi)
            return builder.extract_element(v, ir.Constant(i32, 0))

        sums = [hsum(builder.load(acc)) for acc in accs]
        return context.make_tuple(builder, signature.return_type, sums)

    return sig, codegen


# ------------------------------------------- float32 GEMM for weight-only batches
# x (M, K) float32 times a weight dequantized from int8 / int4. BLAS would need
# the whole weight dequantized first (K N floats written to memory and read back
# by BLAS's own packing); here the weight is dequantized straight into the
# packed panel the micro-kernel reads, once per panel of 64 columns, and every
# FMR rows of x run through that panel. Two tile shapes (modules F32_AVX512 and
# F32_AVX2 below, chosen by F32_TILES): with AVX-512, 6 rows x 4 zmm of 16 = 24
# accumulators + 4 panel vectors + a broadcast of the 32 registers; with AVX2
# (16 ymm), 6 rows x 2 ymm of 8 = 12 + 2 + 1, four such tiles across a panel,
# one after the other for the same rows of x. Per k of a tile: FNR
# panel loads, FMR broadcasts of x, FMR * FNR FMAs. Measured, one thread, Xeon
# family 6 model 207, data as in a 512 x 768 x 3072 product: the AVX-512 tiles
# 147 GFLOPS as written, 161 with the panel prefetched PREFETCH_K steps ahead
# (it streams from L2: panels are K x 256 bytes), OpenBLAS sgemm 145-150; 8 x 3
# tiles were no faster, 12 x 2 and 14 x 2 slower, unrolling k by 4 slower. The
# AVX2 tiles, with numba and OpenBLAS restricted to AVX2 (NUMBA_CPU_NAME=haswell,
# OPENBLAS_CORETYPE=Haswell: a proxy, not an AVX2 CPU): about 80 GFLOPS packing
# included, OpenBLAS's Haswell sgemm 78-81 (its peak there). Tried when the AVX2
# panels were 16 columns wide (one tile): 4 x 3 tiles no faster on the GPT-2
# shapes and 10% slower where N = 128 (a last panel a third empty), k unrolled
# by 2 or 4 no faster, k blocks of 128-512 rows (panel in L1) 5-15% slower,
# prefetching 24 or 64 k ahead no different; 64-column panels then gave
# 2048 x 512 x 128 1.04x BLAS instead of 1.00x (x read once per 64 columns).
PREFETCH_K = 8


def _f32_vectors(builder, lanes):
    f32 = ir.FloatType()
    return f32, ir.VectorType(f32, lanes)


def _gemm_tile_f32(MR, NR, LANES, ROW):
    """gemm_tile_f32 for tiles of MR rows x NR vectors of LANES float32 in panels of ROW columns
    (see the tile modules below)."""

    @intrinsic
    def gemm_tile_f32(typingctx, a, a_at, a_rs, panel, kc, c, accumulate):
        """c[r, :] (+)= sum_{k < kc} a[a_at + r a_rs + k] panel[k ROW : k ROW + NR LANES] for r < MR:
        float32, FMAs.

        a: 1-D or 2-D float32 C-contiguous (x: a_at = i0 K + k0, a_rs = K, row r of
        the tile at a_at + r a_rs); panel: 1-D float32 C-contiguous, kc rows of ROW
        values (a slice starting at the tile's first column); c: 2-D float32
        (MR, NR * LANES) with unit column stride (rows any stride), overwritten,
        or added to if accumulate.
        """
        return _tile_codegen(MR, NR, LANES, ROW, a, a_at, a_rs, panel, kc, c, accumulate)

    return gemm_tile_f32


def _tile_codegen(FMR, FNR, LANES, ROW, a, a_at, a_rs, panel, kc, c, accumulate):
    """The typing and LLVM code of gemm_tile_f32 for one tile shape."""
    sig = types.void(a, a_at, a_rs, panel, kc, c, accumulate)

    def codegen(context, builder, signature, args):
        a_arr = context.make_array(signature.args[0])(context, builder, args[0])
        p_arr = context.make_array(signature.args[3])(context, builder, args[3])
        c_arr = context.make_array(signature.args[5])(context, builder, args[5])
        at, rs, kcv = (context.cast(builder, args[i], signature.args[i], types.intp) for i in (1, 2, 4))
        acc_flag = context.cast(builder, args[6], signature.args[6], types.boolean)
        intp = context.get_value_type(types.intp)
        f32, vf = _f32_vectors(builder, LANES)
        i8p, i32, fp = ir.IntType(8).as_pointer(), ir.IntType(32), f32.as_pointer()
        nb = FNR * LANES
        a_base = builder.gep(builder.bitcast(a_arr.data, fp), [at])
        a_rows = [builder.gep(a_base, [builder.mul(rs, ir.Constant(intp, r))]) for r in range(FMR)]
        p_base = builder.bitcast(p_arr.data, fp)
        c_base, c_stride = builder.bitcast(c_arr.data, i8p), builder.extract_value(c_arr.strides, 0)
        c_vecs = [[builder.bitcast(builder.gep(builder.bitcast(builder.gep(c_base, [builder.mul(ir.Constant(intp, r),
                                                                                                 c_stride)]), fp),
                                               [ir.Constant(intp, LANES * n)]), vf.as_pointer())
                   for n in range(FNR)] for r in range(FMR)]
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf, vf, vf]), f"llvm.fma.v{LANES}f32")
        prefetch = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                                  "llvm.prefetch.p0i8")
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(vf, None)) for _ in range(FNR)] for _ in range(FMR)]
        with builder.if_then(acc_flag):
            for r in range(FMR):
                for n in range(FNR):
                    builder.store(builder.load(c_vecs[r][n], align=4), accs[r][n])
        splat_idx = ir.Constant(ir.VectorType(i32, LANES), None)

        def step(k):  # one k: FNR panel vectors, FMR broadcasts, FMR * FNR FMAs
            p_k = builder.gep(p_base, [builder.mul(k, ir.Constant(intp, ROW))])
            for n in range(max(1, nb // 16)):  # one a 64-byte line (16 floats): the tile's columns PREFETCH_K rows ahead
                builder.call(prefetch, [builder.bitcast(builder.gep(p_k, [ir.Constant(intp, PREFETCH_K * ROW + 16 * n)]),
                                                        i8p), ir.Constant(i32, 0), ir.Constant(i32, 3),
                                        ir.Constant(i32, 1)])
            bv = [builder.load(builder.bitcast(builder.gep(p_k, [ir.Constant(intp, LANES * n)]), vf.as_pointer()),
                               align=4) for n in range(FNR)]
            for r in range(FMR):
                s = builder.load(builder.gep(a_rows[r], [k]))
                splat = builder.shuffle_vector(builder.insert_element(ir.Constant(vf, ir.Undefined), s,
                                                                      ir.Constant(i32, 0)),
                                               ir.Constant(vf, ir.Undefined), splat_idx)
                for n in range(FNR):
                    builder.store(builder.call(fma, [splat, bv[n], builder.load(accs[r][n])]), accs[r][n])

        with cgutils.for_range(builder, kcv, intp=intp) as loop:
            step(loop.index)

        for r in range(FMR):
            for n in range(FNR):
                builder.store(builder.load(accs[r][n]), c_vecs[r][n], align=4)
        return context.get_dummy_value()

    return sig, codegen


def _gathers_are_fast():
    """Whether this CPU's vector gathers run at full speed: Linux's report on Gather Data Sampling
    ("Downfall"), whose microcode mitigation slows every gather several-fold on the Intel CPUs it
    affects (Skylake to Ice Lake / Tiger Lake, most AVX-512 servers before Sapphire Rapids). Where
    Linux does not say, assume the mitigation."""
    try:
        with open("/sys/devices/system/cpu/vulnerabilities/gather_data_sampling") as f:
            return f.read().strip() == "Not affected"
    except OSError:
        return False


FAST_GATHER = _gathers_are_fast()


def _pack_int8_panel_f32(FNR, LANES):
    """pack_int8_panel_f32 for panels of FNR vectors of LANES float32 (see the tile modules below)."""

    @intrinsic
    def pack_int8_panel_f32(typingctx, w32, offsets, k4_0, k4_n, scale, panel, gather):
        """panel[4 (k4 - k4_0) + b, c] = float32(byte b of w32.flat[offsets[c] + k4]) * scale[c]
        for k4_0 <= k4 < k4_0 + k4_n, b < 4, c < FNR * LANES: int8 weight rows (N, K) dequantized and
        transposed into gemm_tile_f32's panel, 4 k at a time.

        w32: the int8 rows as int32 (4 bytes, k = 4 k4 .. 4 k4 + 3, little-endian), C-contiguous;
        offsets: int64 (FNR * LANES,), the element offset of column c's row in w32 (a valid row for every
        c: the caller repeats the last row past N and gives it scale 0); scale: float32 (FNR * LANES,).
        LANES rows' 4 bytes (one gather if `gather`, else LANES loads put together: FAST_GATHER says
        which, for AVX-512) give 4 panel vectors: byte b sign-extended by two shifts. Measured here
        (Emerald Rapids, no gather mitigation), 768 x 3072 weights: 0.35 ms with gathers, 0.55 ms with
        loads that took each column's address out of a vector; with the addresses worked out once, a
        product of 6 rows by the same weights took 0.59 ms with gathers, 0.57 ms with loads.
        """
        sig = types.void(w32, offsets, k4_0, k4_n, scale, panel, gather)

        def codegen(context, builder, signature, args):
            w_arr, o_arr, s_arr, p_arr = (context.make_array(signature.args[i])(context, builder, args[i])
                                          for i in (0, 1, 4, 5))
            k0v, knv = (context.cast(builder, args[i], signature.args[i], types.intp) for i in (2, 3))
            use_gather = context.cast(builder, args[6], signature.args[6], types.boolean)
            intp = context.get_value_type(types.intp)
            f32, vf = _f32_vectors(builder, LANES)
            i1, i32, i64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
            vi, vl = ir.VectorType(i32, LANES), ir.VectorType(i64, LANES)
            ptrs_t = ir.VectorType(i32.as_pointer(), LANES)
            nb = FNR * LANES
            gather = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vi, [ptrs_t, i32, ir.VectorType(i1, LANES), vi]),
                f"llvm.masked.gather.v{LANES}i32.v{LANES}p0i32")
            all_on = ir.Constant(ir.VectorType(i1, LANES), [1] * LANES)

            def splat64(v):
                return builder.shuffle_vector(builder.insert_element(ir.Constant(vl, ir.Undefined), v,
                                                                     ir.Constant(i32, 0)),
                                              ir.Constant(vl, ir.Undefined), ir.Constant(vi, None))

            base = splat64(builder.ptrtoint(w_arr.data, i64))
            o_ptr = builder.bitcast(o_arr.data, vl.as_pointer())
            s_ptr = builder.bitcast(s_arr.data, vf.as_pointer())
            # byte addresses of each column's row; scales: loaded once
            rows = [builder.add(base, builder.shl(builder.load(builder.gep(o_ptr, [ir.Constant(intp, n)]), align=8),
                                                  ir.Constant(vl, [2] * LANES))) for n in range(FNR)]
            scales = [builder.load(builder.gep(s_ptr, [ir.Constant(intp, n)]), align=4) for n in range(FNR)]
            p_base = builder.bitcast(p_arr.data, f32.as_pointer())

            def gather_words(addrs):
                ptrs = builder.inttoptr(addrs, ptrs_t)
                return builder.call(gather, [ptrs, ir.Constant(i32, 4), all_on, ir.Constant(vi, None)])

            # the loads' row pointers, one a column, worked out once: taking them out of `rows` at every k
            # (vector extracts) made the AVX2 packing 0.57 ms instead of 0.36 for 768 x 3072 weights
            w_i8 = builder.bitcast(w_arr.data, ir.IntType(8).as_pointer())
            o_i64 = builder.bitcast(o_arr.data, i64.as_pointer())
            col_ptrs = [builder.gep(w_i8, [builder.shl(builder.load(builder.gep(o_i64, [ir.Constant(intp, c)])),
                                                       ir.Constant(i64, 2))]) for c in range(nb)]

            def words_by_gather(n, step):
                return gather_words(builder.add(rows[n], splat64(step)))

            def words_by_loads(n, step):
                words = ir.Constant(vi, ir.Undefined)
                for c in range(LANES):
                    a = builder.bitcast(builder.gep(col_ptrs[n * LANES + c], [step]), i32.as_pointer())
                    words = builder.insert_element(words, builder.load(a, align=4), ir.Constant(i32, c))
                return words

            def k_loop(load_words):
                with cgutils.for_range(builder, knv, intp=intp) as loop:
                    k = loop.index
                    step = builder.shl(builder.add(k0v, k), ir.Constant(i64, 2))  # bytes into each row
                    p_k = builder.gep(p_base, [builder.mul(k, ir.Constant(intp, 4 * nb))])
                    for n in range(FNR):
                        words = load_words(n, step)
                        for b in range(4):
                            q = builder.ashr(builder.shl(words, ir.Constant(vi, [24 - 8 * b] * LANES)),
                                             ir.Constant(vi, [24] * LANES))
                            v = builder.fmul(builder.sitofp(q, vf), scales[n])
                            dst = builder.gep(p_k, [ir.Constant(intp, b * nb + LANES * n)])
                            builder.store(v, builder.bitcast(dst, vf.as_pointer()), align=4)

            with builder.if_else(use_gather) as (then, otherwise):
                with then:
                    k_loop(words_by_gather)
                with otherwise:
                    k_loop(words_by_loads)
            return context.get_dummy_value()

        return sig, codegen

    return pack_int8_panel_f32



def _pack_int4_panel_f32(FNR, LANES):
    """pack_int4_panel_f32 for panels of FNR vectors of LANES float32 (see the tile modules below)."""

    @intrinsic
    def pack_int4_panel_f32(typingctx, packed, scales, g0, g1, half, j0, panel):
        """panel[(g - g0) 2 half + t, c] = (lo(packed[g half + t, j0 + c]) - 8) * scales[g, j0 + c] and
        panel[(g - g0) 2 half + half + t, c] = (hi(...) - 8) * scales[g, j0 + c], for g0 <= g < g1,
        t < half, c < FNR * LANES: whole groups of int4 weights (K/2, N) dequantized into gemm_tile_f32's
        panel, value for value as int_matmul_ref.dequantize_int4 (the nibble - 8 is exact in float32,
        then one rounding by the scale). packed: 2-D uint8, scales: 2-D float32, both with unit column
        stride; every column j0 .. j0 + FNR LANES - 1 must exist (the caller packs a last, narrower
        panel itself). A vector of LANES bytes a step: numba's loop over the columns of a 16-wide
        AVX2 panel spent more on its slices and alias checks than on the conversions.
        """
        sig = types.void(packed, scales, g0, g1, half, j0, panel)

        def codegen(context, builder, signature, args):
            q_arr, s_arr, p_arr = (context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 1, 6))
            g0v, g1v, hv, j0v = (context.cast(builder, args[i], signature.args[i], types.intp) for i in (2, 3, 4, 5))
            intp = context.get_value_type(types.intp)
            f32, vf = _f32_vectors(builder, LANES)
            i8, i32 = ir.IntType(8), ir.IntType(32)
            vb, vi = ir.VectorType(i8, LANES), ir.VectorType(i32, LANES)
            i8p = i8.as_pointer()
            nb = FNR * LANES
            q_base = builder.gep(builder.bitcast(q_arr.data, i8p), [j0v])
            s_base = builder.gep(builder.bitcast(s_arr.data, i8p), [builder.mul(j0v, ir.Constant(intp, 4))])
            q_stride, s_stride = (builder.extract_value(arr.strides, 0) for arr in (q_arr, s_arr))
            p_base = builder.bitcast(p_arr.data, f32.as_pointer())
            mask, four = ir.Constant(vi, [15] * LANES), ir.Constant(vi, [4] * LANES)
            eight = ir.Constant(vf, [8.0] * LANES)
            two_half = builder.mul(hv, ir.Constant(intp, 2))
            with cgutils.for_range_slice(builder, g0v, g1v, ir.Constant(intp, 1), intp=intp) as (g, _):
                s_row = builder.gep(s_base, [builder.mul(g, s_stride)])
                sv = [builder.load(builder.bitcast(builder.gep(s_row, [ir.Constant(intp, 4 * LANES * n)]),
                                                   vf.as_pointer()), align=4) for n in range(FNR)]
                p_g = builder.gep(p_base, [builder.mul(builder.mul(builder.sub(g, g0v), two_half),
                                                       ir.Constant(intp, nb))])
                with cgutils.for_range(builder, hv, intp=intp) as loop:
                    t = loop.index
                    q_row = builder.gep(q_base, [builder.mul(builder.add(builder.mul(g, hv), t), q_stride)])
                    p_lo = builder.gep(p_g, [builder.mul(t, ir.Constant(intp, nb))])
                    p_hi = builder.gep(p_lo, [builder.mul(hv, ir.Constant(intp, nb))])
                    for n in range(FNR):
                        b = builder.load(builder.bitcast(builder.gep(q_row, [ir.Constant(intp, LANES * n)]),
                                                         vb.as_pointer()), align=1)
                        u = builder.zext(b, vi)
                        for dst, nib in ((p_lo, builder.and_(u, mask)), (p_hi, builder.lshr(u, four))):
                            v = builder.fmul(builder.fsub(builder.uitofp(nib, vf), eight), sv[n])
                            ptr = builder.gep(dst, [ir.Constant(intp, LANES * n)])
                            builder.store(v, builder.bitcast(ptr, vf.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return pack_int4_panel_f32

# ------------------------------------------------ the tile shapes, one per CPU kind
# The weight-only GEMM's driver (int_matmul._int8_gemm_f32 / _int4_gemm_f32) reads its tile shape and
# intrinsics from one of these modules (numba resolves a module's attributes when it compiles), and
# int_matmul compiles the driver once per module, so both tile shapes are there on any CPU.
# AVX-512: 6 rows x 4 zmm (64 columns) = 24 accumulators + 4 panel vectors + a broadcast of the 32.
# AVX2 (16 ymm): 6 rows x 2 ymm (16 columns) = 12 accumulators + 2 panel vectors + a broadcast = 15;
# 4 x 3 (24 columns) would need all 16 (AVX2 has no broadcast operand for an FMA, so the broadcast
# takes a register) and leave LLVM none to spare. 6 x 2 loads 2 panel vectors and 6 broadcasts
# per 12 FMAs, 4 x 3 3 and 4: the same 8 loads a k, and its 16 columns of a panel row are one 64-byte line.
# Panels are 64 columns wide for both (NB): AVX2's 6 rows of x then go through the panel's four
# 16-column tiles one after the other while they are in L1, so that x is read from memory once per
# 64 columns, as with AVX-512, not once per 16 (x outgrows L2 at training batches: 2048 x 512).


def _tile_module(name, MR, NR, LANES, NB):
    """A module holding one tile shape: MR rows x NR vectors of LANES float32 (TW = NR LANES columns),
    in panels of NB columns (NB / TW tiles side by side)."""
    m = types_module.ModuleType(f"{__name__}.f32_{name}", f"The weight-only GEMM's {name} tiles.")
    m.NAME, m.MR, m.NR, m.LANES, m.TW, m.NB = name, MR, NR, LANES, NR * LANES, NB
    m.gemm_tile_f32 = _gemm_tile_f32(MR, NR, LANES, NB)
    # the last M % MR rows: 2- and 4-row tiles, so that at most one row of zeros is multiplied (512 rows
    # in 6-row tiles would otherwise compute 516)
    m.gemm_tile_f32_2, m.gemm_tile_f32_4 = _gemm_tile_f32(2, NR, LANES, NB), _gemm_tile_f32(4, NR, LANES, NB)
    m.pack_int8_panel_f32 = _pack_int8_panel_f32(NB // LANES, LANES)
    m.pack_int4_panel_f32 = _pack_int4_panel_f32(NB // LANES, LANES)
    return m


F32_AVX512 = _tile_module("avx512", 6, 4, 16, 64)
F32_AVX2 = _tile_module("avx2", 6, 2, 8, 64)


def _f32_tiles_choice():
    """Which tiles this CPU gets ("avx512", "avx2", or None: no fused GEMM): MINIGPT_F32_TILES if set
    ("avx512", "avx2" or "off"), else the features numba compiles for (NUMBA_CPU_FEATURES, which
    kernels/__init__.py sets on AVX-512 CPUs, else the host's). AVX-512F for the zmm tiles; AVX2 and
    FMA for the ymm ones."""
    forced = os.environ.get("MINIGPT_F32_TILES", "").strip().lower()
    if forced in ("avx512", "avx2"):
        return forced
    if forced == "off":
        return None
    if forced:
        warnings.warn(f"MINIGPT_F32_TILES={forced!r} is none of avx512, avx2, off: ignored")
    on = _numba_features()
    if "avx512f" in on:
        return "avx512"
    if {"avx2", "fma"} <= on:
        return "avx2"
    return None


F32_TILES = _f32_tiles_choice()
