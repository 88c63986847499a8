"""Registry lookup, the download-free encoders and the Pillow/numpy preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from picoalign.encoders import (
    HashTextEncoder,
    ImageEncoder,
    PrecomputedEncoder,
    RandomConvEncoder,
    UnknownEncoderError,
    create_image_encoder,
    create_text_encoder,
    images_to_pixels,
    list_encoders,
    pad_to_square,
    register_image_encoder,
    register_text_encoder,
)
from picoalign.encoders import registry as reg


def test_builtin_encoders_are_registered():
    names = list_encoders()
    for n in ("efficientnet-lite0", "hf:", "precomputed", "random-conv"):
        assert n in names["image"]
    for n in ("minilm", "glove-gru", "hf:", "hash-text"):
        assert n in names["text"]


# what each registered name needs to be built here: prefix families take a hub name or a
# folder (tested with a local model in test_encoders_hf.py); the others build offline
_IMAGE_INPUT = {"precomputed": None}  # no pixels: it maps stored features (tested below)


@pytest.mark.parametrize("name", list_encoders()["image"])
def test_every_registered_image_encoder_encodes_a_batch(name: str) -> None:
    if name.endswith(":"):
        pytest.skip(f"{name} is a prefix family: it needs NAME_OR_PATH (test_encoders_hf.py)")
    if name in _IMAGE_INPUT:
        pytest.skip(f"{name} encodes stored features, not pixels")
    try:
        enc = create_image_encoder(name)
    except ImportError as e:
        pytest.skip(f"{name}: its package is not installed ({e})")
    images = [Image.new("RGB", (40, 30), "red"), Image.new("RGB", (20, 50), "blue")]
    with torch.no_grad():
        tokens, mask = enc.eval()(enc.preprocess(images))
    assert tokens.shape[0] == 2 and tokens.shape[-1] == enc.dim and tokens.dim() == 3
    assert mask.shape == tokens.shape[:2] and mask.dtype == torch.bool and bool(mask.any(1).all())
    assert bool(torch.isfinite(tokens).all())


@pytest.mark.parametrize("name", list_encoders()["text"])
def test_every_registered_text_encoder_encodes_a_batch(name: str) -> None:
    if name.endswith(":"):
        pytest.skip(f"{name} is a prefix family: it needs NAME_OR_PATH (test_encoders_hf.py)")
    try:
        enc = create_text_encoder(name)
    except ImportError as e:
        pytest.skip(f"{name}: its package is not installed ({e})")
    with torch.no_grad():
        tokens, mask = enc.eval()(**enc.tokenize(enc.prepare(["a red circle", ""])))
    assert tokens.shape[0] == 2 and tokens.shape[-1] == enc.dim and tokens.dim() == 3
    assert mask.shape == tokens.shape[:2] and bool(mask.any(1).all())  # empty: one token kept
    assert bool(torch.isfinite(tokens).all())


def test_unknown_spec_lists_available_names():
    with pytest.raises(UnknownEncoderError, match=r"unknown image encoder 'nope'.*random-conv"):
        create_image_encoder("nope")
    with pytest.raises(UnknownEncoderError, match=r"unknown text encoder 'zz:x'.*hf:NAME_OR_PATH"):
        create_text_encoder("zz:x")
    with pytest.raises(ValueError, match="needs an argument"):
        create_image_encoder("hf:")
    with pytest.raises(TypeError):
        create_text_encoder(3)  # type: ignore[arg-type]


def test_register_name_and_prefix_family():
    class Toy(RandomConvEncoder):
        def __init__(self, arg: str = "plain", **kw):
            super().__init__(**kw)
            self.arg = arg

    try:
        register_image_encoder("toy-enc")(Toy)
        register_image_encoder("toy:")(Toy)
        assert create_image_encoder("toy-enc", dim=8).dim == 8
        enc = create_image_encoder("toy:some/path:with:colons", dim=4)
        assert enc.arg == "some/path:with:colons" and enc.dim == 4
        with pytest.raises(ValueError, match="already registered"):
            register_image_encoder("toy-enc")(RandomConvEncoder)
        with pytest.raises(ValueError, match="prefix"):
            register_text_encoder("bad:name")
    finally:
        reg._IMAGE.pop("toy-enc", None)
        reg._IMAGE.pop("toy:", None)


def test_instances_pass_through():
    enc = RandomConvEncoder()
    assert create_image_encoder(enc) is enc
    txt = HashTextEncoder()
    assert create_text_encoder(txt) is txt


def test_pad_to_square_and_alpha_on_white():
    img = Image.new("RGBA", (40, 20), (0, 0, 0, 0))  # fully transparent: white pixels
    px = images_to_pixels([img], 8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert torch.allclose(px, torch.ones_like(px))
    deep = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))  # 16-bit mid-grey
    mid = images_to_pixels([deep], 4, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert 0.45 < float(mid.mean()) < 0.55  # rescaled, not clipped to white
    sq = pad_to_square(Image.new("RGB", (40, 20), (255, 0, 0)))
    assert sq.size == (40, 40)
    assert sq.getpixel((20, 0)) == (255, 255, 255) and sq.getpixel((20, 20)) == (255, 0, 0)


def test_images_to_pixels_normalises():
    imgs = [Image.new("RGB", (30, 50), (255, 255, 255)), Image.new("L", (8, 8), 0)]
    px = images_to_pixels(imgs, 16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert px.shape == (2, 3, 16, 16) and px.dtype == torch.float32
    assert torch.allclose(px[0], torch.ones_like(px[0]))
    assert torch.allclose(px[1], -torch.ones_like(px[1]))
    assert images_to_pixels([], 16, (0, 0, 0), (1, 1, 1)).shape == (0, 3, 16, 16)


def test_random_conv_is_deterministic_and_trainable(toy_dataset):
    a, b = RandomConvEncoder(seed=1), RandomConvEncoder(seed=1)
    imgs = [toy_dataset.load(it) for it in toy_dataset.items[:3]]
    tok, mask = a(a.preprocess(imgs))
    assert tok.shape == (3, 16, 32) and mask.all()
    assert torch.equal(tok, b(b.preprocess(imgs))[0])
    assert a.cache_key == b.cache_key
    assert RandomConvEncoder(seed=2).cache_config != a.cache_config
    tok.sum().backward()
    assert all(p.grad is not None for p in a.parameters())
    assert isinstance(a, ImageEncoder) and a.pooled(a.preprocess(imgs)).shape == (3, 32)


def test_cache_key_records_versions():
    key = RandomConvEncoder().cache_key
    assert f"torch={torch.__version__}" in key and "pillow=" in key and "32px" in key


def test_hash_text_tokens_and_mask():
    enc = HashTextEncoder(dim=8, max_length=4)
    batch = enc.tokenize(["A red circle!", "", "one two three four five six"])
    tok, mask = enc(**batch)
    assert tok.shape == (3, 4, 8)
    assert mask.tolist() == [
        [True, True, True, False],
        [True, False, False, False],  # empty caption keeps one token
        [True, True, True, True],  # truncated to max_length
    ]
    again = enc(**enc.tokenize(["a red circle"]))[0]
    assert torch.equal(again[0, :3], tok[0, :3])  # case/punctuation-insensitive, stable hash
    tok.sum().backward()
    assert enc.embed.weight.grad is not None


def test_precomputed_identity():
    enc = create_image_encoder("precomputed", dim=4)
    assert isinstance(enc, PrecomputedEncoder) and not enc.cacheable
    feats = [np.ones((3, 4), np.float32), np.full(4, 2.0, np.float32)]
    tok, mask = enc(enc.preprocess(feats))
    assert tok.shape == (2, 3, 4)
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    assert torch.equal(tok[1, 0], torch.full((4,), 2.0))
    with pytest.raises(ValueError, match="5 channels, expected 4"):
        enc.preprocess([np.zeros((2, 5))])
    lazy = PrecomputedEncoder()  # dim from the first batch
    tok, mask = lazy.from_features(np.zeros((2, 3, 6)), np.ones((2, 3), bool))
    assert lazy.dim == 6 and mask.all() and tok.dtype == torch.float32
