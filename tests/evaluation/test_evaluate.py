"""evaluate(): what it refuses before scoring (picoalign.evaluation.evaluate)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from picoalign.evaluation import evaluate
from picoalign.model import ModelConfig, PicoAligner


def _model(**kw: object) -> PicoAligner:
    cfg = dict(image_encoder="random-conv", text_encoder="hash-text", image_dim=16, text_dim=12)
    return PicoAligner(ModelConfig(**{**cfg, "embed_dim": 8, **kw})).eval()


def test_features_of_another_encoder_are_refused_naming_both(make_feature_set) -> None:
    """The API walkthrough: features of efficientnet-lite0 given to a random-conv model were
    refused with "build the model with from_encoders(...)", the wrong fix; and two encoders
    of one width were scored against each other without a word."""
    fs = make_feature_set()
    fs = replace(fs, meta={**fs.meta, "image_encoder": "random-conv", "text_encoder": "hash-text"})
    assert set(evaluate(_model(), fs)) >= {"rsum"}  # the model's own encoders: scored
    other = r"image features were made by the image encoder 'random-conv' \(16 wide\), but "
    with pytest.raises(ValueError, match=other + r"this model's is 'efficientnet-lite0'"):
        evaluate(_model(image_encoder="efficientnet-lite0"), fs)
    wider = r"text features .* \(12 wide\), but this model's is 'hash-text' \(24 wide\)"
    with pytest.raises(ValueError, match=wider):
        evaluate(_model(text_dim=24), fs)
    evaluate(_model(text_encoder="hf:/some/path"), fs)  # hf: names vary in form: width only
