"""The first-stage registry (picoalign.retrieval.first_stage)."""

from __future__ import annotations

import numpy as np
import pytest

from picoalign.retrieval.first_stage import STAGES
from picoalign.retrieval.manifest import STAGE_SETTINGS


@pytest.mark.parametrize("name", list(STAGES))
def test_each_stage_builds_an_index_it_recognises_and_no_other_kind(name: str) -> None:
    stage = STAGES[name]
    x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # unit rows, as pooled embeddings are
    settings = stage.settings(len(x), None, None)
    assert tuple(settings) == stage.fields == STAGE_SETTINGS[name]  # what the manifest checks
    index = stage.build(x, settings)
    index.add(x)
    stage.tune(index, settings, 10, None)
    _, rows = index.search(x[:3], 1)
    assert rows[:, 0].tolist() == [0, 1, 2]  # each vector finds itself (inner product)
    for other, kind in STAGES.items():
        if other != name:
            other_index = kind.build(x, kind.settings(len(x), None, None))
            assert not stage.matches(other_index, settings), other


def test_ivf_settings_follow_the_gallery_and_keep_nprobe_within_nlist() -> None:
    ivf = STAGES["ivf"]
    assert ivf.settings(100, None, None) == {"nlist": 10, "nprobe": 10}
    assert ivf.settings(10_000, None, None) == {"nlist": 100, "nprobe": 32}
    assert ivf.settings(5, 50, 7) == {"nlist": 5, "nprobe": 5}
