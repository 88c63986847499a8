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


@pytest.mark.parametrize(
    ("files", "says"),
    [
        ({"config.json": '{"my": "settings"}'}, "not a picoalign model config"),
        ({"config.json": '{"model_type": "bert"}', "model.safetensors": b"x"}, "not a picoalign"),
        ({"model.safetensors": b"weights of my own"}, "no picoalign config.json beside it"),
        ({"config.json": "{}"}, "not a picoalign model config .no image_encoder"),
    ],
)
def test_overwrite_replaces_only_a_saved_model_never_the_users_files(
    tmp_path: Path, files: dict, says: str
) -> None:
    """The API walkthrough: ``save(dir)`` said "holds a saved model; pass overwrite=True" for a
    folder holding the user's own config.json, and ``overwrite=True`` then replaced it."""
    folder = tmp_path / "own"
    folder.mkdir()
    for name, content in files.items():
        p = folder / name
        p.write_bytes(content) if isinstance(content, bytes) else p.write_text(content)
    with pytest.raises(ValueError, match=says):
        _model().save(folder, overwrite=True)
    for name, content in files.items():  # untouched
        p = folder / name
        assert (p.read_bytes() if isinstance(content, bytes) else p.read_text()) == content


def test_an_interrupted_overwrite_leaves_the_old_model_whole(tmp_path: Path, monkeypatch) -> None:
    """The two files were written one after the other: a stop between them left the new
    weights beside the old config, a model that no longer loaded, and the old one lost."""
    import picoalign.checkpoint as checkpoint

    _model().save(tmp_path / "m")
    write_weights = checkpoint.save_file

    def weights_then_stop(*args: object, **kw: object) -> None:
        write_weights(*args, **kw)  # the new weights are written in full, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_file", weights_then_stop)
    wider = PicoAligner(ModelConfig(image_dim=4, text_dim=4, embed_dim=16))
    with pytest.raises(KeyboardInterrupt):
        wider.save(tmp_path / "m", overwrite=True)
    assert PicoAligner.load(tmp_path / "m").config.embed_dim == 8
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]  # no temporary file left


@pytest.mark.parametrize("where", ["cwd", "dot", "symlink"])
def test_a_model_is_saved_into_the_current_folder_or_through_a_link(
    tmp_path: Path, monkeypatch, where: str
) -> None:
    """The re-test of the folder swap that save briefly used: saving into the current
    folder left the process in a deleted folder ("." failed), and a symlink was replaced by
    a folder of its own while the linked folder kept the old model."""
    real = tmp_path / "real"
    real.mkdir()
    _model().save(real)
    if where == "symlink":
        (tmp_path / "link").symlink_to(real)
        target: Path | str = tmp_path / "link"
    else:
        monkeypatch.chdir(real)
        target = "." if where == "dot" else real
    model = _model()
    _step(model, 2)
    model.save(target, overwrite=True)
    assert PicoAligner.load(real).trained_steps == 2
    assert Path.cwd().exists()
    if where == "symlink":
        assert (tmp_path / "link").is_symlink()
    assert sorted(p.name for p in real.iterdir()) == ["config.json", "model.safetensors"]


def test_load_state_dict_makes_the_step_count_unknown() -> None:
    """Trained weights loaded into a fresh model are not "never trained"."""
    trained = _model()
    _step(trained, 3)
    fresh = _model()
    fresh.load_state_dict(trained.state_dict())
    assert fresh.trained_steps is None and untrained_note(fresh, "an index") is None


def test_a_model_is_saved_and_loaded_under_home(tmp_path: Path, monkeypatch) -> None:
    """``save("~/m")`` made a folder named ``~`` in the current folder (the CLI expands it)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    model = _model()
    _step(model)
    model.save("~/m")
    assert (tmp_path / "home" / "m" / "model.safetensors").is_file()
    assert not (tmp_path / "~").exists()
    assert PicoAligner.load("~/m").trained_steps == 1


def test_a_missing_checkpoint_or_a_file_in_its_place_is_named_as_such(tmp_path: Path) -> None:
    """The CLI walkthrough: ``evaluate runs/nope`` said "(no runs/nope/config.json)", and
    ``evaluate runs/a/config.yaml`` looked for ``runs/a/config.yaml/config.json``."""
    with pytest.raises(FileNotFoundError, match=r"not found \(no such file or folder"):
        PicoAligner.load(tmp_path / "nope")
    _model().save(tmp_path / "m")
    with pytest.raises(
        FileNotFoundError, match=rf"a file: give the model or run folder .*{tmp_path}/m"
    ):
        PicoAligner.load(tmp_path / "m" / "config.json")
