"""The progress bar that fits where the code runs.

``tqdm.auto`` switches to tqdm's widget bar inside a Jupyter kernel, and when
ipywidgets is not installed that bar warns "IProgress not found" in every
notebook and falls back to text anyway. Here the widget bar is used only in a
kernel that can draw it (ipywidgets importable); everywhere else, terminal,
script, test or widget-less notebook, the plain text bar, with no warning.
"""
from __future__ import annotations

import importlib.util
import sys


def in_jupyter_kernel() -> bool:
    """True inside an IPython kernel (Jupyter, nbclient); False in a script or terminal IPython."""
    ipython = sys.modules.get("IPython")  # a kernel has always imported it before user code
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def has_widgets() -> bool:
    """True when ipywidgets, which tqdm's notebook bar draws with, can be imported."""
    return importlib.util.find_spec("ipywidgets") is not None


def tqdm_class():
    """tqdm.notebook.tqdm in a kernel with ipywidgets, else the plain text tqdm."""
    if in_jupyter_kernel() and has_widgets():
        from tqdm.notebook import tqdm as bar
    else:
        from tqdm.std import tqdm as bar
    return bar


def tqdm(*args, **kwargs):
    """A progress bar, called like ``tqdm.tqdm``, of the kind that fits (see tqdm_class)."""
    return tqdm_class()(*args, **kwargs)
