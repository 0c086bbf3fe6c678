"""`minigpt assignment`: one-line errors with exit status 2, release/check/grade
output and the autograder results JSON, the handout (a jupytext notebook that
runs in a solved workspace) and plugged() putting a student's code inside
minigpt and taking it out again."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minigpt.classroom import ASSIGNMENTS, get, plugged, release
from minigpt.classroom.runner import load_student
from minigpt.classroom.workspace import module_text
from minigpt.cli import main

SEED = "11"


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, words", [
    (["assignment", "release", "nope", "X"], "unknown assignment 'nope'; choose one of backprop"),
    (["assignment", "release", "backprop", "FULL"], "exists and is not an empty directory"),
    (["assignment", "check", "EMPTY"], "is not an assignment workspace (no assignment.json)"),
    (["assignment", "grade", "EMPTY"], "is not an assignment workspace"),
    (["assignment", "check", "WS", "--part", "softmax"], "has no part 'softmax'; its parts: layernorm"),
    (["assignment", "check", "WS", "--timeout", "0"], "--timeout must be a positive number"),
    (["assignment", "grade", "WS", "--assignment", "training"], "holds assignment 'backprop', not 'training'"),
    (["assignment", "grade", "WS", "MISSING"], "MISSING is not a directory"),
])
def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, words):
    (tmp_path / "FULL").mkdir()
    (tmp_path / "FULL" / "notes.txt").write_text("mine")
    (tmp_path / "EMPTY").mkdir()
    release("backprop", tmp_path / "WS")
    argv = [str(tmp_path / a) if a in ("X", "FULL", "EMPTY", "WS", "MISSING") else a for a in argv]
    code, out, err = _run(argv, capsys)
    assert code == 2 and out == ""
    assert err.startswith("minigpt: error: ") and err.count("\n") == 1 and words in err, err


def test_release_then_check(tmp_path, capsys):
    d = tmp_path / "hw1"
    code, out, _ = _run(["assignment", "release", "backprop", str(d)], capsys)
    assert code == 0 and "hw_backprop.py" in out and "handout_backprop.py" in out
    assert sorted(p.name for p in d.iterdir()) == ["assignment.json", "handout_backprop.py", "hw_backprop.py",
                                                   "test_hw_backprop.py"]
    manifest = json.loads((d / "assignment.json").read_text())
    assert manifest["assignment"] == "backprop" and manifest["points"] == 16
    assert [p["points"] for p in manifest["parts"]] == [4, 3, 4, 5]
    code, out, _ = _run(["assignment", "check", str(d), "--seed", SEED], capsys)
    assert code == 1  # not full marks yet
    assert f"backprop: 0/16 points (seed {SEED})" in out and "not written yet (NotImplementedError)" in out

    solved = release("backprop", tmp_path / "solved", solutions=True)
    code, out, _ = _run(["assignment", "check", str(solved), "--part", "gelu"], capsys)
    assert code == 0 and "3/3" in out


def test_grade_many_submissions_into_a_table_and_results_files(tmp_path, capsys):
    a = get("training")
    release("training", tmp_path / "alice", solutions=True)
    bob = release("training", tmp_path / "bob", solutions=True)
    text = module_text(a, solutions=True).replace("return lr * (step + 1) / warmup_steps", "return lr")
    (bob / "hw_training.py").write_text(text)
    release("training", tmp_path / "carol")
    out_dir = tmp_path / "results"
    code, out, _ = _run(["assignment", "grade", str(tmp_path / "alice"), str(bob), str(tmp_path / "carol"),
                         "--json", str(out_dir), "--seed", SEED], capsys)
    assert code == 0
    table = out[out.index("submission"):].strip().split("\n")
    assert table[0].split() == ["submission", "adamw", "schedule", "clipping", "total"]
    assert table[1].split() == ["alice", "7/7", "3/3", "3/3", "13/13"]
    assert table[2].split() == ["bob", "7/7", "2/3", "3/3", "12/13"]
    assert table[3].split() == ["carol", "0/7", "0/3", "0/3", "0/13"]
    assert "warm-up steps 0.." in out  # bob's report says what was compared
    files = sorted(p.name for p in out_dir.iterdir())
    assert files == ["alice.json", "bob.json", "carol.json"]
    bob_json = json.loads((out_dir / "bob.json").read_text())
    assert bob_json["score"] == 12
    assert [(t["score"], t["max_score"]) for t in bob_json["tests"]] == [(7, 7), (2, 3), (3, 3)]
    assert all(set(t) == {"name", "score", "max_score", "output"} for t in bob_json["tests"])
    assert "FAIL warm-up (0/1)" in bob_json["tests"][1]["output"]


def test_grade_a_bare_submission_as_a_named_assignment(tmp_path, capsys):
    """What a grading platform hands over: the student's module alone, no manifest."""
    sub = tmp_path / "submission"
    sub.mkdir()
    (sub / "hw_distillation.py").write_text(module_text(get("distillation"), solutions=True))
    results = tmp_path / "results" / "results.json"
    code, out, _ = _run(["assignment", "grade", str(sub), "--assignment", "distillation", "--json", str(results)],
                        capsys)
    assert code == 0
    data = json.loads(results.read_text())
    assert set(data) == {"score", "output", "execution_time", "tests"}  # keys Gradescope's format knows
    assert data["score"] == data["tests"][0]["max_score"] == 10 and len(data["tests"]) == 1
    empty = tmp_path / "nothing"
    empty.mkdir()
    code, out, _ = _run(["assignment", "grade", str(empty), "--assignment", "distillation"], capsys)
    assert code == 0 and "hw_distillation.py is missing" in out and "0/10" in out


def test_the_module_entry_point_prints_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "minigpt", "assignment", "release", "nope", str(tmp_path / "x")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("minigpt: error: unknown assignment")
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("name", list(ASSIGNMENTS))
def test_the_handout_is_a_notebook_with_every_part(tmp_path, name):
    jupytext = pytest.importorskip("jupytext")
    a = get(name)
    d = release(name, tmp_path / "ws")
    nb = jupytext.read(d / f"handout_{name}.py")
    md = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert nb.cells[0].source.startswith(f"# {a.title} ({a.points} points)")
    for i, p in enumerate(a.parts, 1):
        assert f"## Part {i}: {p.title} ({p.points} points)" in md
        assert f'check("{p.name}")' in code
    assert f"plugged({a.module})" in code
    chapter_heads = [s for p in a.parts for s in p.sections] + list(a.intro_sections)
    assert all(h in md for h in chapter_heads), "a chapter section the handout quotes went missing"


@pytest.mark.parametrize("name", [n if n in ("backprop", "training") else pytest.param(n, marks=pytest.mark.slow)
                                  for n in ASSIGNMENTS])  # the two that train run by default
def test_the_handout_runs_in_a_solved_workspace(tmp_path, name):
    """Every check cell scores full marks and the plug-in cell runs minigpt with the student's code
    (for backprop and training: trains, with the same losses as minigpt's own code)."""
    d = release(name, tmp_path / "ws", solutions=True)
    env = dict(os.environ, MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, f"handout_{name}.py"], cwd=d, capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    a = get(name)
    for p in a.parts:
        assert f"{p.points}/{p.points} points" in r.stdout
    if name not in ("backprop", "training"):
        return
    line = [ln for ln in r.stdout.split("\n") if ln.startswith("final training loss")][0]
    numbers = [float(w.rstrip(",")) for w in line.split() if w.replace(".", "").rstrip(",").isdigit()]
    assert len(numbers) == 2 and numbers[0] == numbers[1], line  # the library's bodies: the same run


def test_plugged_swaps_the_students_code_in_and_out(tmp_path):
    import minigpt.model
    from minigpt.layers.block import REFERENCE_OPS
    from minigpt.layers.layernorm import layernorm_forward
    from minigpt.ops import op_table
    from minigpt.optim import AdamW

    ws = release("backprop", tmp_path / "bp", solutions=True)
    hw, err = load_student(ws / "hw_backprop.py")
    assert err is None
    with plugged(hw):
        assert op_table("numpy")["layernorm"][0] is hw.layernorm_forward
        assert REFERENCE_OPS["attention"][1] is hw.causal_attention_backward
        assert minigpt.model.cross_entropy_forward is hw.cross_entropy_forward
    assert op_table("numpy")["layernorm"][0] is layernorm_forward
    assert REFERENCE_OPS["layernorm"][0] is layernorm_forward

    ws = release("training", tmp_path / "tr", solutions=True)
    hw_t, _ = load_student(ws / "hw_training.py")
    train_module = sys.modules["minigpt.train"]  # the package's `train` attribute is the function
    with plugged(hw_t):
        assert train_module.AdamW is hw_t.AdamW and train_module.lr_schedule is hw_t.lr_schedule
    assert train_module.AdamW is AdamW
    sys.modules.pop("hw_backprop", None)
    sys.modules.pop("hw_training", None)


def test_plugged_code_is_what_runs(tmp_path):
    """A wrong GELU plugged in changes the model's output; taken out, the output is minigpt's again."""
    from minigpt import GPT, GPTConfig

    text = module_text(get("backprop"), solutions=True).replace("out = 0.5 * x * (1.0 + t)", "out = x * (1.0 + t)")
    ws = release("backprop", tmp_path / "bp")
    (ws / "hw_backprop.py").write_text(text)
    hw, _ = load_student(ws / "hw_backprop.py")
    model = GPT(GPTConfig(vocab_size=7, block_size=4, n_layer=1, n_head=1, n_embd=4), backend="numpy")
    x = np.array([[1, 2, 3]])
    before = model.forward(x)[0]
    with plugged(hw):
        during = model.forward(x)[0]
    after = model.forward(x)[0]
    assert not np.allclose(before, during) and np.array_equal(before, after)
    sys.modules.pop("hw_backprop", None)


def test_the_visible_tests_run_under_pytest(tmp_path):
    """The workspace's test file is the grader's checks: it passes when solved and fails when not."""
    solved = release("distillation", tmp_path / "solved", solutions=True)
    stub = release("distillation", tmp_path / "stub")
    ok = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_hw_distillation.py"],
                        cwd=solved, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout[-1500:]
    bad = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_hw_distillation.py"],
                         cwd=stub, capture_output=True, text=True)
    assert bad.returncode == 1 and "not written yet (NotImplementedError)" in bad.stdout and "seed " in bad.stdout


def test_submissions_with_the_same_folder_name_get_separate_results(tmp_path, capsys):
    for group in ("a", "b"):
        release("distillation", tmp_path / group / "hw", solutions=True)
    out = tmp_path / "results"
    code, _, _ = _run(["assignment", "grade", str(tmp_path / "a" / "hw"), str(tmp_path / "b" / "hw"),
                       "--json", str(out)], capsys)
    files = sorted(p.name for p in out.iterdir())
    assert code == 0 and len(files) == 2 and all(f.endswith("_hw.json") for f in files)


def test_a_seed_reproduces_a_report(tmp_path, capsys):
    a = get("backprop")
    text = module_text(a, solutions=True).replace("dz *= dloss / N", "dz *= dloss")
    d = release("backprop", tmp_path / "ws")
    (d / "hw_backprop.py").write_text(text)
    runs = [_run(["assignment", "check", str(d), "--part", "cross_entropy", "--seed", "99"], capsys)[1]
            for _ in range(2)]
    assert runs[0] == runs[1] and "relative error" in runs[0]
    other = _run(["assignment", "check", str(d), "--part", "cross_entropy", "--seed", "100"], capsys)[1]
    assert other != runs[0]  # other draws: other shapes, other numbers
