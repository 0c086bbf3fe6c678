"""Solution markers in the library source, and the student module built from them.

A body a student writes is marked in the library itself, by two comment
lines at the body's indentation, after the docstring:

    def layernorm_backward(dout, cache):
        \"\"\"Returns (dx, dgamma, dbeta). ...formula...\"\"\"
        # BEGIN SOLUTION
        xhat, rstd, gamma = cache
        ...
        # END SOLUTION

Comments change nothing the library computes, so the library stays the
reference solution. A *unit* is the top-level function or class holding
marked lines (a method such as AdamW.step makes its whole class the unit:
the student gets the class with that method to write). Releasing a unit
replaces every BEGIN..END block by one `raise NotImplementedError(...)`
line at the same indentation; the signature and docstring stay.

The student module gathers the units of an assignment from several library
modules, and imports every module-level name their reference bodies use
(np, math, GELU_K, helpers such as _grouped) from where the library has it,
so the student can write the body with the same tools.
"""
from __future__ import annotations

import ast
import builtins
import importlib
import importlib.util
import re
import textwrap
import types
from dataclasses import dataclass

from ..errors import MinigptError

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
STUB_MESSAGE = "{qual}: write this body (the formulas: its docstring and the notes above it)"


class ClassroomError(MinigptError):
    """A classroom request that cannot be met (unknown assignment, not a workspace, ...)."""


@dataclass(frozen=True)
class Unit:
    """One top-level function or class of a library module with marked code."""

    module: str  # "minigpt.layers.layernorm"
    name: str  # top-level name: "layernorm_backward" or "AdamW"
    marked: tuple[str, ...]  # qualified names whose bodies are marked: ("AdamW.step",)
    solution: str  # the unit's source as in the library
    stub: str  # the same with each marked block replaced by raise NotImplementedError
    free_names: tuple[str, ...]  # module-level names of the library module that the unit uses


def _source_lines(module: str) -> list[str]:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ClassroomError(f"no library module {module}")
    with open(spec.origin, encoding="utf-8") as f:
        return f.read().split("\n")


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _blocks(lines, first, last, where):
    """[(begin, end)] 0-based line indices of the marker pairs of the function
    spanning lines[first:last]. The END comment may follow the function's last
    statement (ast ends a function there), so it is searched on from BEGIN."""
    out, i = [], first
    while i < last:
        if lines[i].strip() == BEGIN:
            b, j = i, i + 1
            while j < len(lines) and lines[j].strip() != END:
                s = lines[j].strip()
                if s == BEGIN or (j >= last and s and not s.startswith("#")):
                    raise ClassroomError(f"{where}: {BEGIN} without {END} (line {b + 1})")
                j += 1
            if j == len(lines) or _indent(lines[j]) != _indent(lines[b]):
                raise ClassroomError(f"{where}: {BEGIN} without a matching {END} at its indentation (line {b + 1})")
            out.append((b, j))
            i = j + 1
        else:
            if lines[i].strip() == END:
                raise ClassroomError(f"{where}: {END} without {BEGIN} (line {i + 1})")
            i += 1
    return out


def _functions(node):
    """(qualified name, def node) of a top-level def or of a class's methods."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return [(node.name, node)]
    return [(f"{node.name}.{f.name}", f) for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _loaded_names(tree) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


_RELATIVE = re.compile(r"^(\s*)from (\.+)([\w.]*) import ")


def _absolute(lines: list[str], module: str) -> list[str]:
    """Relative imports inside a body (`from ..model import GPT`) made absolute:
    the student's module is not inside the package."""
    package = module.rsplit(".", 1)[0]

    def fix(m):
        return f"{m.group(1)}from {importlib.util.resolve_name(m.group(2) + m.group(3), package)} import "

    return [_RELATIVE.sub(fix, ln) for ln in lines]


def module_units(module: str) -> dict[str, Unit]:
    """{top-level name: Unit} for every unit of the library module with markers."""
    lines = _source_lines(module)
    tree = ast.parse("\n".join(lines))
    units = {}
    claimed = set()
    mod = importlib.import_module(module)
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        first = (node.decorator_list[0].lineno if node.decorator_list else node.lineno) - 1
        last = node.end_lineno  # exclusive, 0-based
        marked, replace = [], {}
        for qual, f in _functions(node):
            blocks = _blocks(lines, f.lineno - 1, f.end_lineno, f"{module}.{qual}")
            if blocks:
                marked.append(qual)
                for b, e in blocks:
                    stub_line = f"{_indent(lines[b])}raise NotImplementedError({STUB_MESSAGE.format(qual=qual)!r})"
                    replace[b] = (e, stub_line)
                    claimed.update(range(b, e + 1))
                    last = max(last, e + 1)
        if not marked:
            continue
        solution = [ln for ln in lines[first:last] if ln.strip() not in (BEGIN, END)]
        stub, i = [], first
        while i < last:
            if i in replace:
                end, line = replace[i]
                stub.append(line)
                i = end + 1
            else:
                stub.append(lines[i])
                i += 1
        solution, stub = _absolute(solution, module), _absolute(stub, module)
        src = "\n".join(solution)
        used = _loaded_names(ast.parse(textwrap.dedent(src)))
        free = sorted(n for n in used if n in vars(mod) and n != node.name and not hasattr(builtins, n))
        units[node.name] = Unit(module, node.name, tuple(marked), src, "\n".join(stub), tuple(free))
    stray = [i for i, ln in enumerate(lines) if ln.strip() in (BEGIN, END) and i not in claimed]
    if stray:
        raise ClassroomError(f"{module}: solution marker outside a function body (line {stray[0] + 1})")
    return units


def unit(ref: str) -> Unit:
    """The unit named "module:name", e.g. "minigpt.optim:AdamW"."""
    module, name = ref.split(":")
    units = module_units(module)
    if name not in units:
        raise ClassroomError(f"{module}.{name} has no solution markers")
    return units[name]


def _import_line(module: str, name: str) -> str:
    obj = vars(importlib.import_module(module))[name]
    if isinstance(obj, types.ModuleType):
        full = obj.__name__
        return f"import {full}" if full == name else f"import {full} as {name}"
    return f"from {module} import {name}"


def build_module(units: list[Unit], doc: str, solutions=False, given: dict[str, str] | None = None) -> str:
    """The student module's source: docstring, imports, then each unit (stubbed
    unless solutions). given: {unit name: source} to use instead (tests plant
    deliberate mistakes this way)."""
    defined = {u.name for u in units}
    imports: dict[str, tuple[str, str]] = {}
    for u in units:
        for n in u.free_names:
            if n in defined:
                continue
            line = _import_line(u.module, n)
            if n in imports and imports[n][1] != line:
                old = imports[n][0]
                if vars(importlib.import_module(old))[n] is not vars(importlib.import_module(u.module))[n]:
                    raise ClassroomError(f"{n} means different things in {old} and {u.module}")
                continue
            imports[n] = (u.module, line)
    plain = sorted({ln for _, ln in imports.values() if ln.startswith("import ")})
    grouped: dict[str, list[str]] = {}
    for _, ln in imports.values():
        if ln.startswith("from "):
            module, name = ln[len("from "):].split(" import ")
            grouped.setdefault(module, []).append(name)
    froms = [f"from {m} import {', '.join(sorted(set(ns)))}" for m, ns in sorted(grouped.items())]
    parts = [f'"""{doc}\n"""', "from __future__ import annotations", "", *plain, "", *froms]
    seen = set()
    for u in units:
        header = []
        if u.module not in seen:  # the library module's docstring (its formulas) once
            seen.add(u.module)
            lib_doc = (importlib.import_module(u.module).__doc__ or "").strip()
            header = [f"# ---- from {u.module} " + "-" * max(0, 60 - len(u.module))]
            header += [("# " + ln).rstrip() for ln in lib_doc.split("\n")] if lib_doc else []
        body = (given or {}).get(u.name) or (u.solution if solutions else u.stub)
        parts += ["", ""] + header + [body]
    return "\n".join(parts).rstrip() + "\n"
