"""The schedule a resumed run trains on when its number of epochs changes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from picoalign.config import TrainConfig, load_config
from picoalign.training.schedule import continue_schedule, learning_rate


def lrs(cfg: TrainConfig) -> list[float]:
    return [learning_rate(cfg, e) for e in range(int(cfg.epochs))]


def test_a_finished_run_resumed_longer_keeps_the_decays_it_trained_past() -> None:
    """The walkthroughs' report: a finished 2-epoch run resumed to 5 went back to the full lr
    at epoch 3, because lr_steps [0.6, 0.85] are fractions of the new length."""
    saved = TrainConfig(epochs=2, lr=5e-4)  # steps at epochs 1 and 2 (0-based)
    new = replace(saved, epochs=5)
    kept = continue_schedule(saved, new, start=2)
    assert kept.lr_steps == [1, 4]  # the applied decay stays; the other follows the length
    assert lrs(kept)[:2] == lrs(saved)  # what was trained is what the schedule says
    assert lrs(kept) == sorted(lrs(kept), reverse=True)  # the lr never goes back up
    assert lrs(new)[2] > lrs(saved)[1]  # the naive schedule did


def test_an_interrupted_run_resumed_with_other_epochs() -> None:
    saved = TrainConfig(epochs=60)  # steps at 36 and 51
    kept = continue_schedule(saved, replace(saved, epochs=11), start=9)
    assert kept.lr_steps == [9, 9]  # neither was applied: both come at the resume, not before
    assert lrs(kept)[:9] == lrs(saved)[:9]
    kept = continue_schedule(saved, replace(saved, epochs=100), start=40)
    assert kept.lr_steps == [36, 85]


def test_nothing_changes_where_the_schedule_does_not_move() -> None:
    saved = TrainConfig(epochs=4, lr_steps=[8])
    new = replace(saved, epochs=10)
    assert continue_schedule(saved, new, start=4) is new  # epochs, not fractions
    fine = TrainConfig(epochs=1)
    longer = replace(fine, epochs=2)
    assert continue_schedule(fine, longer, start=1) is longer  # no decay was passed
    assert continue_schedule(saved, saved, start=2) is saved


def test_a_decay_at_epoch_0_is_written_and_read_back(tmp_path: Path) -> None:
    saved = TrainConfig(epochs=4, lr_steps=[0.1, 0.9])  # steps at epochs 0 and 4
    kept = continue_schedule(saved, replace(saved, epochs=8), start=4)
    assert kept.lr_steps == [0, 7]
    path = tmp_path / "config.yaml"
    from picoalign.config import dump_config

    path.write_text(dump_config(kept))
    assert load_config(path).lr_steps == [0, 7]


def test_a_resume_inside_an_epoch_keeps_that_epochs_step(tmp_path: Path, make_feature_set) -> None:
    """The walkthrough's report: Ctrl-C inside epoch 3 of 3 (already at the lower lr), then
    --resume --epochs 10, trained the rest of epoch 3 at the full lr again."""
    import json

    import torch

    from picoalign.training.loop import train

    fs = make_feature_set(n=32)
    over = {
        "data": "synthetic", "out": str(tmp_path / "run"), "epochs": 3, "batch_size": 4,
        "device": "cpu", "amp": False, "progress": False, "model.method": "baseline",
        "model.embed_dim": 8,
    }  # fmt: skip
    done = train(load_config(None, over), fs)  # lr steps at epochs 2 and 3 (0-based)
    state_path = tmp_path / "run" / "last" / "state.pt"
    state = torch.load(state_path, weights_only=False)
    state["position"] = [2, 1, 4]  # as a Ctrl-C after the first batch of epoch 3 leaves it
    state["history"] = json.dumps(done.history[:2])
    torch.save(state, state_path)
    resumed = train(load_config(None, {**over, "epochs": 10}), fs, resume=True)
    assert load_config(tmp_path / "run" / "config.yaml").lr_steps == [2, 8]
    lrs_logged = [row["lr"] for row in resumed.history]
    assert lrs_logged[2] == pytest.approx(done.history[2]["lr"])  # epoch 3 stays stepped down
    assert lrs_logged == sorted(lrs_logged, reverse=True)
    assert continue_schedule(TrainConfig(epochs=3), TrainConfig(epochs=10), start=3).lr_steps == [
        2,
        8,
    ]
