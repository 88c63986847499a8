"""``cli.data_flags``: where ``evaluate`` and ``index`` take their data from when not told."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from picoalign.cli.data_flags import run_data


def _run(tmp_path: Path, **config) -> Path:
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def test_a_run_gives_its_own_data_and_split_seed(tmp_path) -> None:
    run = _run(tmp_path, data="jsonl:/d/data.jsonl", split_seed=3)
    assert run_data(str(run), None, None) == ("jsonl:/d/data.jsonl", 3)
    # the model folder inside the run reads the run's config too
    assert run_data(str(run / "best"), None, None) == ("jsonl:/d/data.jsonl", 3)


def test_what_is_given_wins_over_the_run(tmp_path) -> None:
    run = _run(tmp_path, data="twemoji", split_seed=3)
    assert run_data(str(run), "noto-emoji", 0) == ("noto-emoji", 0)
    assert run_data(str(run), None, 5) == ("twemoji", 5)


def test_a_run_without_split_seed_used_seed_0(tmp_path) -> None:
    assert run_data(str(_run(tmp_path, data="twemoji")), None, None) == ("twemoji", 0)


def test_a_bare_model_folder_needs_data(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"no config\.yaml found; pass --data"):
        run_data(str(tmp_path), None, None)
    assert run_data(str(tmp_path), "twemoji", None) == ("twemoji", 0)
