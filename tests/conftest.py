"""Shared test helpers.

``fd_errors`` collects the largest finite-difference relative error seen per
op during a run; ``pytest -v`` prints the table at the end, so the numbers
quoted in reports can be reproduced with
    python -m pytest -v tests/test_layers.py tests/test_model.py
"""
import os

# The tests multiply small matrices, where OpenBLAS's worker threads cost more
# than they save, and on a busy 2-core machine they wait on each other: a tiny
# model's forward took 1.27 s with the default threads and 0.02 s with one
# (measured under load ~9 on a 2-core Xeon). Read when NumPy loads OpenBLAS,
# so set before anything imports NumPy; the numba kernels keep their threads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402

_FD_ERRORS: dict[str, float] = {}


class _Recorder:
    def record(self, op: str, error: float) -> None:
        """Keep the worst (largest) relative error seen for op."""
        _FD_ERRORS[op] = max(error, _FD_ERRORS.get(op, 0.0))


@pytest.fixture
def fd_errors():
    return _Recorder()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _FD_ERRORS or config.option.verbose < 1:
        return
    terminalreporter.section("finite-difference max relative error per op")
    for op, err in sorted(_FD_ERRORS.items()):
        terminalreporter.write_line(f"{op:32s} {err:.2e}")


_PNG = b"\x89PNG\r\n\x1a\n"
_ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


@pytest.fixture
def run_chapter(tmp_path, tmp_path_factory, monkeypatch, capsys):
    """run_chapter(stem, figures) runs chapters/<stem>.py in fast mode, in
    process, and returns (its module globals, what it printed), after checking
    that it wrote each named figure as a small PNG. Figures go to a temporary
    directory; the fast models are cached once per test session and shared."""
    import runpy

    def run(stem, figures):
        monkeypatch.setenv("MINIGPT_FAST", "1")
        monkeypatch.setenv("MINIGPT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "minigpt-cache"))
        monkeypatch.setenv("MINIGPT_FIGURES_DIR", str(tmp_path / "figs"))
        monkeypatch.setenv("MPLBACKEND", "Agg")
        g = runpy.run_path(str(_ROOT / "chapters" / f"{stem}.py"), run_name="__main__")
        out = capsys.readouterr().out
        for name in figures:
            png = tmp_path / "figs" / f"{name}.png"
            assert png.read_bytes()[:8] == _PNG, name
            assert png.stat().st_size < 150_000, name  # committed figures stay small
        return g, out

    return run
