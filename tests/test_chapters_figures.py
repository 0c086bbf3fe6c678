"""Where figures go: a user's run (script, tour or notebook) writes outside the
checkout, fast mode never writes the book's figures/, and only the deliberate
``minigpt tour --book-figures`` (full runs) rewrites them."""
import shutil
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # this test process only; the chapters choose nothing
import matplotlib.pyplot as plt
import pytest

from minigpt import tour
from minigpt.cli import main
from minigpt.errors import MinigptError

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A run with its cache in tmp_path and no figure or fast settings."""
    for var in ("MINIGPT_FIGURES_DIR", "MINIGPT_FAST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MINIGPT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def _book_figures():
    return {p.name: p.read_bytes() for p in tour.BOOK_FIGURES.glob("*.png")}


def test_default_figures_dir_is_the_cache_not_the_checkout(env, monkeypatch):
    assert tour.figures_dir() == env / "cache" / "figures"
    monkeypatch.setenv("MINIGPT_FAST", "1")  # a fast run does not overwrite a full run's figures either
    assert tour.figures_dir() == env / "cache" / "figures-fast"
    monkeypatch.setenv("MINIGPT_FIGURES_DIR", str(env / "mine"))
    assert tour.figures_dir() == env / "mine" and (env / "mine").is_dir()
    assert ROOT not in tour.default_figures_dir(env / "cache").parents


def test_save_figure_as_a_script_saves_closes_and_returns_nothing(env, capsys):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    assert tour.save_figure(fig, "line") is None  # a notebook cell ending in it shows no path
    path = env / "cache" / "figures" / "line.png"
    assert path.read_bytes()[:8] == PNG
    assert not plt.fignum_exists(fig.number)
    assert capsys.readouterr().out == f"wrote {path}\n"


def test_fast_mode_refuses_to_write_the_book_figures(env, monkeypatch):
    before = _book_figures()
    monkeypatch.setenv("MINIGPT_FAST", "1")
    monkeypatch.setenv("MINIGPT_FIGURES_DIR", str(ROOT / "chapters" / ".." / "figures"))  # however spelt
    fig, _ = plt.subplots()
    with pytest.raises(MinigptError, match="fast mode"):
        tour.save_figure(fig, "01_attention")
    plt.close(fig)
    with pytest.raises(MinigptError, match="fast mode"):
        tour.run_tour(["03"], progress=False)
    assert _book_figures() == before


def test_book_figures_refuses_fast_mode_in_one_line(env, monkeypatch, capsys):
    assert main(["tour", "--fast", "--book-figures", "03"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minigpt: error: --book-figures needs full runs"), err
    monkeypatch.setenv("MINIGPT_FAST", "1")
    assert main(["tour", "--book-figures", "03"]) == 2
    assert "MINIGPT_FAST" in capsys.readouterr().err


def test_book_figures_sends_the_chapters_to_figures(env, monkeypatch):
    """--book-figures is the one way into figures/: the chapters get it as their
    MINIGPT_FIGURES_DIR (subprocess stubbed: a real run would rewrite the book)."""
    seen = []
    monkeypatch.setattr(tour.subprocess, "run",
                        lambda argv, env, cwd: seen.append(env) or subprocess.CompletedProcess(argv, 0))
    tour.run_tour(["02"], progress=False, book_figures=True)
    assert [e["MINIGPT_FIGURES_DIR"] for e in seen] == [str(tour.BOOK_FIGURES)]
    assert "MINIGPT_FAST" not in seen[0]
    seen.clear()
    tour.run_tour(["02"], progress=False)
    assert seen[0]["MINIGPT_FIGURES_DIR"] == str(env / "cache" / "figures")


def test_fast_tour_writes_outside_the_checkout(env, capsys, tmp_path_factory):
    """A real fast tour of chapter 3 leaves figures/ as committed and says where its figures are."""
    before = _book_figures()
    cache = tmp_path_factory.getbasetemp() / "minigpt-cache"  # run_chapter's: the fast model is trained once
    tour.run_tour(["03"], cache_dir=cache, fast=True, progress=False)
    out = capsys.readouterr().out
    figs = cache / "figures-fast"
    assert f"figures are in {figs}" in out
    for name in ("03_block_ln", "03_block_gelu"):
        assert (figs / f"{name}.png").read_bytes()[:8] == PNG
    assert _book_figures() == before


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_notebooks_made_from_the_chapters_are_ignored_by_git():
    for rel in ("chapters/03_block.ipynb", "chapters/.ipynb_checkpoints/03_block-checkpoint.ipynb"):
        proc = subprocess.run(["git", "check-ignore", "-q", rel], cwd=ROOT)
        assert proc.returncode == 0, f"{rel} is not ignored"
    assert subprocess.run(["git", "check-ignore", "-q", "figures/03_block_ln.png"], cwd=ROOT).returncode == 1
