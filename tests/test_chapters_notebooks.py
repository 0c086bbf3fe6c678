"""Every chapter is a jupytext percent script that opens as a notebook and is
listed in the tour, and every figure the README shows is one a chapter writes.
Executed as a notebook, a chapter shows each figure inline (and saves it outside
the checkout), and its progress bars draw without a warning."""
import io
import re
import sys
from pathlib import Path

import pytest

from minigpt.tour import list_chapters

jupytext = pytest.importorskip("jupytext", reason="jupytext is in the test extra: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = list_chapters()


def test_the_tour_has_its_chapters_in_order():
    stems = [p.stem for p in CHAPTERS]
    assert stems[:5] == ["01_attention", "02_multi_head", "03_block", "04_backprop", "05_training"]
    assert "07_quantization" in stems
    numbers = [int(s[:2]) for s in stems]
    assert numbers == sorted(set(numbers))  # one chapter a number, in the tour's order


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


# --- executed as a notebook: figures inline, the right progress bar ----------

def _book_figures():
    return {p.name: p.read_bytes() for p in (ROOT / "figures").glob("*.png")}


def _execute_as_notebook(stem, tmp_path, monkeypatch):
    """Execute chapters/<stem>.py as Jupyter would (jupytext -> nbclient -> ipykernel),
    in fast mode with an empty cache (so the chapter trains and draws a progress
    bar) and figures in their default place. Returns the executed notebook."""
    nbclient = pytest.importorskip("nbclient", reason="nbclient is in the test extra: pip install -e '.[test]'")
    pytest.importorskip("ipykernel", reason="ipykernel is in the test extra: pip install -e '.[test]'")
    monkeypatch.setenv("MINIGPT_FAST", "1")
    monkeypatch.setenv("MINIGPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MINIGPT_FIGURES_DIR", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own (inline) backend, as in Jupyter
    nb = jupytext.read(ROOT / "chapters" / f"{stem}.py")
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "chapters")}}).execute()
    return nb


def _output_text(out):
    if out.output_type == "stream":
        return out.text
    if out.output_type == "error":
        return f"{out.ename}: {out.evalue}"
    return str(out.get("data", {}).get("text/plain", ""))


@pytest.mark.parametrize("stem", [
    "03_block",  # trains a 30-step model and draws two figures in ~5 s
    *(pytest.param(p.stem, marks=pytest.mark.slow) for p in CHAPTERS if p.stem != "03_block"),
])
def test_chapter_executed_as_notebook_shows_its_figures_inline(stem, tmp_path, monkeypatch):
    import base64

    before = _book_figures()
    nb = _execute_as_notebook(stem, tmp_path, monkeypatch)
    code = [c for c in nb.cells if c.cell_type == "code"]
    texts = [_output_text(o) for c in code for o in c.outputs]

    # every cell that saves a figure shows it, once, as the very PNG it saved
    figure_cells = [c for c in code if "save_figure(" in c.source]
    assert figure_cells
    saved = tmp_path / "cache" / "figures-fast"
    for cell in figure_cells:
        pngs = [base64.b64decode(o.data["image/png"]) for o in cell.outputs if "image/png" in o.get("data", {})]
        names = [line.split("wrote ")[-1].strip() for o in cell.outputs if o.output_type == "stream"
                 for line in o.text.splitlines() if line.startswith("wrote ")]
        assert len(pngs) == cell.source.count("save_figure(") == len(names), cell.source[-200:]
        for png, name in zip(pngs, names):
            assert Path(name).parent == saved and Path(name).read_bytes() == png
    assert not any("PosixPath" in t or "<Figure size" in t for t in texts)

    # the progress bar drew (a fast model was trained) and nothing warned
    if "trained_model(" in (ROOT / "chapters" / f"{stem}.py").read_text():
        assert any("30/30" in t for t in texts)
    assert not any("Warning" in t or "IProgress" in t for t in texts)
    # the book's figures in the checkout are untouched
    assert _book_figures() == before


# --- which progress bar: the widget only where it can be drawn ---------------

class _FakeShell:
    kernel = object()  # what marks an IPython kernel (terminal IPython has none)


@pytest.fixture
def fake_kernel(monkeypatch):
    import types

    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: _FakeShell()
    monkeypatch.setitem(sys.modules, "IPython", fake)


def test_progress_bar_is_plain_text_outside_a_kernel():
    from tqdm.std import tqdm as text_bar

    from minigpt import progress

    assert not progress.in_jupyter_kernel()
    assert progress.tqdm_class() is text_bar


def test_progress_bar_in_a_kernel_without_ipywidgets_is_text_and_silent(fake_kernel, monkeypatch):
    import warnings

    from tqdm.std import tqdm as text_bar

    from minigpt import progress

    monkeypatch.setattr(progress, "has_widgets", lambda: False)
    assert progress.in_jupyter_kernel()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tqdm.auto here would warn "IProgress not found"
        bar = progress.tqdm(total=3, file=io.StringIO())
        bar.update(3)
        bar.close()
    assert type(bar) is text_bar


def test_progress_bar_in_a_kernel_with_ipywidgets_is_the_widget(fake_kernel, monkeypatch):
    from tqdm.notebook import tqdm as widget_bar

    from minigpt import progress

    monkeypatch.setattr(progress, "has_widgets", lambda: True)
    assert progress.tqdm_class() is widget_bar
