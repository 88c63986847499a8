"""What a run derives from its data: widths, PICO's warm-up in steps, split sizes."""

from __future__ import annotations

import pytest

from picoalign.config import load_config
from picoalign.training.derived import model_config_for, split_sizes


def test_widths_come_from_the_features_and_warmup_counts_epochs_and_steps(make_feature_set):
    fs = make_feature_set(n=24, captions=3, c_v=16, c_t=12)
    cfg = load_config(None, {"pico_warmup_epochs": 2, "model.pico.warmup_steps": 5})
    model = model_config_for(cfg, fs, steps_per_epoch=7)
    assert (model.image_dim, model.text_dim) == (16, 12)
    assert model.pico.warmup_steps == 2 * 7 + 5  # both honoured
    assert cfg.model.pico.warmup_steps == 5  # the run's config is not written


def test_a_width_that_contradicts_the_features_is_refused(make_feature_set):
    fs = make_feature_set(n=24, c_v=16)
    cfg = load_config(None, {})
    cfg.model.image_dim = 99  # as an old Python caller could set it
    with pytest.raises(ValueError, match=r"model\.image_dim=99 differs from the features"):
        model_config_for(cfg, fs, steps_per_epoch=1)


def test_split_sizes_count_images_and_their_captions(make_feature_set):
    fs = make_feature_set(n=24, captions=3)  # half train, a quarter val, the rest test
    assert split_sizes(fs) == {
        "train": {"images": 12, "captions": 36},
        "val": {"images": 6, "captions": 18},
        "test": {"images": 6, "captions": 18},
    }


def test_precomputed_features_make_a_precomputed_model(make_feature_set):
    """The walkthrough's report: a run on ``precomp:`` data saved image_encoder
    'efficientnet-lite0' (the config's default), so an image query on its index went through
    a 1280-wide backbone into a 48-wide head and crashed with a shape error."""
    fs = make_feature_set(n=24, c_v=16)
    cfg = load_config(None, {})
    assert model_config_for(cfg, fs, steps_per_epoch=1).image_encoder == cfg.model.image_encoder
    fs.meta["image_encoder"] = "precomputed"
    assert model_config_for(cfg, fs, steps_per_epoch=1).image_encoder == "precomputed"


def test_a_named_image_encoder_on_precomputed_data_is_said_unused(
    tmp_path, make_feature_set, capsys
) -> None:
    """The walkthrough's report: train --data precomp:... --image-encoder hf:vit ignored the
    flag without a word (the model records 'precomputed')."""
    from picoalign.training.loop import train

    fs = make_feature_set(n=24, c_v=16)
    fs.meta["image_encoder"] = "precomputed"
    base = {"data": "synthetic", "epochs": 1, "progress": False, "device": "cpu",
            "model.embed_dim": 8, "model.method": "baseline"}  # fmt: skip
    train(load_config(None, {**base, "out": str(tmp_path / "a"),
                             "model.image_encoder": "random-conv"}), fs)  # fmt: skip
    assert "image encoder random-conv is not used" in capsys.readouterr().err
    train(load_config(None, {**base, "out": str(tmp_path / "b")}), fs)  # the default: no word
    assert "is not used" not in capsys.readouterr().err


def test_a_precomputed_model_given_image_files_says_so(write_jsonl_dataset, tmp_path) -> None:
    """The walkthrough's report: `evaluate --data karpathy:...` of a model trained on
    precomputed features failed with "precomputed features must be (T, C), got (64, 64, 3)"
    after encoding had started."""
    import pytest

    from picoalign.features import dataset_features

    data = write_jsonl_dataset(tmp_path / "d")
    with pytest.raises(ValueError, match="trained on precomputed image features"):
        dataset_features(f"jsonl:{data}", "precomputed", "hash-text", progress=False,
                         cache_dir=str(tmp_path / "c"))  # fmt: skip
