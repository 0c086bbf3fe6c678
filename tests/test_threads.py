"""One thread budget: --threads N sizes numba's pool and BLAS together; what the bench header reports."""
import os

import numba
import pytest

from minigpt.cli import main
from minigpt.kernels import threads as T


@pytest.fixture
def restore_threads():
    before = numba.get_num_threads(), [b["threads"] for b in T.blas_threads()], dict(os.environ)
    yield
    numba.set_num_threads(before[0])
    if before[1]:
        T._blas_controller().limit(limits=before[1][0])
    os.environ.clear()
    os.environ.update(before[2])


def test_set_threads_sizes_numba_and_blas_and_the_environment(restore_threads):
    env = {}
    T.set_threads(1, env)
    assert numba.get_num_threads() == 1
    assert all(b["threads"] == 1 for b in T.blas_threads())
    assert all(env[v] == "1" for v in T.ENV_VARS)  # what a child process (a tour chapter) inherits
    T.set_threads(1)  # into os.environ: numba must still compile afterwards (it re-reads its settings then)

    @numba.njit
    def fresh(a):
        return a + 1

    assert fresh(1) == 2


def test_a_child_process_gets_the_budget():
    import subprocess
    import sys

    code = "import minigpt.kernels, numba; print(numba.get_num_threads(), numba.config.NUMBA_NUM_THREADS)"
    env = {**os.environ, "MINIGPT_THREADS": "1"}
    env.pop("NUMBA_NUM_THREADS", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", "1"]
    with pytest.raises(ValueError):
        T.set_threads(T.max_threads() + 1, env)
    with pytest.raises(ValueError):
        T.set_threads(0, env)


@pytest.mark.parametrize("bad", ["0", "-1", "100000"])
def test_cli_threads_out_of_range_is_one_line_exit_2(bad, capsys, restore_threads):
    assert main(["eval", "missing.npz", "--threads", bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minigpt: error: --threads") and bad in err[0]


def test_threads_option_on_every_command_that_computes():
    from minigpt.cli import build_parser

    parser = build_parser()
    for argv in (["train"], ["sample", "x.npz"], ["eval", "x.npz"], ["bench"], ["tour"]):
        assert parser.parse_args(argv + ["--threads", "1"]).threads == 1


def test_cli_threads_applies_before_the_command(restore_threads, capsys):
    # eval of a missing file fails after the budget is set: the budget was applied first
    assert main(["eval", "missing.npz", "--threads", "1"]) == 2
    assert numba.get_num_threads() == 1 and os.environ["OPENBLAS_NUM_THREADS"] == "1"


def test_machine_facts_for_the_bench_header():
    cpu, simd = T.simd_features()
    assert cpu and set(simd) <= {name for _, name in T.SIMD_NAMES}
    assert T.numba_threading() in ("omp", "tbb", "workqueue")
    for b in T.blas_threads():
        assert b["library"] and b["threads"] >= 1


def test_full_width_vectors_follow_the_cpu():
    import llvmlite.binding as ll

    import minigpt.kernels  # noqa: F401  (decides before numba compiles anything)

    wide = ll.get_host_cpu_features().get("avx512f", False)
    features = os.environ.get("NUMBA_CPU_FEATURES", "")
    # with AVX-512: LLVM's prefer-256-bit tuning switched off, in numba's config too; without: left alone
    if wide:
        assert features.endswith(",-prefer-256-bit") and numba.core.config.CPU_FEATURES == features
    else:
        assert "-prefer-256-bit" not in features
