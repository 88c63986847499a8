"""Training configuration as data: one dataclass, loadable from YAML, dumped next to every
checkpoint so a run can always be reproduced from its own folder.

Precedence: defaults < ``--config FILE`` < command-line flags. Nested sections ``model`` and
``pico`` map to :class:`~picoalign.model.ModelConfig` and :class:`~picoalign.core.pico.PICOConfig`;
an unknown key is an error naming the file and the key (a typo must not silently do nothing),
and every value is validated against its field's type (:mod:`picoalign.config.typed`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from picoalign.core.pico import PICOConfig
from picoalign.model import ModelConfig


@dataclass
class TrainConfig:
    """One training run. Defaults are the CPU recipe on cached frozen features."""

    data: str = "twemoji"
    out: str = "runs/pico"
    epochs: int = 12
    batch_size: int = 128
    lr: float = 1e-3
    backbone_lr_mult: float = 0.1  # for fine-tuned backbones
    weight_decay: float = 1e-4
    lr_steps: list[int] = field(default_factory=lambda: [8])  # epochs where lr ×= lr_gamma
    lr_gamma: float = 0.3
    grad_clip: float = 2.0
    loss: Literal["triplet", "infonce"] = "triplet"
    margin: float = 0.8  # best mean validation rSum for the baseline (docs/results.md)
    triplet_warmup_epochs: int = 1  # sum over all negatives before switching to hardest
    pico_warmup_epochs: int = 1  # p ≡ 1 for these epochs
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # autocast where the device supports it (bf16 on CPU with AMX, CUDA)
    eval_split: Literal["train", "val", "test"] = "val"
    eval_every: int = 1
    # also checkpoint every N steps inside an epoch (0 = at epoch ends only): a killed run
    # resumes from the last such step with the same data order and RNG state
    save_every_steps: int = 0
    # under torchrun: the loss sees the negatives of the whole global batch (all-gathered), as
    # one process would; False = each rank's shard only (less communication)
    gather_negatives: bool = True
    cache_dir: str | None = None
    skip_bad: bool = False
    progress: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        # range checks; types are validated by load_config (picoalign.config.typed), these
        # few isinstance checks keep direct Python construction from failing obscurely
        if isinstance(self.model, dict):
            self.model = ModelConfig(**self.model)
        for name in (
            "epochs",
            "batch_size",
            "eval_every",
            "save_every_steps",
        ):  # e.g. --set epochs=many
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"invalid {name}: {getattr(self, name)!r} (expected an integer)")
        for name in ("lr", "margin"):
            if not isinstance(getattr(self, name), (int, float)):
                raise ValueError(f"invalid {name}: {getattr(self, name)!r} (expected a number)")
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 2,
            "lr": self.lr > 0,
            "margin": self.margin >= 0,
            "loss": self.loss in ("triplet", "infonce"),
            "eval_split": self.eval_split in ("train", "val", "test"),
            "eval_every": self.eval_every >= 1,
            "save_every_steps": self.save_every_steps >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid {name}: {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _known(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _check_keys(d: dict[str, Any], cls: type, where: str) -> None:
    unknown = sorted(set(d) - _known(cls))
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_known(cls)))}"
        )


def _section(value: Any, where: str) -> dict[str, Any]:
    """A nested section (``model``, ``model.pico``) as a dict; None/absent = empty."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping of options, got {type(value).__name__}")
    return dict(value)


def _check_tree(d: dict[str, Any], where: str) -> None:
    """Reject unknown keys at every level without building (values may still be overridden)."""
    _check_keys(d, TrainConfig, where)
    model = _section(d.get("model"), f"{where}: model")
    _check_keys(model, ModelConfig, f"{where}: model")
    pico = _section(model.get("pico"), f"{where}: model.pico")
    _check_keys(pico, PICOConfig, f"{where}: model.pico")


def config_from_dict(
    d: dict[str, Any], where: str = "config", origins: Mapping[str, str] | None = None
) -> TrainConfig:
    """Build a TrainConfig from nested dicts, rejecting unknown keys at every level and any
    value of the wrong type; ``origins`` maps dotted keys to the flag that set them."""
    from picoalign.config.typed import validate

    d = dict(d)
    _check_keys(d, TrainConfig, where)
    model = _section(d.pop("model", None), f"{where}: model")
    _check_keys(model, ModelConfig, f"{where}: model")
    pico = _section(model.pop("pico", None), f"{where}: model.pico")
    _check_keys(pico, PICOConfig, f"{where}: model.pico")
    return validate({**d, "model": {**model, "pico": pico}}, where, origins)


def load_config(
    path: str | Path | None,
    overrides: dict[str, Any] | None = None,
    *,
    base: str | Path | None = None,
    origins: Mapping[str, str] | None = None,
) -> TrainConfig:
    """Defaults, then the YAML file (if any), then ``overrides`` (dotted keys allowed:
    ``{"model.pico.tau": 0.5}``). ``base`` (a run's ``config.yaml``, for ``--resume``) comes
    between the defaults and the file. ``origins`` names where an override came from
    (``{"model.pico.tau": "--set", "lr": "--lr"}``) for error messages."""
    data: dict[str, Any] = {}
    where = "defaults"
    if base is not None:
        data = _read_yaml(Path(base))
        where = str(base)
    if path is not None:
        loaded = _read_yaml(Path(path))
        where = str(path)
        data = _merge(data, loaded)
    for key, value in (overrides or {}).items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ValueError(f"override {key}: {part!r} is not a section of options")
        node[leaf] = value
    if overrides:  # a key or value problem now may come from the overrides
        where = "overrides" if path is None else f"{where} + overrides"
    return config_from_dict(data, where, origins)


def _read_yaml(p: Path) -> dict[str, Any]:
    """A config file as nested dicts; its unknown keys are reported against the file."""
    if not p.is_file():
        raise FileNotFoundError(f"{p}: config file not found")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: invalid YAML ({e})") from e
    if not isinstance(loaded, dict):
        raise ValueError(f"{p}: expected a mapping of options at the top level")
    _check_tree(loaded, str(p))
    return loaded


def _merge(low: dict[str, Any], high: dict[str, Any]) -> dict[str, Any]:
    """``high`` over ``low``, section by section (a file's ``model.pico.tau`` keeps the
    base's other ``model.pico`` options)."""
    out = dict(low)
    for k, v in high.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def dump_config(cfg: TrainConfig) -> str:
    """The config as plain YAML, without what a run derives (feature widths, PICO's dim):
    those are not options (:data:`picoalign.config.typed.DERIVED`)."""
    d = cfg.to_dict()
    for key in ("image_dim", "text_dim"):
        d["model"].pop(key, None)
    d["model"]["pico"].pop("dim", None)
    return yaml.safe_dump(d, sort_keys=False)
