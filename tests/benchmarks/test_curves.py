"""``benchmarks/curves.py`` reads every curve at the same fractions of its run, so a 6-epoch
curve is judged over its last quarter, not over "the last five epochs" (all but one)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load_curves():
    sys.path.insert(0, str(BENCH))  # curves.py imports quality.py as its sibling
    try:
        spec = importlib.util.spec_from_file_location("curves_script", BENCH / "curves.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_curves_are_read_at_quarters_of_their_own_run() -> None:
    curves = load_curves()
    assert curves.quarter_marks(20) == ([5, 10, 15, 20], 5)  # the study's table, as before
    assert curves.quarter_marks(6) == ([2, 3, 5, 6], 2)
    assert curves.quarter_marks(1) == ([1, 1, 1, 1], 1)
