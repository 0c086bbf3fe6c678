"""minigpt bench: the CLI hook, the table and the JSON (timings are not asserted)."""
import json

import pytest

from minigpt import bench
from minigpt.cli import build_parser, main


def test_cli_has_bench_with_quick_and_json():
    args = build_parser().parse_args(["bench", "--quick", "--json", "out.json"])
    assert args.quick and args.json == "out.json" and args.func is bench.cmd_bench


def test_int_matmul_section_table_and_json(tmp_path, monkeypatch):
    # one cheap section stands in for the whole run
    monkeypatch.setattr(bench, "_torch", lambda: None)  # same code path with or without torch
    info, rows = bench.run_bench(quick=True, sections=("int_matmul",), log=None)
    assert info["torch"] is None and info["threads"] >= 1
    impls = {r["impl"] for r in rows}
    assert {"numpy float32 @", "numba int8 x int8", "numba int8 weights", "numba int4 weights"} <= impls
    assert all(r["ms"] > 0 and r["rate"] > 0 for r in rows)
    table = bench.format_table(info, rows)
    assert "threads" in table and "GOPS" in table and len(table.splitlines()) == len(rows) + 4


def test_peak_memory_sees_a_big_allocation():
    import numpy as np

    mb = bench.peak_extra_mb(lambda: np.ones(64 * 2**20 // 8).sum())  # 64 MB of float64
    if mb is None:
        pytest.skip("no /proc/self/clear_refs here")
    assert 48 < mb < 200


@pytest.mark.slow
def test_quick_run_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    sections = {r["section"] for r in data["rows"]}
    assert {"attention fwd", "attention fwd+bwd", "int matmul", "train step", "generate"} <= sections
    assert "minigpt bench" in capsys.readouterr().out
