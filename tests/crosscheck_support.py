"""Helpers for the tests that compare minigpt with PyTorch / Hugging Face.

Those libraries are the optional extra ``crosscheck``. Without them the
parity tests are skipped with a reason that says how to install them; with
MINIGPT_REQUIRE_CROSSCHECK=1 (set by .ci/run) a missing library is a
failure instead, so a green CI run means the comparisons really ran.
"""
import importlib
import os

import pytest

REQUIRE = os.environ.get("MINIGPT_REQUIRE_CROSSCHECK", "") == "1"
INSTALL = "pip install torch==2.13.0 && pip install -e '.[crosscheck]'"


def need(module: str):
    """Import module, or skip (fail, when required) the calling test module."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if REQUIRE:
            pytest.fail(f"MINIGPT_REQUIRE_CROSSCHECK=1 but {module} cannot be imported ({e})", pytrace=False)
        pytest.skip(f"{module} is not installed; the parity checks need the crosscheck extra: {INSTALL}",
                    allow_module_level=True)
