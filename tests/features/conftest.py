"""Fixtures of the features tests: the tiny drawn dataset of ``toy_data``."""

from toy_data import make_toy, toy_dataset  # noqa: F401 (pytest fixtures, used by name)
