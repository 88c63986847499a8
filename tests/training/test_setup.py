"""Building a run (:mod:`picoalign.training.setup`): the data split, the optimiser's groups."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_loop import make_cfg

from picoalign.config import load_config
from picoalign.training import runs, setup
from picoalign.training.loop import train
from picoalign.training.setup import param_groups

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_the_data_split_follows_split_seed_not_the_training_seed(
    tmp_path: Path, make_feature_set, monkeypatch
) -> None:
    seen = []

    def fake_features(data, image_encoder, text_encoder, *, seed, **kw):
        seen.append(seed)
        return make_feature_set(n=24)

    monkeypatch.setattr(setup, "dataset_features", fake_features)
    for seed in (0, 5):
        train(make_cfg(tmp_path / f"s{seed}", epochs=1, seed=seed, split_seed=3), write=False)
    assert seen == [3, 3]  # seeds vary only the training; every seed sees the same split


class _Backboned(torch.nn.Module):
    """Named as PicoAligner names its parts: heads at the top, backbones under a prefix."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(2, 2)
        self.text_backbone = torch.nn.Linear(2, 2)
        self.image_backbone = torch.nn.Linear(2, 2)


def test_param_groups_put_fine_tuned_backbones_at_their_own_lr_multiplier() -> None:
    model = _Backboned()
    extra = torch.nn.Parameter(torch.zeros(1))  # a loss's own parameter: trained at the base lr
    params = [*model.parameters(), extra]
    heads, backbones = param_groups(model, params, 0.1)  # type: ignore[arg-type]
    assert heads["lr_mult"] == 1.0 and backbones["lr_mult"] == 0.1
    assert {id(p) for p in heads["params"]} == {id(p) for p in (*model.head.parameters(), extra)}
    want = {id(p) for m in (model.text_backbone, model.image_backbone) for p in m.parameters()}
    assert {id(p) for p in backbones["params"]} == want


def test_param_groups_without_backbones_is_one_group() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    groups = param_groups(model, list(model.parameters()), 0.1)  # type: ignore[arg-type]
    assert len(groups) == 1 and groups[0]["lr_mult"] == 1.0


class _Encoded(Exception):
    """Raised by the stand-in encoder: where it was asked to run is all the test needs."""


def test_a_run_encodes_its_data_on_its_own_device(monkeypatch, tmp_path, write_jsonl_dataset):
    """The GPU review: ``train --device cuda`` ran the frozen encoders (ViT, BERT) on the
    CPU, since the features were always encoded there. (CUDA is stood in for; the encoding
    stops at once.)"""
    from picoalign.features import dataset as dataset_mod
    from picoalign.training.loop import train

    data = write_jsonl_dataset(tmp_path / "data")
    seen = {}

    def encode(*args, **kwargs):
        seen.update(kwargs)
        raise _Encoded

    monkeypatch.setattr(dataset_mod, "encode_dataset", encode)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = load_config(None, {
        "data": f"jsonl:{data}", "out": str(tmp_path / "run"), "device": "cuda",
        "progress": False, "model.image_encoder": "random-conv",
        "model.text_encoder": "hash-text", "cache_dir": str(tmp_path / "cache"),
    })  # fmt: skip
    with pytest.raises(_Encoded):
        train(cfg)
    assert seen["device"] == torch.device("cuda")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("epochs", "warned"), [(3, True), (4, False)])
def test_a_pico_run_whose_warm_up_leaves_no_step_using_p_is_warned(
    tmp_path, make_feature_set, capsys, epochs: int, warned: bool
) -> None:
    """The walkthrough's report: with one step an epoch and a 2-epoch warm-up, a 3-epoch PICO
    run trained exactly the baseline (p is first updated after step 3, used by none), and
    the warning came only when the warm-up covered every epoch."""
    fs = make_feature_set(n=24)
    n = fs.split("train").n_captions
    cfg = load_config(None, {
        "data": "synthetic", "out": str(tmp_path / "run"), "epochs": epochs, "batch_size": n,
        "pico_warmup_epochs": 2, "progress": False, "device": "cpu",
        "model.method": "pico", "model.embed_dim": 8, "model.pico.feedback_size": 8,
    })  # fmt: skip
    train(cfg, fs)
    err = capsys.readouterr().err
    assert ("leaves no training step that uses p" in err) is warned, err


def test_an_lr_step_past_the_last_epoch_is_warned(tmp_path, make_feature_set, capsys) -> None:
    """The walkthrough's report: --set lr_steps=[5] with --epochs 2 changed nothing, silently."""
    fs = make_feature_set(n=24)
    base = {"data": "synthetic", "epochs": 2, "progress": False, "device": "cpu",
            "model.embed_dim": 8, "model.method": "baseline"}  # fmt: skip
    train(load_config(None, {**base, "out": str(tmp_path / "a"), "lr_steps": [5]}), fs)
    assert "puts a step at epoch 6 (lr_steps count epochs from 0), past the run's 2" in (
        capsys.readouterr().err
    )
    for i, steps in enumerate(([0.6, 1], [0.6, 0.85])):  # 0.85 of 2 epochs rounds to the end
        train(load_config(None, {**base, "out": str(tmp_path / f"b{i}"), "lr_steps": steps}), fs)
        assert "past the run's" not in capsys.readouterr().err
    # the adversarial test: every resume of b1 to 3 epochs, then 4, warned of a step at the
    # end of the schedule the run kept (continue_schedule), a step the user never set
    for _ in range(2):  # as `train --out b1 --resume --epochs 3` reads it: config.yaml
        train(load_config(tmp_path / "b1" / "config.yaml", {"epochs": 3}), fs, resume=True)
        assert "past the run's" not in capsys.readouterr().err
    assert load_config(tmp_path / "b1" / "config.yaml").lr_steps[-1] >= 3  # the kept step


def test_a_runs_files_are_compared_only_when_both_read_them_alike() -> None:
    """Since the inode joined a user file's identity, every fingerprint of user data moved
    once: a run recorded before (no ``file_identity``) must not be told that its files all
    changed; other items are other data whatever the record."""
    from picoalign.data.records import FILE_IDENTITY

    now = {"items_fingerprint": "i1", "fingerprint": "f2", "file_identity": FILE_IDENTITY}
    old_run = {"items_fingerprint": "i1", "fingerprint": "f1"}
    assert runs.data_change(old_run, now) is None
    assert runs.data_change({**old_run, "file_identity": FILE_IDENTITY}, now) == (
        "files",
        "f1",
        "f2",
    )
    assert runs.data_change({**old_run, "items_fingerprint": "i0"}, now) == ("items", "i0", "i1")
