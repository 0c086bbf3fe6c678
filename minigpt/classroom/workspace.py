"""A student workspace: what `minigpt assignment release NAME DIR` writes.

    DIR/assignment.json        manifest: assignment, parts, points, minigpt version
    DIR/hw_NAME.py             the functions to write (bodies raise NotImplementedError)
    DIR/handout_NAME.py        the handout, a jupytext percent notebook
    DIR/test_hw_NAME.py        the visible checks, for pytest (the grader's own checks)

The rest of minigpt is the installed library. Scores never come from the
manifest: the grader reads parts and points from minigpt.classroom.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import textwrap
from pathlib import Path

from .. import __version__
from .assignments import Assignment, get
from .markers import ClassroomError, build_module, unit

MANIFEST = "assignment.json"


def module_text(a: Assignment, solutions=False, given=None) -> str:
    doc = (f"{a.title}: the functions you write for minigpt's '{a.name}' assignment.\n\n"
           f"Replace each `raise NotImplementedError(...)` with the body; the docstrings and the\n"
           f"comment blocks (each library module's own docstring) give the formulas and shapes.\n"
           f"Check your work with `minigpt assignment check` in this folder.")
    if any(u.endswith("_forward") for u in a.units()):
        doc += ("\n\nA forward returns (out, cache) and its backward(dout, cache) returns the gradients of\n"
                "the forward's inputs; what the cache holds is yours to choose.")
    return build_module([unit(u) for u in a.units()], doc, solutions=solutions, given=given)


def _docstrings(ref: str) -> list[tuple[str, str]]:
    """(qualified name, docstring) of the unit's marked functions (and its class)."""
    u = unit(ref)
    tree = ast.parse(textwrap.dedent(u.solution))
    node = tree.body[0]
    out = []
    if isinstance(node, ast.ClassDef):
        out.append((node.name, ast.get_docstring(node) or ""))
        methods = {f"{node.name}.{f.name}": f for f in node.body if isinstance(f, ast.FunctionDef)}
        out += [(q, ast.get_docstring(methods[q]) or "") for q in u.marked]
    else:
        out.append((node.name, ast.get_docstring(node) or ""))
    return out


def _chapter_path(chapter: str) -> Path | None:
    spec = importlib.util.find_spec("chapters")
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    roots.append(Path(__file__).resolve().parents[2] / "chapters")
    for root in roots:
        if (root / chapter).exists():
            return root / chapter
    return None


def chapter_sections(chapter: str, prefixes) -> list[str]:
    """The markdown of the chapter's sections whose heading starts with one of
    prefixes (each with its subsections, code cells left out), as text lines."""
    path = _chapter_path(chapter)
    if path is None or not prefixes:
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    out, level, in_md = [], None, False
    for ln in lines:
        if ln.startswith("# %%"):
            in_md = "[markdown]" in ln
            continue
        if not in_md or not (ln.startswith("#") or not ln.strip()):
            continue
        text = ln[2:] if ln.startswith("# ") else ln.lstrip("#")
        if text.startswith("#"):
            depth = len(text) - len(text.lstrip("#"))
            title = text.lstrip("#").strip()
            if level is not None and depth <= level:
                level = None
            if level is None and any(("#" * depth + " " + title).startswith(p) for p in prefixes):
                level = depth
                out.append("")
        if level is not None:  # headings one level down: they sit under the handout's own
            out.append("#" + text if text.startswith("#") else text)
    return out


def _md(lines) -> str:
    return "# %% [markdown]\n" + "\n".join(("# " + ln).rstrip() for ln in lines) + "\n"


def handout_text(a: Assignment) -> str:
    chapter_no = a.chapter.split("_")[0].lstrip("0")
    cells = ["# ---\n# jupyter:\n#   jupytext:\n#     text_representation:\n#       extension: .py\n"
             "#       format_name: percent\n# ---\n"]
    table = ["| part | what you write | points |", "|---|---|---|"]
    for p in a.parts:
        table.append(f"| `{p.name}` | {p.title} | {p.points} |")
    cells.append(_md([f"# {a.title} ({a.points} points)", "",
                      f"You write the bodies of the functions in `{a.module}.py`; minigpt, installed, is "
                      f"everything else. The formulas are in the docstrings and below, from chapter "
                      f"{chapter_no} (`chapters/{a.chapter}`).", "", *table, "",
                      "Check your work at any time: run the check cell under each part, or "
                      "`minigpt assignment check` in this folder, or `python -m pytest -q "
                      f"test_{a.module}.py`. The checks compare your functions with the formulas and with "
                      "centered finite differences on inputs drawn at random each run (different shapes "
                      "and values every time), so there is no stored answer to match; a failure says what "
                      "was compared and by how much it missed, and the seed to reproduce it.",
                      "", "Your instructor grades with the same checks, each part in its own process with "
                      "a time limit."]))
    intro = chapter_sections(a.chapter, a.intro_sections)
    if intro:
        cells.append(_md([f"## From chapter {chapter_no} (its text; the code cells and figures are in the chapter)",
                          *intro]))
    cells.append("# %%\nfrom minigpt.classroom import check\n")
    for i, p in enumerate(a.parts, 1):
        text = [f"## Part {i}: {p.title} ({p.points} points)", "",
                "Write " + ", ".join(f"`{q}`" for ref in p.units for q in unit(ref).marked)
                + f" in `{a.module}.py`. Points: " + ", ".join(f"{n} {pts}" for n, pts in p.checks) + "."]
        for ref in p.units:
            for qual, doc in _docstrings(ref):
                if doc:
                    text += ["", f"`{qual}`:", "", "```", *doc.split("\n"), "```"]
        text += chapter_sections(a.chapter, p.sections)
        cells.append(_md(text))
        cells.append(f'# %%\ncheck("{p.name}")  # this part only, in a separate process, as the grader runs it\n')
    cells.append(_md(["## Once everything passes: your code inside minigpt", "",
                      "`minigpt.classroom.plugged(module)` puts your functions wherever minigpt uses its own "
                      "until the `with` block ends. " + a.plug_note]))
    cells.append("# %%\n" + a.plug.strip() + "\n")
    return "\n".join(cells)


def tests_text(a: Assignment) -> str:
    return f'''"""Visible checks of minigpt's '{a.name}' assignment: the grader's own checks.

Each test runs one part in a separate process with a time limit, on inputs
drawn from a fresh random seed (printed on failure; reproduce it with
`minigpt assignment check --seed SEED`). Run: python -m pytest -q {Path(f"test_{a.module}.py")}
"""
import os
from pathlib import Path

import pytest

from minigpt.classroom import get, run_parts

HERE = Path(__file__).resolve().parent
ASSIGNMENT = get("{a.name}")


@pytest.mark.parametrize("part", [p.name for p in ASSIGNMENT.parts])
def test_part(part):
    seed = int.from_bytes(os.urandom(4), "little")
    (result,) = run_parts(ASSIGNMENT, HERE, seed, parts=[part])
    assert result.score == result.max_points, f"seed {{seed}}\\n" + result.output()
'''


def manifest(a: Assignment) -> dict:
    return {"assignment": a.name, "title": a.title, "minigpt_version": __version__, "module": f"{a.module}.py",
            "handout": f"handout_{a.name}.py", "tests": f"test_{a.module}.py", "points": a.points,
            "parts": [{"name": p.name, "title": p.title, "points": p.points,
                       "functions": [q for ref in p.units for q in unit(ref).marked]} for p in a.parts]}


def release(name: str, directory, solutions=False, given=None) -> Path:
    """Write the workspace of assignment `name` into directory (new or empty).
    solutions / given: the library's bodies or planted ones instead of stubs
    (for the grader's own tests; the command always writes stubs)."""
    a = get(name)
    d = Path(directory)
    if d.exists() and (not d.is_dir() or any(d.iterdir())):
        raise ClassroomError(f"{d} exists and is not an empty directory; give a new or empty one")
    text = module_text(a, solutions, given)
    compile(text, f"{a.module}.py", "exec")  # a release that does not parse is a bug here, not the student's
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{a.module}.py").write_text(text, encoding="utf-8")
    (d / f"handout_{a.name}.py").write_text(handout_text(a), encoding="utf-8")
    (d / f"test_{a.module}.py").write_text(tests_text(a), encoding="utf-8")
    (d / MANIFEST).write_text(json.dumps(manifest(a), indent=2) + "\n", encoding="utf-8")
    return d


def open_workspace(directory, assignment: str | None = None) -> Assignment:
    """The assignment a workspace (or a submission folder) holds. assignment:
    the name the teacher grades as (then the manifest may be missing, as when
    a platform hands over only the student's module)."""
    d = Path(directory)
    if not d.is_dir():
        raise ClassroomError(f"{d} is not a directory")
    m = d / MANIFEST
    named = None
    if m.exists():
        try:
            named = json.loads(m.read_text(encoding="utf-8"))["assignment"]
        except (ValueError, KeyError, TypeError):
            raise ClassroomError(f"{m} is not an assignment manifest") from None
    if assignment is not None:
        a = get(assignment)
        if named is not None and named != a.name:
            raise ClassroomError(f"{d} holds assignment {named!r}, not {a.name!r}")
        return a
    if named is None:
        raise ClassroomError(f"{d} is not an assignment workspace (no {MANIFEST}); release one with "
                             f"`minigpt assignment release NAME DIR` (to grade bare submissions: --assignment NAME)")
    return get(named)
