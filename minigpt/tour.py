"""The chapter tour: run every chapter script in order, writing its figures.

Chapters live in ``chapters/NN_name.py`` next to the ``minigpt`` package (a
source checkout, installed with ``pip install -e .``). Each runs in its own
process, exactly as ``python chapters/NN_name.py`` would, so what the tour
does is what a student gets running one chapter by hand.

Environment shared with the chapters:
  MINIGPT_FIGURES_DIR  where figures go (default: figures/ in the checkout)
  MINIGPT_CACHE_DIR    where the trained model is cached (see minigpt.pretrained)
  MINIGPT_FAST=1       tiny runs, for tests
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from .errors import MinigptError

ROOT = Path(__file__).resolve().parent.parent


def chapters_dir() -> Path:
    return ROOT / "chapters"


def list_chapters() -> list[Path]:
    d = chapters_dir()
    if not d.is_dir():
        raise MinigptError(f"no chapters/ directory at {d}: the tour needs a source checkout")
    return sorted(p for p in d.glob("[0-9][0-9]_*.py"))


def figures_dir() -> Path:
    d = Path(os.environ.get("MINIGPT_FIGURES_DIR") or ROOT / "figures")
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_figure(fig, name: str) -> Path:
    """Save a matplotlib figure as figures/<name>.png (small, 100 dpi) and close it."""
    import matplotlib.pyplot as plt

    path = figures_dir() / (name if name.endswith(".png") else name + ".png")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")
    return path


def run_tour(only=None, cache_dir=None, fast=False, progress=True) -> list[tuple[str, float]]:
    """Run the chapters (all, or those whose name contains one of `only`)."""
    from tqdm.auto import tqdm

    chapters = list_chapters()
    if only:
        chapters = [c for c in chapters if any(o in c.stem for o in only)]
        if not chapters:
            raise MinigptError(f"no chapter matches {only}")
    env = dict(os.environ, MPLBACKEND="Agg")
    if cache_dir:
        env["MINIGPT_CACHE_DIR"] = str(cache_dir)
    if fast:
        env["MINIGPT_FAST"] = "1"
    times = []
    bar = tqdm(chapters, unit="chapter", disable=not progress)
    for path in bar:
        bar.set_description(path.stem)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(path)], env=env, cwd=ROOT)
        if proc.returncode != 0:
            raise MinigptError(f"chapter {path.name} failed with exit status {proc.returncode}")
        times.append((path.stem, time.perf_counter() - t0))
    bar.close()
    for name, sec in times:
        print(f"{name:<24} {sec:6.1f} s")
    print(f"{'total':<24} {sum(s for _, s in times):6.1f} s")
    return times


def register(sub):
    p = sub.add_parser("tour", help="run the chapter scripts in order, writing every figure",
                       description="Run chapters/NN_*.py in order (each as its own process), "
                                   "writing their figures to figures/.")
    p.add_argument("only", nargs="*", help="run only chapters whose name contains one of these")
    p.add_argument("--cache-dir", help="where the shared trained model is cached (default ~/.cache/minigpt)")
    p.add_argument("--fast", action="store_true", help="tiny runs (what the tests use)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=lambda a: (run_tour(a.only, a.cache_dir, a.fast, not a.no_progress), 0)[1])
