"""`minigpt assignment release|check|grade|list`: the classroom commands."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .markers import ClassroomError

EXIT_NOT_FULL = 1  # check: some part lost points (0: full marks; 2: a usage error)


def register(sub):
    p = sub.add_parser("assignment", help="classroom assignments: release a workspace, check it, grade submissions",
                       description="Assignments drawn from minigpt itself, graded by formula and finite "
                                   "differences on fresh random inputs (NumPy only).")
    from ..cli import _Parser  # one-line errors, exit status 2

    s = p.add_subparsers(dest="assignment_command", metavar="{release,check,grade,list}", required=True,
                         parser_class=_Parser)
    r = s.add_parser("release", help="write a student workspace for an assignment")
    r.add_argument("name", help="the assignment (minigpt assignment list)")
    r.add_argument("dir", help="a new or empty directory")
    r.set_defaults(func=cmd_release)
    c = s.add_parser("check", help="run the checks on a workspace and print the score per part",
                     description="Run the assignment's checks on the workspace's module, each part in a worker "
                                 "process with a time limit, on inputs drawn from a fresh seed (printed). "
                                 "Exit status 0 at full marks, 1 otherwise.")
    c.add_argument("dir", nargs="?", default=".", help="the workspace (default: the current directory)")
    c.add_argument("--part", help="one part only (default: all)")
    _common(c)
    c.set_defaults(func=cmd_check)
    g = s.add_parser("grade", help="grade submissions into one table (and autograder results JSON)",
                     description="Grade each submission folder with one seed for all, print one table "
                                 "(a row per submission, a column per part) and, with --json, the autograder "
                                 'results format {"score", "tests": [{"name", "score", "max_score", "output"}]}.')
    g.add_argument("dirs", nargs="+", metavar="DIR", help="submission folders (each holds hw_NAME.py)")
    g.add_argument("--assignment", metavar="NAME",
                   help="grade as this assignment (default: each folder's manifest; needed when the folders "
                        "hold only the student's module)")
    g.add_argument("--json", metavar="PATH",
                   help="write the results: with one DIR, the results file PATH; with several, PATH is a "
                        "directory that gets one DIRNAME.json per submission")
    _common(g)
    g.set_defaults(func=cmd_grade)
    ls = s.add_parser("list", help="the assignments, their parts and points")
    ls.set_defaults(func=cmd_list)


def _common(p):
    p.add_argument("--seed", type=int, help="the run's seed, to reproduce a report (default: a fresh one)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="time limit per part (default: the part's own, 30 s; 60 s for head importance)")


def _seed(args) -> int:
    return int.from_bytes(os.urandom(4), "little") if args.seed is None else args.seed


def _check_timeout(args):
    if args.timeout is not None and not args.timeout > 0:
        raise ClassroomError(f"--timeout must be a positive number of seconds, got {args.timeout}")


def cmd_release(args):
    from .assignments import get
    from .workspace import release

    a = get(args.name)
    d = release(args.name, args.dir)
    print(f"released {a.name} ({a.points} points, {len(a.parts)} parts) into {d}/:")
    files = [(f"{a.module}.py", "the functions to write"),
             (f"handout_{a.name}.py", "the handout (jupytext percent notebook)"),
             (f"test_{a.module}.py", "the visible checks (pytest)"), ("assignment.json", "the manifest")]
    width = max(len(f) for f, _ in files)
    for f, what in files:
        print(f"  {f:<{width}}  {what}")
    print(f"then: cd {d} && minigpt assignment check")
    return 0


def cmd_check(args):
    from .report import text_report
    from .runner import run_parts
    from .workspace import open_workspace

    _check_timeout(args)
    a = open_workspace(args.dir)
    parts = None if args.part is None else [a.part(args.part).name]
    seed = _seed(args)
    results = run_parts(a, args.dir, seed, parts, args.timeout)
    print(text_report(a, results, seed))
    return 0 if all(r.score == r.max_points for r in results) else EXIT_NOT_FULL


def cmd_grade(args):
    from .report import results_json, table, text_report
    from .runner import run_parts
    from .workspace import open_workspace

    _check_timeout(args)
    dirs = [Path(d) for d in args.dirs]
    labels = [d.resolve().name or str(d) for d in dirs]
    if len(set(labels)) < len(labels):  # same folder names under different parents: name by the path
        labels = ["_".join(d.resolve().parts[1:]) for d in dirs]
    assignments = [open_workspace(d, args.assignment) for d in dirs]  # every error before any grading
    if len({a.name for a in assignments}) > 1:
        raise ClassroomError("the submissions hold different assignments ("
                             + ", ".join(sorted({a.name for a in assignments})) + "); grade them separately "
                             "or name one with --assignment")
    out = Path(args.json) if args.json else None
    if out is not None and len(dirs) > 1 and out.exists() and not out.is_dir():
        raise ClassroomError(f"--json {out}: with several submissions it names a directory, and {out} is a file")
    a, seed = assignments[0], _seed(args)
    rows = []
    for d, label in zip(dirs, labels):
        t0 = time.perf_counter()
        results = run_parts(a, d, seed, None, args.timeout)
        rows.append((label, results))
        if len(dirs) == 1 or any(r.score < r.max_points for r in results):
            print(text_report(a, results, seed, label) + f"  [{time.perf_counter() - t0:.1f} s]")
        if out is not None:
            path = out if len(dirs) == 1 else out / f"{label}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results_json(a, results, seed), indent=2) + "\n", encoding="utf-8")
    print()
    print(table(a, rows))
    if out is not None:
        print(f"results: {out}" + ("" if len(dirs) == 1 else f"/<submission>.json ({len(dirs)} files)"))
    return 0


def cmd_list(args):
    from .assignments import ASSIGNMENTS

    for a in ASSIGNMENTS.values():
        print(f"{a.name:<13} {a.points:>2} points  {a.title}")
        for p in a.parts:
            print(f"  {p.name:<14} {p.points:>2}  {p.title}")
    return 0
