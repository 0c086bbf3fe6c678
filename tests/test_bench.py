"""minigpt bench: the CLI hook, the table and the JSON (timings are not asserted)."""
import json
import re

import numpy as np
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
    # header line, blank, title, column names, rule, one line per row
    assert "threads" in table and "GOPS" in table and len(table.splitlines()) == len(rows) + 5
    _check_table_layout(table)


def _tables(text):
    """The titled tables of format_table's output: [(title, lines)], header line skipped."""
    blocks = text.split("\n\n")[1:]
    return [(b.splitlines()[0], b.splitlines()[1:]) for b in blocks]


def _check_table_layout(text):
    """Every table: columns line up under the rule line, one speed-up direction, baseline named."""
    assert "ratio" not in text and "time /" not in text  # the old mixed directions
    for title, lines in _tables(text):
        names, rule, body = lines[0], lines[1], lines[2:]
        assert set(rule) <= {"-", " "} and body
        # column spans are the dash runs of the rule; between them every line has spaces
        spans = [m.span() for m in re.finditer(r"-+", rule)]
        for line in [names, *body]:
            assert len(line) <= len(rule), f"{line!r} overflows its table"
            for (_, end), (start, _) in zip(spans, spans[1:]):
                assert line[end:start].strip() == "", f"{line!r} crosses a column gap in {title!r}"
        # the one ratio column: "speed-up", every value N.NNx, over the baseline the title names
        assert re.search(r"; speed-up = x faster than \S.* \(higher is better\)$", title), title
        [(start, end)] = [(a, b) for a, b in spans if names[a:b].strip() == "speed-up"]
        for line in body:
            assert re.fullmatch(r"\d+\.\d\dx", line[start:end].strip()), line


def _fake_rows():
    """Rows of every section's shape, with long names (no timing: layout only)."""
    rows = []
    for section in ("attention fwd", "attention fwd+bwd"):
        for T in (128, 1024):
            for impl, ms, peak in (("numpy", 18.1, 16.0), ("numba", 3.2, 4.0), ("torch sdpa", 6.9, None)):
                rows.append(bench._row(section, "B=16, 4 heads, head size 32, float32", f"T={T}", impl, ms / 1e3,
                                       "numpy", 18.1 / ms, peak=peak))
    rows.append(bench._row("int matmul", "GOPS", "gpt2 decode 768x3072 (M=1)", "torch dynamic int8 Linear",
                           1e-4, "numpy float32 @", 1.27, rate=30.4, unit="GOPS"))
    about = "GPT-2-small shape (12L 768w, vocab 96), KV cache, batch 1, 64 tokens"
    for impl, s in (("float32 (325 MB)", 0.68), ("int8 weights (83 MB)", 0.30), ("int4 weights (52 MB)", 0.54)):
        rows.append(bench._row("generate", about, "", impl, s, "float32", 0.68 / s, rate=64 / s, unit="tok/s"))
    return rows


def test_tables_line_up_and_speak_one_direction():
    info = {"cpu": "Some CPU (family 6 model 207)", "cores": 2, "threads": 2, "blas_threads": "default",
            "numpy": "2", "numba": "0.6", "torch": "2.13", "quick": False}
    text = bench.format_table(info, _fake_rows())
    assert [t.split(":")[0] for t, _ in _tables(text)] == ["attention fwd", "attention fwd+bwd", "int matmul",
                                                           "generate"]
    _check_table_layout(text)
    gen = dict(_tables(text))[[t for t, _ in _tables(text) if t.startswith("generate")][0]]
    assert "case" not in gen[0]  # one case per table: it is in the title, not a column
    assert "x faster than float32" in text and "x faster than numpy float32 @" in text


def test_header_names_cpu_model_and_cores(tmp_path):
    info, _ = bench.run_bench(sections=(), log=None)
    head = bench.format_table(info, []).splitlines()[0]
    assert f"{info['cpu']}, {info['cores']} cores" in head and info["cores"] >= 1
    # SIMD the kernels may use, numba's threading layer, the BLAS library and its threads: in the line and the JSON
    assert all(f in head for f in info["simd"]) and f"numba ({info['numba_threading']})" in head
    assert f"BLAS threads {info['blas_threads']}" in head
    assert all(b["library"] and b["threads"] >= 1 for b in info["blas"])
    json.dumps(info)  # --json records all of it
    fake = tmp_path / "cpuinfo"
    cpu = "model name\t: Fancy  CPU 9000\ncpu family\t: 6\nmodel\t\t: 207\nphysical id\t: 0\ncore id\t: {}\n" \
          "flags\t\t: fpu avx512_vnni\n"
    fake.write_text("\n".join(cpu.format(i) for i in range(3)))
    assert bench.cpu_model(fake) == "Fancy CPU 9000 (family 6 model 207), AVX-512 VNNI"
    assert bench.cpu_cores(fake) == 3
    missing = tmp_path / "none"  # no /proc: the platform's name and os.cpu_count()
    assert bench.cpu_model(missing) and bench.cpu_cores(missing) >= 1


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
    assert {"attention fwd", "attention fwd+bwd", "int matmul", "sparse matvec", "sparse matmul", "structured",
            "train step", "generate"} <= sections
    assert "minigpt bench" in capsys.readouterr().out


def test_crossover_interpolates_where_sparse_starts_to_win():
    # halfway in log(speed-up) between 0.5x at 50% and 2x at 70%: 60%
    s, text = bench.crossover([(0.7, 2.0), (0.5, 0.5)])
    assert abs(s - 0.6) < 1e-12 and text == "~60%"
    # a win that does not last is not the crossover: the last run of wins starts at 80%
    s, _ = bench.crossover([(0.5, 1.2), (0.6, 0.9), (0.8, 1.5)])
    assert abs(s - (0.6 + 0.2 * np.log(1 / 0.9) / np.log(1.5 / 0.9))) < 1e-12
    assert bench.crossover([(0.5, 1.1), (0.9, 3.0)]) == (None, "below 50%")
    assert bench.crossover([(0.5, 0.2), (0.9, 0.8)]) == (None, "above 90%")


def test_sparse_and_structured_sections(monkeypatch):
    # the same code on small shapes: layout, labels and the crossover in the title
    monkeypatch.setattr(bench, "_torch", lambda: None)
    monkeypatch.setattr(bench, "SPARSE_SHAPE", (64, 96))
    monkeypatch.setattr(bench, "SPARSE_BATCH", 70)
    monkeypatch.setattr(bench, "STRUCTURED_BLOCK", {"n_head": 4, "n_embd": 64})
    monkeypatch.setattr(bench, "STRUCTURED_TOKENS", {True: (1, 32)})
    info, rows = bench.run_bench(quick=True, sections=("sparse", "structured"), log=None)
    text = bench.format_table(info, rows)
    _check_table_layout(text)
    titles = [t for t, _ in _tables(text)]
    assert [t.split(":")[0] for t in titles] == ["sparse matvec", "sparse matmul", "structured"]
    assert all(re.search(r"sparse faster from (~\d+%|below \d+%|above \d+%) sparsity", t) for t in titles[:2])
    for section in ("sparse matvec", "sparse matmul"):
        cases = [r for r in rows if r["section"] == section]
        assert [r["impl"] for r in cases[:1]] == ["numpy float32 @ (dense)"] and cases[0]["speedup"] == 1.0
        assert all(re.fullmatch(r"numba CSR, \d threads? \(\d+\.\d MB\)", r["impl"]) for r in cases[1::2])
    structured = [r for r in rows if r["section"] == "structured"]
    assert [r["case"] for r in structured[::2]] == ["MLP, numpy ops", "MLP, numba ops", "attention, numpy ops",
                                                    "attention, numba ops"]
    assert {r["impl"] for r in structured[1::2]} == {"half the neurons removed (128)", "half the heads removed (2)"}
    assert all(r["speedup"] == 1.0 for r in structured[::2])


def test_readme_bench_output_is_in_the_commands_layout():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```text\n")[1:]]
    [text] = [b for b in blocks if b.startswith("minigpt bench on ")]
    head = text.splitlines()[0]
    assert re.search(r"^minigpt bench on .+, \d+ cores( \([^)]*\))?; \d+ threads? for ", head)  # CPU model and cores named
    tables = _tables(text.rstrip("\n"))
    assert {t.split(":")[0] for t, _ in tables} >= {"attention fwd", "int matmul", "train step", "generate"}
    _check_table_layout(text.rstrip("\n"))


def test_l2_cache_bytes_reads_the_level_2_entry(tmp_path):
    # the cold-cache eviction buffer is sized from the CPU's own L2, as the kernel reports it
    for index, (level, size) in enumerate([("1", "48K"), ("2", "2048K"), ("3", "266240K")]):
        d = tmp_path / f"index{index}"
        d.mkdir()
        (d / "level").write_text(level + "\n")
        (d / "size").write_text(size + "\n")
    assert bench.l2_cache_bytes(str(tmp_path)) == 2048 * 1024
    assert bench.l2_cache_bytes(str(tmp_path / "missing")) == 4 * 2**20  # no sysfs (not Linux): a default


def test_train_step_and_kernels_in_step_sections(monkeypatch):
    # the same code on a tiny shape: both training shapes, every numba op timed inside the step and alone
    monkeypatch.setattr(bench, "_torch", lambda: None)
    monkeypatch.setattr(bench, "TRAIN_SHAPES", {"base": ("tiny", 16, 2), "small": ("tiny", 8, 3)})
    info, rows = bench.run_bench(quick=True, sections=("train", "kernels_in_step"), log=None)
    _check_table_layout(bench.format_table(info, rows))
    train = [r for r in rows if r["section"] == "train step"]
    assert [(r["case"].split(":")[0], r["impl"]) for r in train] == [
        (s, f"minigpt {b}") for s in ("base", "small") for b in ("numpy", "numba")]
    assert "T=8 B=3" in train[-1]["case"] and all(r["rate"] > 0 for r in train)
    inside = [r for r in rows if r["section"] == "kernels in step"]
    ops = {r["case"].split(" (")[0] for r in inside}
    assert ops == {f"{op} {w}" for op in bench.KERNEL_OPS for w in ("forward", "backward")}
    assert [r["impl"] for r in inside[:3]] == ["alone", "inside the training step", "alone, caches evicted"]
    assert all(r["ms"] > 0 for r in inside)
    from minigpt import model, ops

    assert model.op_table is ops.op_table  # the timing wrappers are gone afterwards


def test_sections_option_runs_only_those_in_the_run_order(monkeypatch, capsys):
    asked = []

    def fake_run_bench(quick=False, sections=bench.SECTIONS, log=None):
        asked.append(sections)
        return {"cpu": "x", "cores": 2, "threads": 1}, []

    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    monkeypatch.setattr(bench, "format_table", lambda info, rows: "table")
    assert main(["bench", "--sections", "generate", "attention"]) == 0
    assert main(["bench"]) == 0
    assert asked == [("attention", "generate"), bench.SECTIONS]


def test_sections_option_refuses_unknown_names_and_train_to(capsys):
    assert main(["bench", "--sections", "atention"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'atention'" in err[0]
    assert main(["bench", "--sections", "train", "--train-to", "2.0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--sections" in err[0] and "--train-to" in err[0]
