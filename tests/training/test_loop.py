"""The training loop on a synthetic FeatureSet: learning, data order, resume, failures, files."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
from math import comb
from pathlib import Path
from typing import Any

import pytest
import torch

from picoalign.config import TrainConfig, load_config
from picoalign.evaluation import SMALL_SPLIT
from picoalign.features.encode import FeatureSet, TokenFeatures
from picoalign.fileio import safe_torch_load
from picoalign.model import PicoAligner
from picoalign.training.devices import resolve_device
from picoalign.training.loop import TrainingError, batch_order, learning_rate, train

# tiny tensors: one intra-op thread avoids thread hand-offs that dominate on a loaded CPU
pytestmark = pytest.mark.usefixtures("torch_single_thread")


def make_cfg(out: Path, **overrides: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "data": "synthetic",
        "out": str(out),
        "epochs": 4,
        "batch_size": 16,
        "lr": 5e-3,
        # epoch numbers, not fractions: a run cut short by ``epochs=2`` and resumed to 4 then
        # follows the same schedule as an uninterrupted one
        "lr_steps": [8],
        "pico_warmup_epochs": 1,
        "device": "cpu",
        "amp": False,
        "progress": False,
        "model.embed_dim": 16,
        "model.image_encoder": "random-conv",
        "model.text_encoder": "hash-text",
        "model.pico.feedback_size": 16,
    }
    return load_config(None, {**base, **overrides})


def chance_rsum(n_images: int, captions_per_image: int) -> float:
    """Expected rSum (R@1/5/10 both ways, %) of random scores."""
    n_cap = n_images * captions_per_image
    t2i = sum(min(k, n_images) / n_images for k in (1, 5, 10))
    i2t = sum(
        1 - comb(n_cap - captions_per_image, k) / comb(n_cap, k) if k <= n_cap else 1.0
        for k in (1, 5, 10)
    )
    return 100 * (t2i + i2t)


def state_of(path: Path) -> dict[str, torch.Tensor]:
    return PicoAligner.load(path).state_dict()


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        torch.testing.assert_close(a[k].double(), b[k].double(), atol=atol, rtol=0, msg=k)


def without_time(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


# ---------------------------------------------------------------------------------- learning


@pytest.mark.parametrize(
    "method, extra",
    [
        ("global", {}),
        ("baseline", {}),
        ("pico", {"model.pico.reading": "global"}),  # reading A, plain evaluation
        ("pico", {}),  # the defaults: reading B as a training rule, plain evaluation
        ("pico", {"model.pico.reading": "pair", "model.pico.eval_score": "weighted"}),
    ],
    ids=["global", "baseline", "pico-global", "pico-default", "pico-pair"],
)
def test_training_learns_the_planted_signal(make_feature_set, method: str, extra: dict) -> None:
    fs = make_feature_set()
    cfg = make_cfg(
        Path("unused"),
        epochs=5,
        triplet_warmup_epochs=0,  # the same loss every epoch, so losses are comparable
        margin=0.2,  # a margin the tiny synthetic problem can satisfy: the loss must halve
        **{"model.method": method},
        **extra,
    )
    result = train(cfg, fs, write=False)
    hist = result.history
    assert [row["epoch"] for row in hist] == [1, 2, 3, 4, 5]
    assert all(math.isfinite(row["loss"]) for row in hist)
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]
    val = fs.split("val")
    chance = chance_rsum(val.n_images, 2)
    assert hist[-1]["val_n_images"] == val.n_images
    assert hist[-1]["val_rsum"] > chance + 150, (hist[-1]["val_rsum"], chance)
    assert result.best["rsum"] == max(row["val_rsum"] for row in hist)
    if method == "pico":
        p = torch.tensor(hist[-1]["p"])
        assert p.shape == (16,) and (p >= 0).all() and (p <= 1 + 1e-6).all()
        assert hist[-1]["p_min"] < 1.0  # PICO's state moved after warm-up
        assert int(result.model.pico.steps) > 0
    else:
        assert "p" not in hist[-1]
    assert result.out is None  # write=False: nothing on disk


def test_batch_order_is_a_pure_function_of_seed_and_epoch() -> None:
    a = batch_order(50, 8, seed=3, epoch=2)
    b = batch_order(50, 8, seed=3, epoch=2)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert torch.cat(a).tolist() != torch.cat(batch_order(50, 8, seed=3, epoch=3)).tolist()
    assert torch.cat(a).tolist() != torch.cat(batch_order(50, 8, seed=4, epoch=2)).tolist()
    # global torch RNG state plays no part
    torch.manual_seed(123)
    c = batch_order(50, 8, seed=3, epoch=2)
    assert [x.tolist() for x in a] == [x.tolist() for x in c]


@pytest.mark.parametrize("n, bs", [(50, 8), (48, 16), (7, 128), (2, 2), (34, 16)])
def test_batch_order_covers_every_caption_once(n: int, bs: int) -> None:
    for epoch in range(3):
        batches = batch_order(n, bs, seed=0, epoch=epoch)
        flat = torch.cat(batches)
        assert sorted(flat.tolist()) == list(range(n))
        assert all(2 <= len(x) <= bs for x in batches)


def test_batch_order_drops_only_a_single_leftover_caption() -> None:
    # a batch of one has no negatives: it is dropped (a different caption each epoch)
    dropped = set()
    for epoch in range(6):
        flat = torch.cat(batch_order(33, 16, seed=0, epoch=epoch)).tolist()
        assert len(flat) == len(set(flat)) == 32
        dropped |= set(range(33)) - set(flat)
    assert len(dropped) > 1


def test_lr_steps_as_fractions_keep_the_schedule_shape_when_epochs_change(tmp_path) -> None:
    for epochs, steps in ((20, [12, 17]), (40, [24, 34]), (10, [6, 8])):
        cfg = make_cfg(tmp_path, epochs=epochs, lr=1.0, lr_steps=[0.6, 0.85], lr_gamma=0.5)
        assert cfg.lr_step_epochs() == steps
        lrs = [learning_rate(cfg, e) for e in range(epochs)]
        assert lrs.index(0.5) == steps[0] and lrs.index(0.25) == steps[1]
    with pytest.raises(ValueError, match="lr_steps"):
        make_cfg(tmp_path, lr_steps=[0.5, -1])


@pytest.mark.parametrize("select", ["last", "val"])
def test_select_decides_which_epoch_best_holds(tmp_path: Path, make_feature_set, select) -> None:
    cfg = make_cfg(tmp_path, epochs=3, select=select, **{"model.method": "baseline"})
    result = train(cfg, make_feature_set(n=24))
    rsums = [row["val_rsum"] for row in result.history]
    want = 3 if select == "last" else 1 + rsums.index(max(rsums))
    assert result.best["epoch"] == want and result.best["rsum"] == rsums[want - 1]
    saved = PicoAligner.load(tmp_path / "best")
    if select == "last":  # the final weights, bit for bit
        for k, v in result.model.state_dict().items():
            assert torch.equal(saved.state_dict()[k], v), k
    with pytest.raises(ValueError, match="select"):
        make_cfg(tmp_path, select="best")


def test_learning_rate_step_schedule(tmp_path: Path, make_feature_set) -> None:
    cfg = make_cfg(tmp_path, lr=0.01, lr_steps=[1, 3], lr_gamma=0.5)
    assert [learning_rate(cfg, e) for e in range(4)] == pytest.approx([0.01, 0.005, 0.005, 0.0025])
    cfg = make_cfg(tmp_path / "run", epochs=3, lr=0.01, lr_steps=[2], lr_gamma=0.1)
    cfg.model.method = "baseline"
    hist = train(cfg, make_feature_set(n=24)).history
    assert [row["lr"] for row in hist] == pytest.approx([0.01, 0.01, 0.001])
    state = safe_torch_load(tmp_path / "run" / "last" / "state.pt")
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.001)


# ---------------------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    "overrides",
    [
        {"model.method": "pico"},  # PICO buffers, heldout feedback, triplet warm-up switch
        {"model.method": "baseline", "loss": "infonce", "lr_steps": [3]},  # loss parameters
    ],
    ids=["pico-triplet", "baseline-infonce"],
)
@pytest.mark.parametrize("delete_best", [False, True], ids=["keep-best", "delete-best"])
def test_resume_equals_an_uninterrupted_run(
    tmp_path: Path, make_feature_set, overrides: dict, delete_best: bool
) -> None:
    fs = make_feature_set(n=40)
    full = train(make_cfg(tmp_path / "full", **overrides), fs)

    part = tmp_path / "part"
    first = train(make_cfg(part, epochs=2, **overrides), fs)
    assert len(first.history) == 2
    if delete_best:
        shutil.rmtree(part / "best")
    resumed = train(make_cfg(part, **overrides), fs, resume=True)

    assert without_time(resumed.history) == without_time(full.history)
    assert_same_state(resumed.model.state_dict(), full.model.state_dict(), atol=1e-6)
    assert_same_state(state_of(part / "last"), state_of(tmp_path / "full" / "last"), atol=1e-6)
    assert len((part / "metrics.jsonl").read_text().splitlines()) == 4
    assert load_config(part / "config.yaml").epochs == 4
    # best/ exists and agrees with result.best
    assert (part / "best" / "model.safetensors").is_file()
    if not delete_best or full.best["epoch"] > 2:
        assert resumed.best == full.best
        assert_same_state(state_of(part / "best"), state_of(tmp_path / "full" / "best"), 1e-6)
    else:  # the lost best epoch cannot be restored: best of the epochs trained after resuming
        assert resumed.best["epoch"] > 2
    if resumed.best["epoch"] == 4:
        assert_same_state(state_of(part / "best"), state_of(part / "last"), atol=0)


def test_resume_after_deleting_best_names_the_model_it_saves(
    tmp_path: Path, make_feature_set
) -> None:
    """With best/ gone and no later epoch beating the lost one, best/ and result.best must
    still describe the same model (not the lost epoch's metrics with another model's weights)."""
    fs = make_feature_set(n=24)
    over = {"model.method": "baseline"}
    train(make_cfg(tmp_path, epochs=2, **over), fs)
    shutil.rmtree(tmp_path / "best")
    # a vanishing learning rate: epoch 3 cannot beat epoch 2
    resumed = train(make_cfg(tmp_path, epochs=3, lr=1e-12, **over), fs, resume=True)
    assert resumed.best["epoch"] == 3
    assert resumed.best["rsum"] == resumed.history[-1]["val_rsum"]
    assert_same_state(state_of(tmp_path / "best"), state_of(tmp_path / "last"), atol=0)


def test_a_failed_checkpoint_write_leaves_best_last_and_metrics_as_they_were(
    tmp_path: Path, make_feature_set, monkeypatch
) -> None:
    """The adversarial test: a resume on a full disk wrote best/ (epoch 2) and then failed on
    last/, so the finished run's selected model was one its metrics and last/ never had."""
    from picoalign.fileio import WriteError
    from picoalign.training import setup

    fs = make_feature_set(n=24)
    over = {"model.method": "baseline", "select": "last"}
    train(make_cfg(tmp_path, epochs=1, **over), fs)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def full(*args, **kwargs):
        raise WriteError(f"{tmp_path / 'last'}: cannot write it (No space left on device)")

    monkeypatch.setattr(setup, "save_last", full)
    with pytest.raises(WriteError):
        train(make_cfg(tmp_path, epochs=2, **over), fs, resume=True)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after.keys() == before.keys()
    # config.yaml too: it said epochs 2, and a later --resume trained a second epoch that
    # this failed resume never started
    assert [p.name for p in before if after[p] != before[p]] == []


def test_a_resume_stopped_before_its_checkpoint_leaves_the_run_files(
    tmp_path: Path, make_feature_set, monkeypatch
) -> None:
    """Ctrl-C in the first epoch of ``--resume --epochs 3`` left config.yaml saying 3."""
    from picoalign.training import loop

    fs = make_feature_set(n=24)
    over = {"model.method": "baseline"}
    train(make_cfg(tmp_path, epochs=1, **over), fs)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_train_step", stopped)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(tmp_path, epochs=3, **over), fs, resume=True)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
    monkeypatch.undo()
    train(make_cfg(tmp_path, epochs=3, **over), fs, resume=True)  # and once it checkpoints:
    assert "epochs: 3" in (tmp_path / "config.yaml").read_text()


def test_resume_without_checkpoint_is_an_error(tmp_path: Path, make_feature_set) -> None:
    with pytest.raises(FileNotFoundError, match="last"):
        train(make_cfg(tmp_path / "empty"), make_feature_set(n=24), resume=True)


def test_resume_of_a_finished_run_trains_nothing(tmp_path: Path, make_feature_set) -> None:
    fs = make_feature_set(n=24)
    cfg = make_cfg(tmp_path, epochs=2, **{"model.method": "baseline"})
    done = train(cfg, fs)
    again = train(make_cfg(tmp_path, epochs=2, **{"model.method": "baseline"}), fs, resume=True)
    assert again.history == done.history
    assert_same_state(again.model.state_dict(), done.model.state_dict(), atol=0)


# ---------------------------------------------------------------------------------- failures


def with_nan_caption(fs: FeatureSet, caption: int) -> FeatureSet:
    tokens = fs.texts.tokens.clone()
    tokens[caption, 0, 0] = float("nan")  # a real token (every caption has >= 2)
    return FeatureSet(
        images=fs.images,
        texts=TokenFeatures(tokens, fs.texts.mask),
        caption_image=fs.caption_image,
        image_keys=fs.image_keys,
        captions=fs.captions,
        meta=fs.meta,
        image_splits=fs.image_splits,
        image_groups=fs.image_groups,
    )


def test_nan_features_raise_training_error_and_keep_last_checkpoint(
    tmp_path: Path, make_feature_set
) -> None:
    fs = make_feature_set(n=24)
    over = {"model.method": "pico"}
    train(make_cfg(tmp_path, epochs=2, **over), fs)
    good = state_of(tmp_path / "last")
    good_state = safe_torch_load(tmp_path / "last" / "state.pt")

    bad_caption = 5  # a train caption (the first half of the images are train)
    bad = with_nan_caption(fs, bad_caption)
    cfg = make_cfg(tmp_path, epochs=4, **over)
    batches = batch_order(bad.split("train").n_captions, cfg.batch_size, cfg.seed, epoch=2)
    step = next(i for i, b in enumerate(batches) if bad_caption in b.tolist()) + 1
    with pytest.raises(TrainingError) as info:
        train(cfg, bad, resume=True)
    msg = str(info.value)
    assert f"epoch 3, step {step}" in msg and "non-finite loss" in msg
    assert str(tmp_path / "last") in msg
    # the last good checkpoint is untouched and loadable
    assert_same_state(state_of(tmp_path / "last"), good, atol=0)
    position = safe_torch_load(tmp_path / "last" / "state.pt")["position"]
    assert position == good_state["position"] == [2, 0, 0]  # the start of epoch 3
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    PicoAligner.load(tmp_path / "best")
    assert not list(tmp_path.rglob("*.tmp"))


def test_nan_in_the_first_epoch_names_epoch_one(tmp_path: Path, make_feature_set) -> None:
    bad = with_nan_caption(make_feature_set(n=24), 0)
    with pytest.raises(TrainingError, match=r"epoch 1, step \d+"):
        train(make_cfg(tmp_path, epochs=2, **{"model.method": "baseline"}), bad)


def test_too_few_train_captions_is_a_value_error(make_feature_set) -> None:
    fs = make_feature_set(n=8).subset([0, 1, 2, 7])
    fs.image_splits = ["val", "val", "val", "train"]  # one train image, two captions: enough
    train(make_cfg(Path("unused"), epochs=1), fs, write=False)
    fs.image_splits = ["val", "val", "val", "test"]
    with pytest.raises(ValueError, match="fewer than 2 captions"):
        train(make_cfg(Path("unused"), epochs=1), fs, write=False)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="--device"):
        resolve_device("quantum")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


# ---------------------------------------------------------------------------------- run folder


def test_run_folder_metrics_and_config(tmp_path: Path, make_feature_set) -> None:
    fs = make_feature_set(n=24)
    cfg = make_cfg(tmp_path, epochs=3, eval_every=2, **{"model.method": "pico"})
    seen: list[dict] = []
    result = train(cfg, fs, on_epoch=seen.append)
    assert result.out == tmp_path
    assert seen == result.history

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == result.history
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert "val_rsum" not in rows[0] and "val_rsum" in rows[1] and "val_rsum" in rows[2]
    assert all(isinstance(r["p"], list) and len(r["p"]) == 16 for r in rows)

    with (tmp_path / "metrics.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3
    assert {"epoch", "loss", "lr", "val_rsum", "val_i2t_r1", "p_mean"} <= set(table[0])
    assert "p" not in table[0] and "omega" not in table[0]  # lists stay in the jsonl
    assert [int(r["epoch"]) for r in table] == [1, 2, 3]
    assert float(table[2]["loss"]) == pytest.approx(rows[2]["loss"])
    assert table[0]["val_rsum"] == ""  # not evaluated that epoch

    # config.yaml is the run's config as given (training never writes into it); what the run
    # derives (dims from the features, PICO's warm-up steps) is in the model's own config
    saved = load_config(tmp_path / "config.yaml")
    assert saved == cfg
    model_cfg = PicoAligner.load(tmp_path / "best").config
    assert (model_cfg.image_dim, model_cfg.text_dim) == (16, 12)
    for sub in ("last", "best"):
        assert {p.name for p in (tmp_path / sub).iterdir()} >= {"config.json", "model.safetensors"}
    assert (tmp_path / "last" / "state.pt").is_file()
    assert PicoAligner.load(tmp_path / "best").config == result.model.config
    assert not list(tmp_path.rglob("*.tmp"))


# ------------------------------------------------------------ image-backbone fine-tuning


@pytest.fixture
def image_data(tmp_path: Path, write_jsonl_dataset, monkeypatch) -> str:
    monkeypatch.setenv("PICOALIGN_CACHE", str(tmp_path / "cache"))
    return f"jsonl:{write_jsonl_dataset(tmp_path / 'data')}"


def test_image_backbone_fine_tuning_trains_saves_and_evaluates_on_raw_images(
    tmp_path: Path, image_data: str
) -> None:
    from picoalign.evaluation import embed_features
    from picoalign.features import SourceImages, dataset_features

    cfg = make_cfg(
        tmp_path / "run",
        data=image_data,
        epochs=2,
        batch_size=8,
        **{"model.finetune_image": True, "model.method": "baseline"},
    )
    fs = dataset_features(image_data, "random-conv", "hash-text", progress=False)
    before = PicoAligner(cfg.model).image_backbone.state_dict()  # same seeded init
    result = train(cfg, fs)
    after = result.model.image_backbone.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the backbone learned

    loaded = PicoAligner.load(tmp_path / "run" / "last")
    for k, v in after.items():
        assert torch.equal(loaded.image_backbone.state_dict()[k], v)
    # evaluation re-encodes the images with the trained backbone, not the cached features
    test = fs.split("test")
    img, im, _, _ = embed_features(loaded, test)
    want, want_m = loaded.encode_images(SourceImages(test))
    torch.testing.assert_close(img, want)
    assert torch.equal(im, want_m)
    stale, _ = loaded.embed_images(test.images.tokens.float(), test.images.mask)
    assert not torch.allclose(img, stale, atol=1e-3)


def test_image_fine_tuning_without_image_files_is_a_clear_error(
    tmp_path: Path, make_feature_set
) -> None:
    cfg = make_cfg(tmp_path, **{"model.finetune_image": True})
    with pytest.raises(ValueError, match="image backbone can be fine-tuned only"):
        train(cfg, make_feature_set(n=24))


def test_pixel_batches_follow_caption_order_and_decode_each_image_once(
    image_data: str,
) -> None:
    from picoalign.features import dataset_features
    from picoalign.model import ModelConfig
    from picoalign.training.pixels import PixelBatches

    fs = dataset_features(image_data, "random-conv", "hash-text", progress=False)
    calls: list[str] = []
    source = fs.image_source
    fs.image_source = lambda key: calls.append(key) or source(key)
    model = PicoAligner(ModelConfig(image_encoder="random-conv", text_encoder="hash-text"))
    batches = PixelBatches(model, fs)
    idx = torch.tensor([5, 0, 1, 4])  # captions 0,1 share image 0; 4,5 share image 2
    batches.prefetch(idx)
    got = batches.get(idx, torch.device("cpu"))
    batches.close()
    enc = model.backbone("image")
    for row, c in enumerate(idx.tolist()):
        key = fs.image_keys[int(fs.caption_image[c])]
        assert torch.equal(got[row], enc.preprocess([source(key)])[0])
    assert sorted(calls) == sorted({fs.image_keys[int(fs.caption_image[c])] for c in idx})


def test_fine_tuned_cnn_keeps_batchnorm_statistics_frozen() -> None:
    from picoalign.model import ModelConfig

    model = PicoAligner(
        ModelConfig(image_encoder="random-conv", text_encoder="hash-text", finetune_image=True)
    )
    model.image_backbone.net.append(torch.nn.BatchNorm2d(4))
    model.train()
    assert model.training and model.image_head.training
    assert not model.image_backbone.net[-1].training
    assert model.image_backbone.net[0].training


# ------------------------------------------------------------------- loss scale, batch size


def test_logged_loss_is_per_pair_whatever_the_batch_size(make_feature_set) -> None:
    fs = make_feature_set()
    loss = {}
    for b in (4, 32):
        cfg = make_cfg(Path("unused"), epochs=1, batch_size=b, triplet_warmup_epochs=0)
        loss[b] = train(cfg, fs, write=False).history[0]["loss"]
    # hardest-negative hinge, both ways, cosine scores: per pair at most 2 * (margin + 2);
    # the old per-batch sum of a batch of 32 was ~32x that scale
    assert 0 < loss[32] <= 2 * (cfg.margin + 2)
    assert 0.25 < loss[32] / loss[4] < 4


def test_batch_larger_than_the_train_split_warns_in_one_line(make_feature_set, capsys) -> None:
    fs = make_feature_set()
    n = fs.split("train").n_captions
    train(make_cfg(Path("unused"), epochs=1, batch_size=n + 1), fs, write=False)
    lines = [line for line in capsys.readouterr().err.splitlines() if "batch size" in line]
    assert len(lines) == 1 and f"batch size {n + 1} > {n} training captions" in lines[0]
    assert lines[0].startswith("picoalign: warning: ")
    train(make_cfg(Path("unused"), epochs=1, batch_size=n), fs, write=False)
    assert "batch size" not in capsys.readouterr().err


def test_a_small_evaluation_split_warns_that_its_recall_is_coarse(make_feature_set, capsys) -> None:
    small = make_feature_set(n=60)  # 15 val images: R@1 moves in steps of 6.67 points
    train(make_cfg(Path("unused"), epochs=1), small, write=False)
    err = capsys.readouterr().err
    assert "picoalign: warning: the val split has 15 images" in err and "steps of 6.67" in err
    assert "select=last: the run keeps its last epoch" in err
    train(make_cfg(Path("unused"), epochs=1, select="val"), small, write=False)
    err = capsys.readouterr().err
    assert "select=val picks the kept epoch on it" in err and "keeps its last" not in err
    big = make_feature_set(n=4 * SMALL_SPLIT, n_v=3, n_t=2)
    train(make_cfg(Path("unused"), epochs=1), big, write=False)
    assert "split has" not in capsys.readouterr().err


def test_data_json_records_every_splits_size(tmp_path: Path, make_feature_set) -> None:
    fs = make_feature_set(n=24, captions=2)  # 12 / 6 / 6 images
    train(make_cfg(tmp_path, epochs=1), fs)
    meta = json.loads((tmp_path / "data.json").read_text())
    assert meta["dataset"] == "synthetic"
    assert list(meta["splits"]) == ["train", "val", "test"]
    assert meta["splits"]["train"] == {"images": 12, "captions": 24}
    assert meta["splits"]["test"] == {"images": 6, "captions": 12}


def test_numerics_json_records_the_math_the_run_used(tmp_path: Path, make_feature_set) -> None:
    train(make_cfg(tmp_path, epochs=1), make_feature_set(n=24))
    info = json.loads((tmp_path / "numerics.json").read_text())
    assert info["device"] == "cpu" and info["math"] in ("native", "avx2-strict")
    assert info["threads"] == torch.get_num_threads()


# ------------------------------------------------------------------------- epochs="auto"


def test_auto_epochs_follows_captions_per_image() -> None:
    from picoalign.training.schedule import auto_epochs

    # the two measured points (docs/results.md): 20 with one caption, 6 with five
    assert auto_epochs(1000, 1000) == 20 and auto_epochs(1002, 5010) == 6
    assert auto_epochs(100, 200) == 15 and auto_epochs(10, 600) == 1  # never below one
    assert [auto_epochs(100, c) for c in (100, 150, 200, 300, 500)] == [20, 20, 15, 10, 6]
    with pytest.raises(ValueError, match="need images and captions"):
        auto_epochs(0, 5)


def test_auto_epochs_is_resolved_and_written_to_the_runs_config(
    tmp_path: Path, make_feature_set, capsys
) -> None:
    from picoalign.training.schedule import resolve_epochs

    cfg = make_cfg(tmp_path / "run", epochs="auto", **{"model.method": "baseline"})
    with pytest.raises(ValueError, match="not resolved"):
        cfg.lr_step_epochs()  # a schedule of unknown length is never guessed
    fs = make_feature_set(n=24, captions=10)  # 12 train images, 120 captions: 3 epochs
    result = train(cfg, fs)
    assert cfg.epochs == "auto"  # the caller's config is read, never written
    assert len(result.history) == 3 and result.config.epochs == 3
    assert load_config(tmp_path / "run" / "config.yaml").epochs == 3
    assert "epochs=auto: 3 epochs for 10 captions per image" in capsys.readouterr().err
    fixed = make_cfg(tmp_path / "other", epochs=2)
    assert resolve_epochs(fixed, 12, 120) is fixed  # an integer is kept as given


@pytest.mark.parametrize("bad", ["many", 0, -3, 2.5])
def test_epochs_is_an_integer_or_auto(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(ValueError, match="epochs"):
        make_cfg(tmp_path, epochs=bad)
    assert make_cfg(tmp_path, epochs="7").epochs == 7  # --set epochs=7 reads as a string
    assert TrainConfig().epochs == "auto"


def _padded(fs: FeatureSet, slots: int) -> FeatureSet:
    """``fs`` with its caption tokens padded to ``slots`` slots (as a cache built with a larger
    max_tokens stores them): more padding, the same captions."""
    tok, mask = fs.texts.tokens, fs.texts.mask
    extra = slots - tok.shape[1]
    fs.texts = TokenFeatures(
        torch.cat([tok, tok.new_zeros(len(tok), extra, tok.shape[2])], dim=1),
        torch.cat([mask, mask.new_zeros(len(mask), extra)], dim=1),
    )
    return fs


@pytest.mark.parametrize("method", ["baseline", "pico"])
@pytest.mark.parametrize("scorer", ["fine_grained", "gpo", "global"])
def test_trim_padding_trains_the_same_model_on_fewer_slots(
    make_feature_set, method: str, scorer: str, monkeypatch
) -> None:
    """``trim_padding`` feeds each batch only the caption slots its captions use, and the
    training is the same up to rounding (same losses and validation), on every scorer."""
    widths: list[int | None] = []
    real_batch = FeatureSet.batch

    def recording(self, idx, device, text_tokens=None):
        out = real_batch(self, idx, device, text_tokens)
        widths.append(out[2].shape[1])
        return out

    monkeypatch.setattr(FeatureSet, "batch", recording)
    runs = {}
    for trim in (False, True):
        widths.clear()
        fs = _padded(make_feature_set(n=40, n_t=5), 12)
        over = {"model.method": method, "model.scorer": scorer, "trim_padding": trim}
        runs[trim] = train(make_cfg(Path("unused"), epochs=3, **over), fs, write=False)
        assert set(widths) == ({5} if trim else {12})  # 5 slots hold every real token
    plain, trimmed = (runs[t].history for t in (False, True))
    for a, b in zip(plain, trimmed, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
        assert b["val_rsum"] == pytest.approx(a["val_rsum"], abs=1e-6)


@pytest.mark.parametrize("method", ["baseline", "pico"])
def test_sparse_backward_trains_the_same_model(make_feature_set, method: str, monkeypatch) -> None:
    """``sparse_backward`` takes the gather backward on the batches where the hardest-negative
    loss leaves few scores with a gradient, and trains the same model up to rounding."""
    import picoalign.core.maxmean as mm

    calls: list[int] = []
    real = mm._sparse_grads
    monkeypatch.setattr(mm, "_sparse_grads", lambda *a: calls.append(1) or real(*a))
    runs = {}
    for sparse in (False, True):
        calls.clear()
        over = {"model.method": method, "model.scorer": "fine_grained", "batch_size": 64}
        cfg = make_cfg(Path("unused"), epochs=3, sparse_backward=sparse, **over)
        runs[sparse] = train(cfg, make_feature_set(n=160, captions=1), write=False)
        assert bool(calls) == sparse  # 64 x 64 scores, at most 3 x 64 with a gradient
    for a, b in zip(runs[False].history, runs[True].history, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
        assert b["val_rsum"] == pytest.approx(a["val_rsum"], abs=1e-6)


def test_text_width_is_one_past_the_last_used_slot(make_feature_set) -> None:
    fs = _padded(make_feature_set(n=8, captions=1, n_t=5), 9)
    fs.texts.mask[:] = False
    fs.texts.mask[:, 0] = True
    fs.texts.mask[3, 6] = True  # a gap before it: still kept, slot 6 is real
    assert fs.text_width(torch.tensor([0, 1, 2])) == 1
    assert fs.text_width(torch.tensor([1, 3])) == 7


def test_the_opt_in_speed_options_say_they_are_on(tmp_path: Path, make_feature_set, capsys) -> None:
    """The walkthrough's report: trim_padding and sparse_backward printed nothing, so only
    config.yaml told a run that used them from one that did not."""
    fs = make_feature_set(n=24)
    train(make_cfg(tmp_path / "a", epochs=1), fs)
    assert "trim_padding" not in capsys.readouterr().err
    train(make_cfg(tmp_path / "b", epochs=1, trim_padding=True, sparse_backward=True), fs)
    err = capsys.readouterr().err
    assert "picoalign: trim_padding: each batch uses only the caption slots it needs" in err
    assert "sparse_backward: the max-mean backward" in err


def test_a_new_run_stopped_by_a_nan_loss_names_no_checkpoint_it_has_not(
    tmp_path: Path, make_feature_set
) -> None:
    """The re-test: a new run stopped at its first NaN loss said "the last good checkpoint
    is kept in RUN/last", a folder that did not exist (nor did RUN, once it was removed)."""
    bad = with_nan_caption(make_feature_set(n=24), 5)
    with pytest.raises(TrainingError) as info:
        train(make_cfg(tmp_path / "run", epochs=2, **{"model.method": "pico"}), bad)
    msg = str(info.value)
    assert "non-finite loss" in msg and "no checkpoint of this run was written" in msg, msg
    assert "kept in" not in msg and not (tmp_path / "run").exists()


def test_a_diverged_run_says_so_by_epoch_and_names_the_learning_rate(
    tmp_path: Path, make_feature_set, monkeypatch
) -> None:
    """The walkthrough's report: a run at --lr 1e6 ended with "img contains NaN or Inf
    values" from validation, naming neither the epoch, the cause nor a way forward."""
    with pytest.raises(TrainingError) as info:  # finite loss and weights; embeddings overflow
        train(make_cfg(tmp_path / "a", epochs=2, lr=1e30), make_feature_set(n=24))
    msg = str(info.value)
    assert msg.startswith("training diverged in epoch 1") and "(it was 1e+30)" in msg, msg
    assert "no checkpoint of this run was written before it" in msg  # the re-test's report
    assert not (tmp_path / "a").exists()
    from picoalign.training import loop

    real = loop._train_step

    def poisoned(run, batches, step, epoch):  # epoch 2's last step leaves a weight at Inf
        loss = real(run, batches, step, epoch)  # (its own loss still finite)
        if epoch == 1 and step == len(batches) - 1:
            with torch.no_grad():
                run.model.image_head.proj.weight[0, 0] = float("inf")
        return loss

    monkeypatch.setattr(loop, "_train_step", poisoned)
    with pytest.raises(TrainingError, match=r"^training diverged in epoch 2: the model's weights"):
        train(make_cfg(tmp_path / "b", epochs=3), make_feature_set(n=24))
    assert (tmp_path / "b" / "last").is_dir()  # epoch 1's checkpoint, named in the message


def test_a_learning_rate_or_margin_of_inf_or_nan_is_refused() -> None:
    pairs = (("lr", "inf"), ("lr", "nan"), ("lr", "1e39"), ("margin", "inf"), ("lr_gamma", "inf"))
    for key, value in pairs:  # 1e39: finite, but it overflowed the fp32 optimiser (a traceback)
        with pytest.raises(ValueError, match=rf"invalid {key}: .* \(expected a finite number"):
            load_config(None, {key: value})


def test_a_run_that_did_not_learn_says_so_and_a_run_that_did_does_not(
    tmp_path: Path, make_feature_set, capsys
) -> None:
    """The re-test's report: at --lr 1e6 the loss stayed flat and finite, validation sat at
    chance, and the run ended as a result ("selected epoch 3: val rSum ...") with no word.
    Captions that belong to other images (a shuffled captions file) end the same way."""
    fs = make_feature_set(n=240)
    shuffled = dataclasses.replace(fs, texts=make_feature_set(n=240, seed=1).texts)
    train(make_cfg(tmp_path / "dead", epochs=3), shuffled)
    err = capsys.readouterr().err
    assert "warning: the model is no better than chance on the val split" in err, err
    assert "--lr was 0.005" in err
    result = train(make_cfg(tmp_path / "alive", epochs=3), fs)
    assert result.best_rsum > 100
    assert "no better than chance" not in capsys.readouterr().err
