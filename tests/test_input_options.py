"""Input options of ModelConfig: feature standardisation, caption prompt, text token options."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from picoalign.config import load_config
from picoalign.model import ModelConfig, PicoAligner
from picoalign.training.loop import train


def cfg(out: Path, **over):
    base = {
        "data": "synthetic",
        "out": str(out),
        "epochs": 2,
        "batch_size": 16,
        "lr": 5e-3,
        "lr_steps": [8],
        "device": "cpu",
        "amp": False,
        "progress": False,
        "model.embed_dim": 16,
        "model.image_encoder": "random-conv",
        "model.text_encoder": "hash-text",
        "model.method": "baseline",
    }
    return load_config(None, {**base, **over})


def test_standardize_fits_train_statistics_saves_them_and_applies_them(
    tmp_path: Path, make_feature_set
) -> None:
    fs = make_feature_set(n=30)
    result = train(cfg(tmp_path, **{"model.standardize": True}), fs)
    model = result.model
    train_fs = fs.split("train")
    tokens = train_fs.images.tokens[train_fs.images.mask].double()
    torch.testing.assert_close(model.image_mean.double(), tokens.mean(0), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        model.image_std.double(), tokens.std(0, unbiased=False), atol=1e-4, rtol=1e-4
    )
    loaded = PicoAligner.load(tmp_path)
    assert torch.equal(loaded.text_mean, model.text_mean)
    # embed_* standardise before the head: the same as feeding standardised tokens to a
    # model without the option
    x, m = fs.images.tokens[:4].float(), fs.images.mask[:4]
    plain = PicoAligner(ModelConfig(**{**loaded.config.to_dict(), "standardize": False}))
    plain.load_state_dict(
        {k: v for k, v in loaded.state_dict().items() if "_mean" not in k and "_std" not in k}
    )
    want = plain.embed_images((x - loaded.image_mean) / loaded.image_std, m)[0]
    torch.testing.assert_close(loaded.embed_images(x, m)[0], want)
    with pytest.raises(ValueError, match="standardize=True"):
        plain.fit_standardization(fs.images, fs.texts)


def test_prompt_reaches_features_queries_and_the_cache_key() -> None:
    c = ModelConfig(text_encoder="hash-text", prompt="a drawing of {}")
    enc = c.make_text_encoder()
    assert enc.prepare(["cat", "red dog"]) == ["a drawing of cat", "a drawing of red dog"]
    plain = ModelConfig(text_encoder="hash-text").make_text_encoder()
    assert plain.prepare(["cat"]) == ["cat"] and plain.cache_config != enc.cache_config
    # the model's query encoding uses the same template as the cached features
    model = PicoAligner(ModelConfig(**{**c.to_dict(), "text_dim": enc.dim}))
    got, _ = model.text_tokens(["cat"])
    want, _ = enc(**enc.tokenize(["a drawing of cat"]))
    torch.testing.assert_close(got, want)
    for bad in ("no placeholder", "{} and {}"):
        with pytest.raises(ValueError, match="prompt must hold"):
            ModelConfig(prompt=bad)


def test_text_token_options_reach_the_encoder_or_fail_clearly() -> None:
    enc = ModelConfig(text_encoder="hash-text", text_max_tokens=3).make_text_encoder()
    assert enc.max_length == 3 and enc.tokenize(["a b c d e"])["input_ids"].shape[1] == 3
    with pytest.raises(ValueError, match="takes no option"):
        ModelConfig(text_encoder="hash-text", text_special_tokens=True).make_text_encoder()
    with pytest.raises(ValueError, match="text_max_tokens"):
        ModelConfig(text_max_tokens=0)


def test_feature_dropout_noises_training_only_and_costs_no_randomness_when_off() -> None:
    """Dropout on the backbone tokens is a training augmentation: eval (index, search,
    evaluation) sees the same scores as without it, and at 0 it draws nothing from the RNG,
    so every run made before the option existed keeps its bits."""
    torch.manual_seed(0)
    x, m = torch.randn(3, 5, 384), torch.ones(3, 5, dtype=torch.bool)
    on = PicoAligner(ModelConfig(method="baseline", text_dropout=0.3, image_dropout=0.3))
    off = PicoAligner(ModelConfig(method="baseline"))
    off.load_state_dict(on.state_dict())
    on.eval(), off.eval()
    assert torch.equal(on.embed_texts(x, m)[0], off.embed_texts(x, m)[0])
    on.train(), off.train()
    assert not torch.allclose(on.embed_texts(x, m)[0], off.embed_texts(x, m)[0])
    img = torch.randn(3, 4, 1280)
    assert not torch.allclose(on.embed_images(img, m[:, :4])[0], off.embed_images(img, m[:, :4])[0])

    torch.manual_seed(1)
    expected = torch.rand(4)
    torch.manual_seed(1)
    off.embed_texts(x, m), off.embed_images(img, m[:, :4])
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize("bad", [1.0, -0.1, "0.2", True])
def test_feature_dropout_must_be_a_probability(bad) -> None:
    with pytest.raises(ValueError, match="text_dropout must be a number in"):
        ModelConfig(text_dropout=bad)
