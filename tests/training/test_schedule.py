"""The schedule a resumed run trains on when its number of epochs changes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

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
