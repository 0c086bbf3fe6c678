"""Running a submission's parts: the checks run in a worker process, the
parent enforces a time limit per part.

The worker (`python -m minigpt.classroom.runner ASSIGNMENT WORKSPACE SEED PART...`)
imports the student's module once and runs the parts in order, writing one
result line per part on a private copy of stdout (the student's prints go
to stderr). The parent waits for each line at most the part's time limit;
if it does not come (an infinite loop) or the worker dies (os._exit, a
segfault, memory), that part scores 0 with the reason, and a fresh worker
takes the parts still to run. So a loop or a crash costs its part only,
and a normal run costs one process start for the whole submission.

While a part runs:
- the other parts' functions in the student's module are the library's,
  so each part is graded on its own code only (a wrong helper in one part
  does not cost points in another);
- minigpt's own versions of the assignment's functions raise if the
  student's module calls them (the library is the reference, not a
  shortcut); the checks and the rest of minigpt call them as usual.
Each part draws its inputs from its own seed, derived from the run's seed
and the part's position, so rerunning with --seed reproduces a failure.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .assignments import Assignment, get
from .checks.common import CheckFailed
from .markers import unit
from .swap import library_object, swapped

TAG = "@@minigpt-classroom "


@dataclass
class CheckResult:
    name: str
    points: int
    passed: bool
    message: str


@dataclass
class PartResult:
    part: str
    title: str
    max_points: int
    checks: list[CheckResult] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""  # timed out / crashed

    @property
    def score(self) -> int:
        return sum(c.points for c in self.checks if c.passed)

    def output(self) -> str:
        lines = [self.note] if self.note else []
        for c in self.checks:
            mark = "ok  " if c.passed else "FAIL"
            lines.append(f"{mark} {c.name} ({c.points if c.passed else 0}/{c.points}): {c.message}")
        return "\n".join(lines)


def part_seed(seed: int, assignment: Assignment, part: str) -> np.random.Generator:
    index = [p.name for p in assignment.parts].index(part)
    return np.random.default_rng([int(seed), index])


# ---------------------------------------------------------------- worker side


class GuardTripped(Exception):
    pass


def _guard(orig, qual, student):
    @functools.wraps(orig)
    def guard(*args, **kwargs):
        if sys._getframe(1).f_globals.get("__name__") == student:
            raise GuardTripped(f"your code calls minigpt's own {qual}; the point is to write it yourself")
        return orig(*args, **kwargs)

    return guard


def _guards(assignment, student):
    pairs = []
    for ref in assignment.units():
        module, top = ref.split(":")
        for qual in unit(ref).marked:
            orig = library_object(module, qual)
            if "." in qual:
                cls_name, meth = qual.split(".")
                pairs.append((library_object(module, cls_name), meth, _guard(orig, qual, student)))
            else:
                pairs.append((orig, _guard(orig, qual, student)))
    return pairs


def load_student(path: Path):
    """(module, None) or (None, one-line reason it does not import)."""
    name = path.stem
    sys.path.insert(0, str(path.parent))  # a student may split code into helper modules beside it
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module, None
    except FileNotFoundError:
        return None, f"{path.name} is missing"
    except SyntaxError as e:
        return None, f"{path.name} does not import: SyntaxError: {e.msg} (line {e.lineno})"
    except BaseException as e:  # noqa: BLE001 - anything the student's module raises at import
        return None, f"{path.name} does not import: {_describe(e, path.name)}"


def _describe(e: BaseException, filename: str) -> str:
    if isinstance(e, NotImplementedError):
        return "not written yet (NotImplementedError)"
    where = ""
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        if Path(frame.filename).name == filename:
            where = f" (at {filename} line {frame.lineno}: {frame.line})"
            break
    text = str(e).split("\n")[0][:300]
    return f"{type(e).__name__}: {text}{where}"


def _not_theirs(assignment, part, module):
    """A reason if a part's function is missing or not defined in the student's module."""
    for ref in part.units:
        lib_module, top = ref.split(":")
        if not hasattr(module, top):
            return f"{module.__name__}.py has no {top}"
        for qual in unit(ref).marked:
            obj = getattr(module, top)
            for piece in qual.split(".")[1:]:
                obj = getattr(obj, piece, None)
            if getattr(obj, "__module__", None) != module.__name__:
                return f"{qual} in {module.__name__}.py is not defined there (it comes from {obj.__module__}); write it"
    return ""


def _unwrapped(obj):
    """The library's function itself, not the guard the worker put around it."""
    return getattr(obj, "__wrapped__", obj) if callable(obj) and not isinstance(obj, type) else obj


def run_part(assignment: Assignment, part_name: str, module, seed: int, load_error=None) -> PartResult:
    """Run one part's checks in this process."""
    part = assignment.part(part_name)
    result = PartResult(part.name, part.title, part.points)
    t0 = time.perf_counter()
    reason = load_error or (_not_theirs(assignment, part, module) if module is not None else "no module")
    if reason:
        result.checks = [CheckResult(n, p, False, reason) for n, p in part.checks]
        return result
    checks = importlib.import_module(f"minigpt.classroom.checks.{assignment.name}").CHECKS[part.name]
    others = [(top, _unwrapped(library_object(*ref.split(":")))) for p in assignment.parts if p.name != part.name
              for ref in p.units for top in [ref.split(":")[1]]]
    saved = [(top, getattr(module, top, None)) for top, _ in others]
    for top, lib in others:
        setattr(module, top, lib)
    declared = dict(part.checks)
    try:
        with np.errstate(all="ignore"):
            for name, fn in checks(module, part_seed(seed, assignment, part.name)):
                try:
                    detail = fn()
                    result.checks.append(CheckResult(name, declared[name], True, detail or "ok"))
                except CheckFailed as e:
                    result.checks.append(CheckResult(name, declared[name], False, str(e)))
                except Exception as e:  # noqa: BLE001 - the student's code raised
                    result.checks.append(CheckResult(name, declared[name], False,
                                                     _describe(e, module.__name__ + ".py")))
    finally:
        for top, obj in saved:
            setattr(module, top, obj)
    missing = [n for n in declared if n not in {c.name for c in result.checks}]
    assert not missing, f"check {part.name} did not run {missing}"  # a grader bug, not the student's
    result.seconds = time.perf_counter() - t0
    return result


def _result_dict(r: PartResult) -> dict:
    return {"part": r.part, "seconds": r.seconds,
            "checks": [[c.name, c.points, c.passed, c.message] for c in r.checks]}


def worker(argv):
    name, workspace, seed, *parts = argv
    import resource

    cap = 64 << 20  # a student's print loop fills at most 64 MB of the parent's stderr file, then dies here
    resource.setrlimit(resource.RLIMIT_FSIZE, (cap, cap))
    memory = 4 << 30  # address space: a runaway allocation fails here (MemoryError), not on the machine
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    out = os.fdopen(os.dup(1), "w")  # results go here; fd 1 becomes stderr for the student's prints
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    assignment = get(name)
    student = assignment.module
    guards = _guards(assignment, student)
    with swapped(guards):
        module, error = load_student(Path(workspace) / f"{student}.py")
        out.write(TAG + json.dumps({"loaded": True}) + "\n")
        out.flush()
        for part in parts:
            r = run_part(assignment, part, module, int(seed), error)
            out.write(TAG + json.dumps(_result_dict(r)) + "\n")
            out.flush()
    out.close()
    os._exit(0)  # nothing the student's module registered at exit runs


# ---------------------------------------------------------------- parent side


def _reader(stream, q):
    for line in stream:
        if line.startswith(TAG):
            rec = json.loads(line[len(TAG):])
            q.put(True if rec.get("loaded") else rec)
    q.put(None)


def _failed(part, note) -> PartResult:
    return PartResult(part.name, part.title, part.points,
                      [CheckResult(n, p, False, note) for n, p in part.checks], note=note)


def _kill(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the worker's own session: it and its children
        except ProcessLookupError:
            pass
    proc.wait()


def run_parts(assignment: Assignment, workspace, seed: int, parts=None, timeout=None) -> list[PartResult]:
    """Every part's result (in the assignment's order), each within its time limit."""
    pending = [p.name for p in assignment.parts] if parts is None else list(parts)
    done: dict[str, PartResult] = {}
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env.setdefault(var, "1")  # small arrays: threads only cost start-up
    while pending:
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen([sys.executable, "-m", "minigpt.classroom.runner", assignment.name,
                                     str(Path(workspace).resolve()), str(seed), *pending],
                                    stdout=subprocess.PIPE, stderr=err, text=True, env=env,
                                    cwd=str(workspace), start_new_session=True)
            q: queue.Queue = queue.Queue()
            threading.Thread(target=_reader, args=(proc.stdout, q), daemon=True).start()
            try:
                limit = timeout or min(assignment.part(n).timeout for n in pending)
                try:
                    loaded = q.get(timeout=limit)
                except queue.Empty:  # the module's own top level loops: every part would
                    loaded = False
                if not loaded:
                    note = (f"importing {assignment.module}.py did not finish within {limit:g} s (a loop at its "
                            f"top level?)" if loaded is False else
                            f"the process importing {assignment.module}.py died (exit status {proc.wait()})")
                    for name in pending:
                        done[name] = _failed(assignment.part(name), note + "; this part scores 0")
                    pending = []
                    _kill(proc)
                for name in list(pending):
                    part = assignment.part(name)
                    limit = timeout or part.timeout
                    t0 = time.perf_counter()
                    try:
                        rec = q.get(timeout=limit)
                    except queue.Empty:
                        done[name] = _failed(part, f"timed out: no result within {limit:g} s "
                                                   f"(an infinite loop?); this part scores 0")
                        done[name].seconds = time.perf_counter() - t0
                        pending.remove(name)
                        break
                    if rec is None:
                        code = proc.wait()
                        err.seek(0)
                        tail = [ln for ln in err.read().strip().split("\n") if ln.strip()][-1:]
                        done[name] = _failed(part, f"the process running it died (exit status {code})"
                                             + (f": {tail[0][:200]}" if tail else "") + "; this part scores 0")
                        pending.remove(name)
                        break
                    r = PartResult(part.name, part.title, part.points,
                                   [CheckResult(*c) for c in rec["checks"]], rec["seconds"])
                    done[rec["part"]] = r
                    pending.remove(rec["part"])
                else:  # every part reported: the worker is exiting on its own
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        pass
            finally:
                _kill(proc)
    order = [p.name for p in assignment.parts]
    return [done[n] for n in sorted(done, key=order.index)]


if __name__ == "__main__":
    worker(sys.argv[1:])
