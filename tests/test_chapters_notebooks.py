"""Every chapter is a jupytext percent script that opens as a notebook and is
listed in the tour, and every figure the README shows is one a chapter writes."""
import re
from pathlib import Path

import pytest

from minigpt.tour import list_chapters

jupytext = pytest.importorskip("jupytext", reason="jupytext is in the test extra: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = list_chapters()


def test_the_tour_has_the_five_chapters_in_order():
    assert [p.stem for p in CHAPTERS] == ["01_attention", "02_multi_head", "03_block", "04_backprop", "05_training"]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_opens_as_a_notebook(path):
    nb = jupytext.read(path)
    kinds = [c.cell_type for c in nb.cells]
    assert kinds[0] == "markdown" and nb.cells[0].source.startswith("# Chapter")
    assert kinds.count("markdown") >= 5 and kinds.count("code") >= 5
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "## Exercises" in markdown
    # round trip: notebook -> percent script keeps every cell
    again = jupytext.reads(jupytext.writes(nb, fmt="py:percent"), fmt="py:percent")
    assert [c.source for c in again.cells] == [c.source for c in nb.cells]


def test_readme_figures_exist_and_are_small():
    readme = (ROOT / "README.md").read_text()
    shown = re.findall(r"\]\((figures/[\w.]+\.png)\)", readme)
    assert len(shown) >= 5
    for rel in shown:
        path = ROOT / rel
        assert path.is_file(), rel
        assert path.stat().st_size < 200_000, rel  # committed figures stay small PNGs
