"""minigpt.kernels.warm_up: compiles what the model uses, says so only on a cold cache."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from minigpt import kernels
from minigpt.kernels import attention as katt
from minigpt.kernels import gelu as kgelu
from minigpt.kernels import layernorm as kln
from minigpt.kernels.warmup import run_announced
from minigpt.layers import attention as ratt
from minigpt.layers import gelu as rgelu
from minigpt.layers import layernorm as rln

DISPATCHERS = [katt._forward_kernel, katt._backward_kernel, katt._decode_kernel, katt._decode_kernel_serial,
               kgelu._gelu_forward_kernel,
               kgelu._gelu_forward_kernel_serial,
               kgelu._gelu_backward_kernel, kln._forward_kernel, kln._backward_kernel,
               kln._forward_kernel_serial, kln._backward_kernel_serial]
# kernels vs references: other summation orders and a polynomial exp, so a
# few hundred ulps of the values' size in float32 and far below 1e-10 in float64
TOL = {"float32": 1e-4, "float64": 1e-10}


def _close(got, want, dtype):
    assert got.dtype == want.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype] * (1 + np.abs(want).max()))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_warm_up_then_kernels_agree_with_references(dtype):
    seconds = kernels.warm_up(dtype, verbose=False)
    assert isinstance(seconds, float) and seconds >= 0
    for disp in DISPATCHERS:  # one compiled (or loaded) signature of this dtype each
        assert any(str(sig[0].dtype) == dtype for sig in disp.signatures), disp
    rng = np.random.default_rng(3)
    q, k, v, g = (rng.standard_normal((2, 3, 7, 5)).astype(dtype) for _ in range(4))  # (B, H, T, D)
    out, cache = katt.attention_forward(q, k, v)
    ref, ref_cache = ratt.causal_attention_forward(q, k, v)
    _close(out, ref, dtype)
    for a, b in zip(katt.attention_backward(g, cache), ratt.causal_attention_backward(g, ref_cache)):
        _close(a, b, dtype)
    x, g = (rng.standard_normal((2, 7, 12)).astype(dtype) for _ in range(2))  # (B, T, C)
    out, cache = kgelu.gelu_forward(x)
    ref, ref_cache = rgelu.gelu_forward(x)
    _close(out, ref, dtype)
    _close(kgelu.gelu_backward(g, cache), rgelu.gelu_backward(g, ref_cache), dtype)
    gamma, beta = (rng.standard_normal(12).astype(dtype) for _ in range(2))
    out, cache = kln.layernorm_forward(x, gamma, beta)
    ref, ref_cache = rln.layernorm_forward(x, gamma, beta)
    _close(out, ref, dtype)
    for a, b in zip(kln.layernorm_backward(g, cache), rln.layernorm_backward(g, ref_cache)):
        _close(a, b, dtype)


MODEL_AFTER_WARM_UP = """
import numpy as np
from minigpt.config import GPTConfig
from minigpt.kernels import attention as katt, gelu as kgelu, layernorm as kln, warm_up
from minigpt.model import GPT

dispatchers = [katt._forward_kernel, katt._backward_kernel, kgelu._gelu_forward_kernel,
               kgelu._gelu_backward_kernel, kln._forward_kernel, kln._backward_kernel,
               kln._forward_kernel_serial, kln._backward_kernel_serial]
warm_up("float32", verbose=False)
before = [set(d.signatures) for d in dispatchers]
cfg = GPTConfig(vocab_size=11, block_size=9, n_layer=2, n_head=2, n_embd=8)
model = GPT(cfg, seed=0, backend="numba")
x = np.random.default_rng(0).integers(0, 11, (3, 9))
model.training = True
model.forward(x, x)
model.backward()
model.generate([1, 2], 3, temperature=0)  # the KV cache's decoding steps: T_q = 1 < T_k
new = [sorted(map(str, set(d.signatures) - b)) for d, b in zip(dispatchers, before)]
assert all(b for b in before), before
assert not any(new), new
"""


def test_warm_up_covers_every_kernel_signature_the_model_uses():
    # a fresh process, so that no earlier test has compiled what the model needs
    kernels.warm_up("float32", verbose=False)  # fills the cache: the child only loads
    proc = subprocess.run([sys.executable, "-c", MODEL_AFTER_WARM_UP], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr  # training and sampling compiled nothing new


def test_warm_up_rejects_other_dtypes():
    with pytest.raises(ValueError, match="float32 or float64"):
        kernels.warm_up("int8")


TOY_KERNEL = """
from numba import njit


@njit(cache=True)
def add_one(x):
    return x + 1
"""


def _run_toy(tmp_path, cache_dir, verbose=True):
    """A fresh process runs a cached toy kernel through run_announced; returns its stderr."""
    (tmp_path / "toy_kernel.py").write_text(TOY_KERNEL)
    code = textwrap.dedent(f"""
        from minigpt.kernels.warmup import run_announced
        import toy_kernel
        seconds = run_announced(lambda: toy_kernel.add_one(1.5), "toy: compiling ...", verbose={verbose})
        assert seconds >= 0
    """)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_message_only_when_numba_cache_is_cold(tmp_path):
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    cold = _run_toy(tmp_path, cache)
    assert "toy: compiling ..." in cold and "done in" in cold
    assert any(cache.rglob("*.nbi"))  # numba wrote its index for the signature
    assert "compiling" not in _run_toy(tmp_path, cache)  # warm: loaded, not compiled, silent
    assert _run_toy(tmp_path, tmp_path / "other-cache", verbose=False) == ""  # cold but quiet


def test_run_announced_in_process_prints_once_and_only_for_compiles(capsys):
    from numba import njit

    @njit  # not cached: compiled on its first call in this process, not on the second
    def twice(x):
        return 2 * x

    run_announced(lambda: (twice(1), twice(2)), "compiling twice ...")
    err = capsys.readouterr().err
    assert err.count("compiling twice ...") == 1 and err.rstrip().endswith(" s")
    run_announced(lambda: twice(3), "compiling twice ...")
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_real_kernels_cold_then_warm(tmp_path):
    """The whole float32 set from an empty cache (about 20 s here), then from the cache."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    code = "import minigpt.kernels as k; k.warm_up('float32')"
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
            for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr + runs[1].stderr
    assert "minigpt: compiling float32 kernels (first run only, ~" in runs[0].stderr
    assert "compiling" not in runs[1].stderr
