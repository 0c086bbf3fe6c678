"""plugged(module): a student's functions inside minigpt, for a `with` block."""
from __future__ import annotations

from contextlib import contextmanager

from .assignments import get
from .markers import ClassroomError
from .swap import library_object, swapped


@contextmanager
def plugged(module):
    """Within the block, every place in minigpt that holds one of the
    assignment's library functions (or classes) holds the student's instead:
    module attributes, the NumPy op table, minigpt.train's AdamW, ...
    module: the student's hw_NAME module. Restored on exit."""
    name = module.__name__.rsplit(".", 1)[-1]
    if not name.startswith("hw_"):
        raise ClassroomError(f"plugged() takes a student module hw_NAME, got {module.__name__}")
    a = get(name[3:])
    pairs = []
    for ref in a.units():
        lib_module, top = ref.split(":")
        if not hasattr(module, top):
            raise ClassroomError(f"{module.__name__} has no {top}")
        pairs.append((library_object(lib_module, top), getattr(module, top)))
    with swapped(pairs):
        yield module
