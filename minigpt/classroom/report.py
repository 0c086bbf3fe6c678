"""Reports of a run: the per-part text a student reads, the table over
submissions a teacher reads, and the autograder results JSON."""
from __future__ import annotations

from .assignments import Assignment
from .runner import PartResult


def part_lines(results: list[PartResult]) -> list[str]:
    width = max(len(r.part) for r in results)
    lines = []
    for r in results:
        status = "ok" if r.score == r.max_points else ("timed out" if r.note.startswith("timed out") else "")
        lines.append(f"  {r.part:<{width}}  {r.score:>2}/{r.max_points:<2}  {status}".rstrip())
        if r.score < r.max_points:
            if r.note:
                lines.append(f"      {r.note}")
            else:
                lines += [f"      {c.name}: {c.message}" for c in r.checks if not c.passed]
    return lines


def text_report(a: Assignment, results: list[PartResult], seed: int, label: str = "") -> str:
    score, total = sum(r.score for r in results), sum(r.max_points for r in results)
    head = f"{label + ': ' if label else ''}{a.name}: {score}/{total} points (seed {seed})"
    return "\n".join([head, *part_lines(results)])


def results_json(a: Assignment, results: list[PartResult], seed: int) -> dict:
    """The autograder results format: {"score", "tests": [{"name", "score", "max_score", "output"}]}."""
    return {"score": sum(r.score for r in results),
            "output": f"minigpt assignment {a.name}, seed {seed}",
            "execution_time": round(sum(r.seconds for r in results), 3),
            "tests": [{"name": f"{r.part}: {r.title}", "score": r.score, "max_score": r.max_points,
                       "output": r.output()} for r in results]}


def table(a: Assignment, rows: list[tuple[str, list[PartResult]]]) -> str:
    """One line per submission, one column per part, then the total."""
    names = [p.name for p in a.parts]
    first = max([len("submission")] + [len(label) for label, _ in rows])
    widths = [max(len(n), 5) for n in names]
    head = f"{'submission':<{first}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, widths)) + "  total"
    lines = [head]
    for label, results in rows:
        by = {r.part: r for r in results}
        cells = [f"{by[n].score}/{by[n].max_points}" for n in names]
        total = f"{sum(r.score for r in results)}/{a.points}"
        lines.append(f"{label:<{first}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths)) + f"  {total:>5}")
    return "\n".join(lines)
