"""The chapter tour: run every chapter script in order, writing its figures.

Chapters live in ``chapters/NN_name.py`` next to the ``minigpt`` package (a
source checkout, installed with ``pip install -e .``). Each runs in its own
process, exactly as ``python chapters/NN_name.py`` would, so what the tour
does is what a student gets running one chapter by hand.

Figures: a run writes its figures outside the checkout, so running the tour or
a chapter never modifies the committed ones in figures/ (the book's, made by
full runs). ``minigpt tour --book-figures`` regenerates those on purpose, and
fast mode never writes there.

Environment shared with the chapters:
  MINIGPT_FIGURES_DIR  where figures go (default: <cache dir>/figures,
                       or <cache dir>/figures-fast in fast mode)
  MINIGPT_CACHE_DIR    where the trained model is cached (see minigpt.pretrained)
  MINIGPT_FAST=1       tiny runs, for tests and a quick look (see minigpt.pretrained)
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from .errors import MinigptError
from .progress import in_jupyter_kernel, tqdm

ROOT = Path(__file__).resolve().parent.parent


def chapters_dir() -> Path:
    return ROOT / "chapters"


def list_chapters() -> list[Path]:
    d = chapters_dir()
    if not d.is_dir():
        raise MinigptError(f"no chapters/ directory at {d}: the tour needs a source checkout")
    return sorted(p for p in d.glob("[0-9][0-9]_*.py"))


BOOK_FIGURES = ROOT / "figures"  # the committed figures, shown by the README


def default_figures_dir(cache=None, fast=False) -> Path:
    """<cache dir>/figures, or <cache dir>/figures-fast for fast runs: outside the checkout."""
    from .pretrained import cache_dir

    return cache_dir(cache) / ("figures-fast" if fast else "figures")


def check_figures_dir(path: Path, fast: bool) -> None:
    """Refuse to let a fast run (30-step models) overwrite the book's figures."""
    if fast and Path(path).resolve() == BOOK_FIGURES.resolve():
        raise MinigptError(f"fast mode (MINIGPT_FAST) never writes the book's figures in {BOOK_FIGURES}: "
                           "unset MINIGPT_FAST or choose another MINIGPT_FIGURES_DIR")


def figures_dir() -> Path:
    """Where figures go: $MINIGPT_FIGURES_DIR, else default_figures_dir() (created)."""
    from .pretrained import fast_mode

    fast = fast_mode()
    env = os.environ.get("MINIGPT_FIGURES_DIR")
    d = Path(env) if env else default_figures_dir(fast=fast)
    check_figures_dir(d, fast)
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_figure(fig, name: str) -> None:
    """Save a matplotlib figure as <figures_dir()>/<name>.png (small, 100 dpi) and close it.

    In a Jupyter kernel the saved PNG is also shown inline (closing the figure
    keeps the inline backend from showing it a second time). Returns None, so
    a cell ending in save_figure(...) shows the figure, not a path.
    """
    import matplotlib.pyplot as plt

    path = figures_dir() / (name if name.endswith(".png") else name + ".png")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    if in_jupyter_kernel():
        from IPython.display import Image, display

        display(Image(filename=str(path)))
    print(f"wrote {path}")


def run_tour(only=None, cache_dir=None, fast=False, progress=True, book_figures=False) -> list[tuple[str, float]]:
    """Run the chapters (all, or those whose name contains one of `only`).

    Figures go to $MINIGPT_FIGURES_DIR or default_figures_dir(), never into the
    checkout, unless book_figures: then into figures/, which a fast run refuses.
    """
    from .pretrained import fast_mode

    chapters = list_chapters()
    if only:
        chapters = [c for c in chapters if any(o in c.stem for o in only)]
        if not chapters:
            raise MinigptError(f"no chapter matches {only}")
    fast = fast or fast_mode()
    if book_figures and fast:
        raise MinigptError("--book-figures needs full runs: drop --fast and unset MINIGPT_FAST")
    if book_figures:
        figs = BOOK_FIGURES
    else:
        # absolute: the chapters run with the checkout as their working directory
        figs = Path(os.environ.get("MINIGPT_FIGURES_DIR") or default_figures_dir(cache_dir, fast)).absolute()
    check_figures_dir(figs, fast)
    env = dict(os.environ, MPLBACKEND="Agg", MINIGPT_FIGURES_DIR=str(figs))
    if cache_dir:
        env["MINIGPT_CACHE_DIR"] = str(Path(cache_dir).absolute())
    if fast:
        env["MINIGPT_FAST"] = "1"
    print(f"figures go to {figs}" + (" (fast mode: 30-step models)" if fast else ""))
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
    print(f"figures are in {figs}")
    return times


def register(sub):
    p = sub.add_parser("tour", help="run the chapter scripts in order, writing every figure",
                       description="Run chapters/NN_*.py in order (each as its own process). Figures go to "
                                   "$MINIGPT_FIGURES_DIR, else <cache dir>/figures (figures-fast in fast "
                                   "mode), outside the checkout; --book-figures rewrites the committed "
                                   "figures/ instead.")
    p.add_argument("only", nargs="*", help="run only chapters whose name contains one of these")
    p.add_argument("--cache-dir", help="where the shared trained model is cached (default ~/.cache/minigpt)")
    p.add_argument("--fast", action="store_true",
                   help="30-step models and smaller experiments: for tests and a quick look (same as MINIGPT_FAST=1)")
    p.add_argument("--book-figures", action="store_true",
                   help="regenerate the committed figures in figures/ from full runs (refuses fast mode)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar over the chapters")
    p.set_defaults(func=lambda a: (run_tour(a.only, a.cache_dir, a.fast, not a.no_progress, a.book_figures), 0)[1])
