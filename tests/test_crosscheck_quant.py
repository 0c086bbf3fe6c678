"""minigpt's quantizers against references nobody here wrote: the gguf
package's Q8_0 / Q4_0 quantizers (llama.cpp's), torch.ao's observers, and
torch's fake quantization with its autograd gradient.

Needs the crosscheck extra (torch, gguf); skipped otherwise (a failure under
MINIGPT_REQUIRE_CROSSCHECK=1). Run with -s to see the measured differences.
"""
import numpy as np
import pytest

from crosscheck_support import need

torch = need("torch")
gguf = need("gguf")

from gguf.quants import dequantize as gguf_dequantize  # noqa: E402
from gguf.quants import quantize as gguf_quantize  # noqa: E402
from torch.ao.quantization import (  # noqa: E402
    MinMaxObserver as TorchMinMax,
    MovingAverageMinMaxObserver as TorchMovingAverage,
    PerChannelMinMaxObserver as TorchPerChannel,
)

from minigpt.kernels import block_formats as B  # noqa: E402
from minigpt.kernels.quantizer import int_range  # noqa: E402
from minigpt.quant.observers import MinMaxObserver, MovingAverageMinMaxObserver  # noqa: E402
from minigpt.quant.qat import fake_quant_backward, fake_quant_forward  # noqa: E402

GGUF_TYPES = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}


def awkward_tensors():
    """Rows of 256 values: scales from 1e-6 to 1e4 (float16 subnormal and large d),
    all-zero, constant, one outlier, exact halves (rounding ties), both signs of the extreme."""
    rng = np.random.default_rng(0)
    out = [(rng.standard_normal((8, 256)) * 10.0 ** e).astype(np.float32) for e in range(-6, 5)]
    t = rng.standard_normal((6, 256)).astype(np.float32)
    t[0] = 0.0
    t[1] = 3.0
    t[2, 17] = 500.0
    t[3] = np.round(t[3] * 2) / 2  # halves
    t[4, :32] = np.arange(32) - 16.0  # -16..15: Q4_0's m is -16, d = 2
    t[5, :32] = 16.0 - np.arange(32)  # 16..-15: m = +16, d = -2
    out.append(t)
    out.append((np.arange(-127, 129) / 127.0).astype(np.float32)[None, :])  # Q8_0 ties at every step
    return out


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
def test_blocks_are_byte_identical_to_gguf(fmt):
    for x in awkward_tensors():
        ours = B.quantize_blocks(x, fmt)
        theirs = gguf_quantize(x, GGUF_TYPES[fmt])
        assert ours.dtype == theirs.dtype == np.uint8 and ours.shape == theirs.shape
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_array_equal(B.dequantize_blocks(ours, fmt), gguf_dequantize(theirs, GGUF_TYPES[fmt]))
    assert B.BLOCK_BYTES[fmt] == gguf.GGML_QUANT_SIZES[GGUF_TYPES[fmt]][1]
    assert B.BLOCK == gguf.GGML_QUANT_SIZES[GGUF_TYPES[fmt]][0]


def _torch_observer(cls, bits, symmetric, **kw):
    q_min, q_max = int_range(bits, symmetric)
    if symmetric:
        scheme = torch.per_channel_symmetric if cls is TorchPerChannel else torch.per_tensor_symmetric
        return cls(dtype=torch.qint8, qscheme=scheme, quant_min=q_min, quant_max=q_max, **kw)
    scheme = torch.per_channel_affine if cls is TorchPerChannel else torch.per_tensor_affine
    return cls(dtype=torch.quint8, qscheme=scheme, quant_min=q_min, quant_max=q_max, **kw)


def _batches(seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((4, 7, 16)) * (1 + i) + 0.3 * i).astype(np.float32) for i in range(4)]


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_min_max_observer_equals_torch(bits, symmetric):
    ours, theirs = MinMaxObserver(bits, symmetric), _torch_observer(TorchMinMax, bits, symmetric)
    for x in _batches(bits):
        ours.update(x)
        theirs(torch.from_numpy(x))
    s, z = ours.scale_zero_point()
    ts, tz = theirs.calculate_qparams()
    assert s.dtype == np.float32 and float(s) == float(ts) and int(z) == int(tz)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_per_channel_observer_equals_torch(bits, symmetric):
    ours, theirs = MinMaxObserver(bits, symmetric, axis=-1), _torch_observer(TorchPerChannel, bits, symmetric,
                                                                             ch_axis=2)
    for x in _batches(10 + bits):
        ours.update(x)
        theirs(torch.from_numpy(x))
    s, z = ours.scale_zero_point()
    ts, tz = theirs.calculate_qparams()
    np.testing.assert_array_equal(s, ts.numpy())
    np.testing.assert_array_equal(z, tz.numpy())


@pytest.mark.parametrize("symmetric", [False, True])
def test_moving_average_observer_equals_torch(symmetric):
    ours = MovingAverageMinMaxObserver(8, symmetric, averaging_constant=0.1)
    theirs = _torch_observer(TorchMovingAverage, 8, symmetric, averaging_constant=0.1)
    for x in _batches(3):
        ours.update(x)
        theirs(torch.from_numpy(x))
    s, z = ours.scale_zero_point()
    ts, tz = theirs.calculate_qparams()
    # the running min/max are the same float32 recurrence in both
    assert float(s) == float(ts) and int(z) == int(tz)
    print(f"\nmoving average scale: ours {float(s)!r}, torch {float(ts)!r}")


def _ties_differ(x, s):
    """Where round(x / s) (ours: the formula) and round(x * (1 / s)) (torch's kernels
    multiply by the reciprocal) differ: only values within an ulp of a rounding tie."""
    return np.rint(x / s) != np.rint(x * (np.float32(1) / s))


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_fake_quantize_per_tensor_and_its_gradient_equal_torch(bits, symmetric):
    rng = np.random.default_rng(bits)
    x = (rng.standard_normal(20000) * 2).astype(np.float32)
    lo, hi = np.float32(-1.5), np.float32(2.25)  # a clipped range: both clamps occur
    ours, inside = fake_quant_forward(x, bits, symmetric, lo=lo, hi=hi)
    obs = MinMaxObserver(bits, symmetric).update(np.array([lo, hi]))
    s, z = obs.scale_zero_point()
    q_min, q_max = int_range(bits, symmetric)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.fake_quantize_per_tensor_affine(tx, float(s), int(z), q_min, q_max)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    ty.backward(torch.from_numpy(dy))
    same = ~_ties_differ(x, s)
    print(f"\n{bits} bits: {int((~same).sum())} of {x.size} values sit on a rounding tie")
    assert same.mean() > 0.999
    np.testing.assert_array_equal(ours[same], ty.detach().numpy()[same])
    np.testing.assert_array_equal(fake_quant_backward(dy, inside)[same], tx.grad.numpy()[same])
    assert 0 < inside.mean() < 1  # the clamp and the pass-through both tested


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [3, 8])
def test_fake_quantize_per_channel_and_its_gradient_equal_torch(bits, symmetric):
    rng = np.random.default_rng(20 + bits)
    w = (rng.standard_normal((48, 10)) * rng.uniform(0.1, 3, 10)).astype(np.float32)  # (K, N)
    lo, hi = w.min(axis=0) * 0.7, w.max(axis=0) * 0.8  # clipped per output channel
    ours, inside = fake_quant_forward(w, bits, symmetric, axis=1, lo=lo, hi=hi)
    obs = MinMaxObserver(bits, symmetric, axis=1).update(np.stack([lo, hi]))
    s, z = obs.scale_zero_point()
    q_min, q_max = int_range(bits, symmetric)
    tw = torch.tensor(w, requires_grad=True)
    ty = torch.fake_quantize_per_channel_affine(tw, torch.from_numpy(s), torch.from_numpy(z), 1, q_min, q_max)
    dy = rng.standard_normal(w.shape).astype(np.float32)
    ty.backward(torch.from_numpy(dy))
    same = ~_ties_differ(w, s[None, :])
    assert same.mean() > 0.99
    np.testing.assert_array_equal(ours[same], ty.detach().numpy()[same])
    np.testing.assert_array_equal(fake_quant_backward(dy, inside)[same], tw.grad.numpy()[same])
    assert 0 < inside.mean() < 1
