"""Shared test helpers.

``fd_errors`` collects the largest finite-difference relative error seen per
op during a run; ``pytest -v`` prints the table at the end, so the numbers
quoted in reports can be reproduced with
    python -m pytest -v tests/test_layers.py tests/test_model.py
"""
import pytest

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
