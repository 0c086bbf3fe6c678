"""The classroom's reference run: for every assignment, the released workspace
scores 0, the workspace holding the library's own bodies scores full marks,
and one planted mistake per part (a dropped term, a transposed matrix, a
missing T^2, ...) loses that part's points with a message naming the
mistake. Plus: a loop or a crash costs its part only, calling the library's
own function or hard-coding an output does not pass, and the released module
parses with every marked function raising NotImplementedError.

Each grading run is one worker process (~0.3 s), so this file takes seconds."""
from __future__ import annotations

import importlib.util
import inspect
import time
import sys

import numpy as np
import pytest

from minigpt.classroom import ASSIGNMENTS, get, release, run_parts
from minigpt.classroom.markers import BEGIN, END, module_units, unit
from minigpt.classroom.runner import load_student, run_part
from minigpt.classroom.swap import library_object
from minigpt.classroom.workspace import module_text

SEED = 20261127  # fixed, so a planted mistake is caught by the same draws every run

# part -> (text in the library's body, the mistake planted instead, the words the hint must say)
MISTAKES = {
    "backprop": {
        "layernorm": ("        - dxhat.mean(axis=-1, keepdims=True)\n", "", "mean(dxhat) term"),
        "gelu": ("du = GELU_K * (1.0 + 3.0 * GELU_A * x * x)", "du = GELU_K", "0.044715 x^3 term is missing"),
        "cross_entropy": ("dz *= dloss / N", "dz *= dloss", "1/N of the mean looks missing"),
        "attention": ("dk = (ds.swapaxes(-1, -2) @ q) * scale", "dk = (ds @ q) * scale", "dS transposed"),
    },
    "training": {
        "adamw": ("bc1 = 1.0 - b1**self.t\n        bc2 = 1.0 - b2**self.t", "bc1 = bc2 = 1.0",
                  "bias corrections 1 - beta^t look missing"),
        "schedule": ("return lr * (step + 1) / warmup_steps", "return lr * step / warmup_steps", "off by one"),
        "clipping": ("            g *= scale\n    return norm",
                     "            g *= scale\n    return min(norm, max_norm)",
                     "norm after clipping"),
    },
    "pruning": {
        "magnitude": ('if scope == "global":', 'if scope == "never":', "that is the 'output' scope's mask"),
        "nm": ("k = np.maximum(0, (m - n) - (m - a.sum(axis=0)))", "k = np.full(a.shape[1], m - n)",
               "dead weights count toward the M - N pruned"),
        "heads": ('np.abs(g[f"h.{i}.attn.head_gate"])', 'g[f"h.{i}.attn.head_gate"]', "mean of the signed dL/dg"),
    },
    "quantization": {
        "affine": ("z = np.clip(q_min - np.rint(lo / s), q_min, q_max)",
                   "z = np.clip(q_min + np.rint(lo / s), q_min, q_max)", "zero point's sign looks flipped"),
        "groupwise": ("return np.repeat(p, group, axis=group_axis)",
                      "return np.concatenate([p] * group, axis=group_axis)", "tiles the groups"),
        "ste": ("inside = (v >= q_min) & (v <= q_max)", "inside = (v > q_min) & (v < q_max)",
                "boundaries look excluded"),
    },
    "distillation": {
        "kd_loss": ("loss = alpha * T * T * soft", "loss = alpha * soft", "T^2 factor on the KL term looks missing"),
    },
}


def _write(tmp_path, name, text, label="ws"):
    d = release(name, tmp_path / label, solutions=True)
    (d / f"hw_{name}.py").write_text(text)
    return d


def _planted(name):
    text = module_text(get(name), solutions=True)
    for old, new, _ in MISTAKES[name].values():
        assert text.count(old) == 1, f"the planted mistake's anchor {old!r} moved in the library"
        text = text.replace(old, new)
    return text


def test_every_part_has_a_planted_mistake():
    assert {a: set(m) for a, m in MISTAKES.items()} == {a.name: {p.name for p in a.parts}
                                                        for a in ASSIGNMENTS.values()}


@pytest.mark.parametrize("name", list(ASSIGNMENTS))
def test_reference_run(tmp_path, name):
    a = get(name)
    stub = run_parts(a, release(name, tmp_path / "stub"), SEED)
    assert [r.score for r in stub] == [0] * len(a.parts)
    assert all("not written yet (NotImplementedError)" in c.message for r in stub for c in r.checks)

    full = run_parts(a, release(name, tmp_path / "full", solutions=True), SEED)
    assert [(r.part, r.score) for r in full] == [(p.name, p.points) for p in a.parts], \
        "\n".join(r.output() for r in full)

    planted = run_parts(a, _write(tmp_path, name, _planted(name), "planted"), SEED)
    for r in planted:
        hint = MISTAKES[name][r.part][2]
        assert r.score < r.max_points, f"{name}.{r.part}: the planted mistake passed\n{r.output()}"
        failed = [c for c in r.checks if not c.passed]
        assert any(hint in c.message for c in failed), f"{name}.{r.part}: no hint {hint!r}\n{r.output()}"
        assert all(("relative error" in c.message and "tolerance" in c.message) or "differ" in c.message
                   or "shape" in c.message or "half-steps" in c.message for c in failed), \
            r.output()  # each failure says what was compared, and by how much


def _import(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", list(ASSIGNMENTS))
def test_released_module_parses_and_every_marked_function_raises(tmp_path, name):
    a = get(name)
    d = release(name, tmp_path / "ws")
    module = _import(d / f"hw_{name}.py", f"hw_{name}_released")
    marked = [(ref.split(":")[0], q) for ref in a.units() for q in unit(ref).marked]
    assert marked
    for lib_module, qual in marked:
        top, *meth = qual.split(".")
        obj = getattr(module, top)
        if meth:
            fn = getattr(obj, meth[0]).__get__(obj.__new__(obj))  # an instance without __init__: step raises first
        else:
            fn = obj
        params = [p for p in inspect.signature(fn).parameters.values() if p.default is p.empty]
        with pytest.raises(NotImplementedError, match=qual):
            fn(*[None] * len(params))
        lib = library_object(lib_module, qual)  # signature and docstring are the library's
        assert inspect.signature(lib).parameters.keys() == inspect.signature(getattr(obj, meth[0]) if meth else obj)\
            .parameters.keys()
        assert fn.__doc__ == lib.__doc__
    text = (d / f"hw_{name}.py").read_text()
    assert BEGIN not in text and END not in text


def test_markers_all_belong_to_an_assignment():
    """A marked body no assignment uses would be released nowhere: every marker in a library module
    the assignments draw from is in some part."""
    used = {ref for a in ASSIGNMENTS.values() for ref in a.units()}
    modules = {ref.split(":")[0] for ref in used}
    found = {f"{m}:{n}" for m in modules for n in module_units(m)}
    assert found == used


def test_loop_and_crash_cost_their_part_only(tmp_path):
    a = get("backprop")
    text = module_text(a, solutions=True)
    text = text.replace("    x, t = cache\n", "    x, t = cache\n    while True:\n        pass\n")  # gelu_backward
    text = text.replace("    mu = x.mean(axis=-1, keepdims=True)  # (..., 1)\n",
                        "    import os\n    os._exit(3)\n")  # layernorm_forward
    results = {r.part: r for r in run_parts(a, _write(tmp_path, "backprop", text), SEED, timeout=4)}
    assert results["layernorm"].score == 0 and "died (exit status 3)" in results["layernorm"].note
    assert results["gelu"].score == 0 and "timed out" in results["gelu"].note
    assert results["cross_entropy"].score == 4 and results["attention"].score == 5


def test_calling_the_library_or_importing_its_function_does_not_pass(tmp_path):
    a = get("backprop")
    text = module_text(a, solutions=True)
    text += ("\nimport minigpt.layers.gelu as _lib\n\n\ndef gelu_backward(dout, cache):\n"
             "    return _lib.gelu_backward(dout, cache)\n"
             "\nfrom minigpt.layers.layernorm import layernorm_backward  # noqa\n")
    results = {r.part: r for r in run_parts(a, _write(tmp_path, "backprop", text), SEED)}
    assert results["gelu"].score == 1  # the forward is theirs; the backward only forwards to minigpt's
    assert "calls minigpt's own gelu_backward" in results["gelu"].output()
    assert results["layernorm"].score == 0 and "not defined there" in results["layernorm"].output()
    assert results["attention"].score == 5


def test_a_hard_coded_output_fails_on_another_seed(tmp_path):
    """Record what the reference returns on one seed's inputs, hard-code it, and grade on another seed."""
    a = get("backprop")
    d = release("backprop", tmp_path / "ws", solutions=True)
    module, err = load_student(d / "hw_backprop.py")
    assert err is None
    seen = {}
    real = module.gelu_forward

    def spy(x):
        out = real(x)
        seen.setdefault("out", out)
        return out

    spy.__module__ = module.__name__  # passes for the student's own function
    module.gelu_forward = spy
    assert run_part(a, "gelu", module, seed=1).score == 3
    recorded = seen["out"][0].tolist()
    (d / "hw_backprop.py").write_text(module_text(a, solutions=True) + (
        "\n\ndef gelu_forward(x):\n"
        f"    out = np.array({recorded!r})\n"
        "    return out, (x, np.tanh(GELU_K * (x + GELU_A * x * x * x)))\n"))
    sys.modules.pop("hw_backprop", None)
    cheat, _ = load_student(d / "hw_backprop.py")
    assert run_part(a, "gelu", cheat, seed=1).checks[0].passed  # the recorded seed: it "passes"
    other = run_part(a, "gelu", cheat, seed=2).checks[0]
    assert not other.passed and "gelu_forward" in other.message
    sys.modules.pop("hw_backprop", None)


def test_each_part_is_graded_on_its_own_code(tmp_path):
    """A broken prune_smallest (part magnitude) costs nothing in nm, which uses it."""
    a = get("pruning")
    text = module_text(a, solutions=True).replace("    return ~pruned\n", "    return pruned\n")
    results = {r.part: r.score for r in run_parts(a, _write(tmp_path, "pruning", text), SEED)}
    assert results["magnitude"] < 7 and results["nm"] == 3


def test_checks_draw_fresh_inputs_per_seed():
    from minigpt.classroom.runner import part_seed

    a = get("backprop")
    draws = {part_seed(s, a, "layernorm").standard_normal(3).tobytes() for s in range(5)}
    assert len(draws) == 5
    assert part_seed(7, a, "gelu").random() != part_seed(7, a, "layernorm").random()
    np.testing.assert_equal(part_seed(7, a, "gelu").random(4), part_seed(7, a, "gelu").random(4))


def test_a_loop_at_import_costs_one_time_limit_not_one_per_part(tmp_path):
    a = get("quantization")
    text = module_text(a, solutions=True) + "\nwhile True:\n    pass\n"
    t0 = time.perf_counter()
    results = run_parts(a, _write(tmp_path, "quantization", text), SEED, timeout=3)
    assert time.perf_counter() - t0 < 3 * len(a.parts)
    assert [r.score for r in results] == [0] * len(a.parts)
    assert all("importing hw_quantization.py did not finish within 3 s" in r.note for r in results)


def test_prints_and_exceptions_in_student_code(tmp_path):
    """The student's prints do not disturb the protocol; an exception says where it came from."""
    a = get("distillation")
    text = module_text(a, solutions=True).replace(
        "    check_distill_args(temperature, alpha)\n",
        "    print('debugging', '\\n' * 50)\n    check_distill_args(temperature, alpha)\n    [][1]\n")
    (r,) = run_parts(a, _write(tmp_path, "distillation", text), SEED)
    assert r.score == 0
    assert "IndexError: list index out of range (at hw_distillation.py line" in r.checks[0].message


def test_a_runaway_allocation_costs_its_part_only(tmp_path):
    a = get("distillation")
    text = module_text(a, solutions=True).replace(
        "    check_distill_args(temperature, alpha)\n",
        "    hog = np.empty((6 << 30,), dtype=np.uint8)\n    check_distill_args(temperature, alpha)\n")
    # 6 GB untouched: without the worker's 4 GB address-space cap np.empty would succeed
    (r,) = run_parts(a, _write(tmp_path, "distillation", text), SEED)
    assert r.score == 0 and "MemoryError" in r.checks[0].message


def test_a_students_own_assert_is_reported_with_its_line(tmp_path):
    a = get("backprop")
    text = module_text(a, solutions=True).replace(
        "    x, t = cache\n", "    x, t = cache\n    assert x.ndim == 9, 'my shape check'\n")
    results = {r.part: r for r in run_parts(a, _write(tmp_path, "backprop", text), SEED, parts=["gelu"])}
    msg = results["gelu"].checks[1].message
    assert msg.startswith("AssertionError: my shape check (at hw_backprop.py line") and results["gelu"].score == 1
