"""Loading a ``transformers`` backbone so that its features are what the cache says they are.

Why a module of its own: a checkpoint that lacks some weights (a model saved without its
pooler, as ``add_pooling_layer=False`` does, or a checkpoint of another head) gets them
initialised at random on every load. The cache key hashes the weights, so every command
encoded the whole dataset again; and a folder without tokenizer files, or with edited ones,
encoded captions with another tokenizer than the cache key said. This module loads with the
loading report, drops an unused pooler whose weights were missing, says when a used weight
is random, and gives the tokenizer an identity for the cache key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from collections.abc import Iterator
from typing import Any

import torch

PROBE = "a photo of a dog on the grass"


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' own loading report (a many-line table of missing and unexpected keys)
    printed on every command; what matters of it is said here, in one line."""
    from transformers.utils import logging as tf_logging

    before = tf_logging.get_verbosity()
    tf_logging.set_verbosity_error()
    try:
        yield
    finally:
        tf_logging.set_verbosity(before)


def load_backbone(tf: Any, name_or_path: str, tower: str) -> Any:
    """The model (its ``tower`` sub-model for dual encoders), without a pooler whose weights
    the checkpoint lacked; a warning when other weights the features use are random."""
    with quiet_transformers():
        model, info = tf.AutoModel.from_pretrained(name_or_path, output_loading_info=True)
    sub = getattr(model, tower, None)
    model = sub if isinstance(sub, torch.nn.Module) else model
    missing = [k for k in info.get("missing_keys", []) if k]
    pooled = [k for k in missing if "pooler" in k.split(".")]
    if pooled and isinstance(getattr(model, "pooler", None), torch.nn.Module):
        model.pooler = None  # unused (features are last_hidden_state), and random: dropped
    own = {n for n, _ in model.named_parameters()}
    used = [k for k in missing if k not in pooled and _suffix_in(k, own)]
    if used:
        warnings.warn(
            f"hf:{name_or_path}: {len(used)} weights the features use are not in its "
            f"checkpoint (e.g. {used[0]}) and are initialised at random on every load: its "
            "features differ from one command to the next, and are encoded again each time",
            stacklevel=3,
        )
    return model


def _suffix_in(key: str, names: set[str]) -> bool:
    """Whether checkpoint key ``key`` names one of the sub-model's parameters (the keys of a
    dual encoder carry the tower's prefix, ``text_model.``)."""
    return any(key == n or key.endswith("." + n) for n in names)


def check_tokenizer(tokenizer: Any, name_or_path: str) -> None:
    """Refuse a tokenizer that turns an ordinary sentence into unknown tokens only: a model
    folder without tokenizer files gets an empty one from ``AutoTokenizer``, and training
    then ran at chance on all-[UNK] captions without a word."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return
    ids = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    if ids and all(i == unk for i in ids):
        raise ValueError(
            f"hf:{name_or_path}: its tokenizer reads {PROBE!r} as unknown tokens only (a "
            f"vocabulary of {len(tokenizer)}): the folder has no usable tokenizer files; save "
            "them beside the model (tokenizer.save_pretrained(folder))"
        )


def tokenizer_digest(tokenizer: Any) -> str:
    """A short hash of everything that decides the word pieces: the fast tokenizer's full
    serialisation, else the vocabulary and special tokens. Part of an ``hf:`` text encoder's
    cache key: a tokenizer edited in place encoded captions otherwise than the cache held."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        text = json.dumps(
            [sorted(tokenizer.get_vocab().items()), sorted(map(str, tokenizer.all_special_tokens))]
        )
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def check_text_config(config: Any, name_or_path: str) -> None:
    """A vision-only model given as the text encoder is named as such (transformers said it
    "couldn't instantiate the backend tokenizer")."""
    text_cfg = getattr(config, "text_config", None) or config
    if getattr(text_cfg, "vocab_size", None) is None and (
        hasattr(text_cfg, "num_channels") or hasattr(text_cfg, "image_size")
    ):
        raise ValueError(
            f"{name_or_path} is not a text model ({type(config).__name__}); use it as the "
            "image encoder instead"
        )
