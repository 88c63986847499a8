"""A saved model folder and its step count (picoalign.checkpoint)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from picoalign.checkpoint import STEPS_KEY, untrained_note
from picoalign.model import ModelConfig, PicoAligner


def _model() -> PicoAligner:
    return PicoAligner(ModelConfig(image_dim=4, text_dim=4, embed_dim=8))


def _step(model: PicoAligner, n: int = 1) -> None:
    gen = torch.Generator().manual_seed(0)
    img, txt = torch.randn(3, 2, 8, generator=gen), torch.randn(3, 2, 8, generator=gen)
    mask = torch.ones(3, 2, dtype=torch.bool)
    for _ in range(n):
        model.after_step(img, mask, txt, mask, torch.arange(3))


def test_after_step_counts_the_steps_and_a_saved_model_keeps_the_count(tmp_path: Path) -> None:
    model = _model()
    assert model.trained_steps == 0
    _step(model, 3)
    assert model.trained_steps == 3
    model.save(tmp_path / "m")
    loaded = PicoAligner.load(tmp_path / "m")
    assert loaded.trained_steps == 3
    _step(loaded)
    assert loaded.trained_steps == 4  # training a loaded model goes on counting


def test_an_untrained_model_is_named_and_a_trained_or_older_one_is_not(tmp_path: Path) -> None:
    model = _model()
    assert "never trained" in untrained_note(model, "an index")
    _step(model)
    assert untrained_note(model, "an index") is None
    # a model file from before the count (no metadata): unknown, so no warning
    model.save(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    save_file(load_file(str(weights)), str(weights))
    old = PicoAligner.load(tmp_path / "m")
    assert old.trained_steps is None and untrained_note(old, "an index") is None
    _step(old)
    assert old.trained_steps is None


def test_a_malformed_count_is_refused_naming_the_file(tmp_path: Path) -> None:
    model = _model()
    model.save(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    save_file(load_file(str(weights)), str(weights), metadata={STEPS_KEY: "many"})
    with pytest.raises(ValueError, match=rf"{weights}: cannot load .*not a count of steps"):
        PicoAligner.load(tmp_path / "m")


def test_a_run_resumed_keeps_counting_from_its_checkpoint(tmp_path: Path) -> None:
    from picoalign.training.state import Position, restore_last, save_last

    model = _model()
    _step(model, 5)
    opt = torch.optim.AdamW(model.parameters())
    save_last(tmp_path, model, opt, torch.nn.Module(), Position(1, 5, 2.5, 40), [], {})
    fresh = _model()
    restore_last(tmp_path, fresh, torch.optim.AdamW(fresh.parameters()), torch.nn.Module())
    assert fresh.trained_steps == 5


def test_a_model_with_misshapen_weights_is_refused_naming_the_file(tmp_path: Path) -> None:
    _model().save(tmp_path / "m")
    other = tmp_path / "other"
    PicoAligner(ModelConfig(image_dim=4, text_dim=4, embed_dim=16)).save(other)
    shutil.copy(other / "model.safetensors", tmp_path / "m" / "model.safetensors")
    with pytest.raises(ValueError, match=r"m/model.safetensors: cannot load the model weights"):
        PicoAligner.load(tmp_path / "m")
