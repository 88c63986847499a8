"""Image and text encoders behind one token-level contract, looked up by name.

>>> from picoalign.encoders import create_image_encoder, create_text_encoder
>>> img = create_image_encoder("efficientnet-lite0")   # (B, 49, 1280) tokens
>>> txt = create_text_encoder("minilm")                # (B, T, 384) word tokens

Registered: ``efficientnet-lite0``, ``hf:NAME_OR_PATH`` (both modalities), ``precomputed`` and
``random-conv`` (images); ``minilm``, ``glove-gru``, ``hash-text`` (text). Heavy libraries are
imported only when an encoder that needs them is built.
"""

# Importing the modules registers the built-in encoders.
from .base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Encoder,
    ImageEncoder,
    TextEncoder,
    images_to_pixels,
    masked_mean,
    pad_to_square,
)
from .efficientnet import EfficientNetLiteEncoder
from .glove import GloveGRUEncoder, load_glove, simple_tokenize
from .hf import HFImageEncoder, HFTextEncoder
from .registry import (
    UnknownEncoderError,
    create_image_encoder,
    create_text_encoder,
    list_encoders,
    register_image_encoder,
    register_text_encoder,
)
from .simple import HashTextEncoder, PrecomputedEncoder, RandomConvEncoder

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EfficientNetLiteEncoder",
    "Encoder",
    "GloveGRUEncoder",
    "HFImageEncoder",
    "HFTextEncoder",
    "HashTextEncoder",
    "ImageEncoder",
    "PrecomputedEncoder",
    "RandomConvEncoder",
    "TextEncoder",
    "UnknownEncoderError",
    "create_image_encoder",
    "create_text_encoder",
    "images_to_pixels",
    "list_encoders",
    "load_glove",
    "masked_mean",
    "pad_to_square",
    "register_image_encoder",
    "register_text_encoder",
    "simple_tokenize",
]
