"""What a run derives from its data instead of reading it from the config: the model's
feature widths and PICO's warm-up in steps, and the split sizes ``data.json`` records.

Why apart from the loop: these are pure functions of (config, features), tested and reused
(``picoalign.config.typed`` refuses the derived options) without building a run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from picoalign.config import TrainConfig
from picoalign.config.model import ModelConfig
from picoalign.data.base import SPLITS
from picoalign.features import FeatureSet


def model_config_for(cfg: TrainConfig, fs: FeatureSet, steps_per_epoch: int) -> ModelConfig:
    """The model's config for a run on ``fs``: feature widths from the data, PICO's warm-up
    = ``pico_warmup_epochs`` epochs plus any ``model.pico.warmup_steps`` (both honoured)."""
    default = ModelConfig()
    for name, width in (("image_dim", fs.images.dim), ("text_dim", fs.texts.dim)):
        given = getattr(cfg.model, name)
        if given not in (getattr(default, name), width):  # never silently overwritten
            raise ValueError(f"model.{name}={given} differs from the features' width {width}")
    warmup = cfg.pico_warmup_epochs * steps_per_epoch + cfg.model.pico.warmup_steps
    # a precomputed-feature dataset is encoded by the 'precomputed' encoder whatever the
    # config names: the model must say so, or it would read image files with a backbone
    # whose width its head does not take
    image_encoder = "precomputed" if fs.meta.get("image_encoder") == "precomputed" else None
    return replace(
        cfg.model,
        image_encoder=image_encoder or cfg.model.image_encoder,
        image_dim=fs.images.dim,
        text_dim=fs.texts.dim,
        pico=replace(cfg.model.pico, warmup_steps=warmup),
    )


def split_sizes(fs: FeatureSet) -> dict[str, dict[str, int]]:
    """Images and captions of every split (what ``data.json`` records a run trained on)."""
    images = Counter(fs.image_splits)  # counted, not split: a split copies its features
    captions = Counter(fs.image_splits[i] for i in fs.caption_image.tolist())
    names = [n for n in SPLITS if n in images] + sorted(set(images) - set(SPLITS))
    return {n: {"images": images[n], "captions": captions[n]} for n in names}
