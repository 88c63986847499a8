"""The per-epoch row helpers: flattened metrics and PICO's p / ω statistics."""

from __future__ import annotations

import torch

from picoalign.core.pico import PICOConfig
from picoalign.model import ModelConfig, PicoAligner
from picoalign.training.history import flat_metrics, pico_stats


def test_flat_metrics_makes_columns_of_nested_numbers_and_drops_the_rest() -> None:
    m = {"i2t": {"r1": 1.0, "r5": 2.0}, "rsum": 9.0, "n_images": 4, "note": "x"}
    assert flat_metrics(m) == {"i2t_r1": 1.0, "i2t_r5": 2.0, "rsum": 9.0, "n_images": 4}


def test_pico_stats_are_empty_for_a_baseline_and_describe_p_for_pico() -> None:
    base = PicoAligner(ModelConfig(image_dim=4, text_dim=4, embed_dim=6, method="baseline"))
    assert pico_stats(base) == {}
    pico = PicoAligner(ModelConfig(image_dim=4, text_dim=4, embed_dim=6, pico=PICOConfig()))
    with torch.no_grad():
        pico.pico.p.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]))
    row = pico_stats(pico)
    assert abs(row["p_min"] - 0.1) < 1e-6 and abs(row["p_max"] - 0.6) < 1e-6
    assert abs(row["p_mean"] - 0.35) < 1e-6 and len(row["p"]) == 6
    assert row["omega"] == [] and row["omega_spread"] == 0.0  # empty bank before training
