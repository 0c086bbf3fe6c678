"""Classroom assignments drawn from the library, with an open NumPy-only autograder.

    minigpt assignment release NAME DIR     a student workspace (see workspace.py)
    minigpt assignment check [DIR]          a student's own score, per part
    minigpt assignment grade DIR... [--json results.json]   a teacher's table + results JSON

The bodies a student writes are marked in the library source
(`# BEGIN SOLUTION` / `# END SOLUTION`, see markers.py), so the library is
the reference solution; the checks (checks/) grade by formula and centered
finite differences on inputs drawn fresh each run, never against stored
answers; each part runs in a worker process with a time limit (runner.py).
"""
from __future__ import annotations

import os

from .assignments import ASSIGNMENTS, Assignment, Part, get
from .markers import ClassroomError
from .plug import plugged
from .runner import PartResult, run_parts
from .workspace import open_workspace, release

__all__ = ["ASSIGNMENTS", "Assignment", "ClassroomError", "Part", "PartResult", "check", "get", "open_workspace",
           "plugged", "release", "run_parts"]


def check(part=None, workspace=".", seed=None, timeout=None) -> int:
    """Run a workspace's checks (one part, or all) as the grader does, print the
    report, and return the points scored (for a notebook cell)."""
    from .report import text_report

    a = open_workspace(workspace)
    seed = int.from_bytes(os.urandom(4), "little") if seed is None else int(seed)
    results = run_parts(a, workspace, seed, parts=None if part is None else [a.part(part).name], timeout=timeout)
    print(text_report(a, results, seed))
    return sum(r.score for r in results)
