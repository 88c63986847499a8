"""Training configuration as data: one dataclass, loadable from YAML, dumped next to every
checkpoint so a run can always be reproduced from its own folder.

Precedence: defaults < ``--config FILE`` < command-line flags. Nested sections ``model`` and
``pico`` map to :class:`~picoalign.config.model.ModelConfig` and
:class:`~picoalign.core.pico.PICOConfig`;
an unknown key is an error naming the file and the key (a typo must not silently do nothing),
and every value is validated against its field's type (:mod:`picoalign.config.typed`).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

import yaml

from picoalign.config.model import ModelConfig
from picoalign.core.pico_config import PICOConfig


@dataclass
class TrainConfig:
    """One training run. Defaults are the CPU recipe on cached frozen features."""

    data: str = "twemoji"
    out: str = "runs/pico"
    # The recipe trained to convergence (METHOD.md §7, docs/results.md): reading B learns
    # slower and then overtakes, so a short budget favours the baseline. Every method gets it.
    # "auto" sizes it to the data (picoalign.training.schedule.auto_epochs): 20 epochs with
    # one caption per image, 6 with five, where every family overtrained at 20
    epochs: int | Literal["auto"] = "auto"
    batch_size: int = 128
    lr: float = 5e-4
    backbone_lr_mult: float = 0.1  # for fine-tuned backbones
    weight_decay: float = 1e-4
    # lr ×= lr_gamma at these points: a value < 1 is a fraction of ``epochs`` (so changing the
    # epochs keeps the schedule's shape), a value ≥ 1 an epoch number
    lr_steps: list[float] = field(default_factory=lambda: [0.6, 0.85])
    lr_gamma: float = 0.3
    grad_clip: float = 2.0
    loss: Literal["triplet", "infonce"] = "triplet"
    margin: float = 0.8  # best mean validation rSum for the baseline (docs/results.md)
    triplet_warmup_epochs: int = 1  # sum over all negatives before switching to hardest
    pico_warmup_epochs: int = 2  # p ≡ 1 for these epochs
    seed: int = 0  # the training seed: initialisation, data order
    # the seed of the built-in datasets' train/val/test split, apart from the training seed,
    # so that seeds vary only the training and every seed is tested on the same images
    split_seed: int = 0
    # which model OUT/best holds: "last" (the final epoch of the convergent schedule) or
    # "val" (the epoch with the best validation rSum). Validation sets of 127–172 images are
    # too noisy to pick an epoch: best-by-val scored up to 16 rSum below the last epoch on test
    select: Literal["last", "val"] = "last"
    device: str = "auto"
    # bf16 autocast of the encoders and heads: "auto" = on for CUDA, off for CPU; true on a CPU
    # is honoured only with AMX/AVX512-BF16, else fp32 with a warning (docs/performance.md)
    amp: bool | Literal["auto"] = "auto"
    eval_split: Literal["train", "val", "test"] = "val"
    eval_every: int = 1
    # also checkpoint every N steps inside an epoch (0 = at epoch ends only): a killed run
    # resumes from the last such step with the same data order and RNG state
    save_every_steps: int = 0
    # under torchrun: the loss sees the negatives of the whole global batch (all-gathered), as
    # one process would; False = each rank's shard only (less communication)
    gather_negatives: bool = True
    # drop the caption token slots that no caption of a batch uses before the heads and the
    # scorer: the same scores in exact arithmetic, fewer multiplications where captions are
    # short against the padded width (docs/performance.md), but other rounding, so off by
    # default and in the study until it is re-run with it
    trim_padding: bool = False
    # fine-grained scorers: a backward through only the scores the loss gives a gradient
    # (about 3 in B under the hardest-negative triplet), by gathers instead of two dense GEMMs
    # (docs/performance.md). The same gradient in exact arithmetic, other rounding: off by
    # default and in the study until it is re-run with it
    sparse_backward: bool = False
    cache_dir: str | None = None
    skip_bad: bool = False
    # refuse images with more pixels than this (None: Pillow's own bomb limit, 2x
    # PIL.Image.MAX_IMAGE_PIXELS = 179 MP); larger images are decoded downscaled
    max_image_pixels: int | None = None
    progress: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        # range checks; types are validated by load_config (picoalign.config.typed), these
        # few isinstance checks keep direct Python construction from failing obscurely
        if isinstance(self.model, dict):
            self.model = ModelConfig(**self.model)
        if isinstance(self.lr_steps, list):  # epoch numbers stay integers (8, not 8.0)
            self.lr_steps = [
                int(x) if isinstance(x, float) and (x >= 1 or x == 0) and x.is_integer() else x
                for x in self.lr_steps
            ]
        if not (self.epochs == "auto" or isinstance(self.epochs, int)):
            raise ValueError(f"invalid epochs: {self.epochs!r} (expected an integer or auto)")
        for name in (
            "batch_size",
            "eval_every",
            "save_every_steps",
        ):  # e.g. --set epochs=many
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"invalid {name}: {getattr(self, name)!r} (expected an integer)")
        for name in ("lr", "margin"):
            if not isinstance(getattr(self, name), (int, float)):
                raise ValueError(f"invalid {name}: {getattr(self, name)!r} (expected a number)")
        fin = {  # inf passed "> 0" and NaN gave another message per option
            n: isinstance(getattr(self, n), (int, float)) and math.isfinite(getattr(self, n))
            for n in ("lr", "margin", "weight_decay", "backbone_lr_mult", "lr_gamma", "grad_clip")
        }
        checks = {  # name -> (valid, what was expected)
            "epochs": (self.epochs == "auto" or self.epochs >= 1, "an integer >= 1, or auto"),
            "batch_size": (self.batch_size >= 2, "an integer >= 2"),
            "lr": (fin["lr"] and 0 < self.lr < FP32_MAX, "a finite number > 0, below 3.4e38"),
            "margin": (fin["margin"] and self.margin >= 0, "a finite number >= 0"),
            **{name: _choice(self, name) for name in ("loss", "eval_split", "select")},
            "lr_steps": (
                isinstance(self.lr_steps, list)
                and all(
                    isinstance(x, (int, float))
                    and (x > 0 or (x == 0 and isinstance(x, int)))
                    and (x < 1 or float(x).is_integer())  # 1.5 was cut to epoch 1
                    for x in self.lr_steps
                ),
                "a list of epochs >= 0 or fractions of training in (0, 1)",
            ),
            "eval_every": (self.eval_every >= 1, "an integer >= 1"),
            "save_every_steps": (self.save_every_steps >= 0, "an integer >= 0 (0 = off)"),
            # checked here, not by the optimiser or the warm-up: a bad value would otherwise
            # surface after the data is encoded, or under another option's name
            "weight_decay": (
                fin["weight_decay"] and self.weight_decay >= 0,
                "a finite number >= 0",
            ),
            "backbone_lr_mult": (
                fin["backbone_lr_mult"] and self.backbone_lr_mult >= 0,
                "a finite number >= 0",
            ),
            "lr_gamma": (fin["lr_gamma"] and self.lr_gamma > 0, "a finite number > 0"),
            "grad_clip": (
                fin["grad_clip"] and self.grad_clip >= 0,
                "a finite number >= 0 (0 = off)",
            ),
            "triplet_warmup_epochs": (self.triplet_warmup_epochs >= 0, "an integer >= 0"),
            "pico_warmup_epochs": (self.pico_warmup_epochs >= 0, "an integer >= 0"),
            "max_image_pixels": (
                self.max_image_pixels is None
                or (isinstance(self.max_image_pixels, int) and self.max_image_pixels >= 1),
                "an integer >= 1, or null for Pillow's limit",
            ),
        }
        if isinstance(self.amp, str) and self.amp.lower() in ("true", "false"):
            self.amp = self.amp.lower() == "true"  # --set amp=true reads as a string
        checks["amp"] = (self.amp in (True, False, "auto"), "true, false or auto")
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"invalid {name}: {getattr(self, name)!r} (expected {expected})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lr_step_epochs(self) -> list[int]:
        """The 0-based epochs from which each lr step applies (fractions resolved)."""
        if self.epochs == "auto":  # the data decides it: training resolves it first
            raise ValueError("epochs=auto is not resolved yet (schedule.resolve_epochs)")
        return [round(s * self.epochs) if s < 1 else int(s) for s in self.lr_steps]


FP32_MAX = 3.4028234663852886e38  # the optimiser's state is fp32: a larger lr overflows it


def yaml_problem(e: yaml.YAMLError, *, lines: bool = True) -> str:
    """PyYAML's several-line message in one line: what is wrong and where (1-based), so that
    a CLI that prints one line keeps the position."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
    if mark is None:
        return problem
    if lines:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return f"{problem} at column {mark.column + 1}"


def _field_type(key: str) -> Any:
    """The annotation of a dotted option (``model.prompt`` → str), or None if unknown."""
    import typing

    cls: Any = TrainConfig
    *parents, leaf = key.split(".")
    for part in parents:
        sub = {"model": ModelConfig, "pico": PICOConfig}.get(part)
        if sub is None or part not in _known(cls):
            return None
        cls = sub
    return typing.get_type_hints(cls).get(leaf)


def override_value(key: str, raw: str) -> Any:
    """The value of ``--set KEY=RAW``: RAW read as YAML (``0.5``, ``true``, ``[0.6, 0.85]``),
    except that a text option keeps RAW as typed where YAML would make it something else or
    cannot read it. Why: a prompt is naturally written ``model.prompt={} emoji``, which YAML
    cannot parse, or ``model.prompt={}``, which YAML reads as an empty mapping. Anything else
    YAML cannot read is a one-line error that says where."""
    typ = _field_type(key)
    text_option = typ is str or (typ is not None and str in getattr(typ, "__args__", ()))
    try:
        value = yaml.load(raw, Loader=_UniqueKeys)  # a SafeLoader: no code runs
    except yaml.YAMLError as e:
        if text_option:
            return raw
        raise ValueError(
            f"--set {key}={raw}: not a value YAML can read ({yaml_problem(e, lines=False)}); "
            "write numbers as 0.5, lists as [0.6, 0.85], and quote text"
        ) from None
    if text_option and not isinstance(value, str) and not (value is None and typ is not str):
        return raw  # {} (a mapping to YAML), 123, true: the option is text, as typed
    return value


def _known(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _check_keys(
    d: dict[str, Any], cls: type, where: str, deeper: tuple[tuple[str, type], ...] = ()
) -> None:
    """Unknown keys of one level, each with a hint: a close spelling, or the section it
    belongs in (``method:`` at the top of a file is ``model: {method: ...}``)."""
    known = _known(cls)
    unknown = sorted(set(d) - known)
    if unknown:
        hints = []
        for k in unknown:
            section = next((name for name, sub in deeper if k in _known(sub)), None)
            close = difflib.get_close_matches(k, known, n=1)
            if section is not None:
                hints.append(f"{k} belongs under {section}: ({section}.{k})")
            elif close:
                hints.append(f"did you mean {close[0]} for {k}?")
        hint = "; ".join(hints)
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(unknown)}"
            + (f" ({hint})" if hint else "")
            + f"; known: {', '.join(sorted(known))}"
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
    _check_keys(d, TrainConfig, where, (("model", ModelConfig), ("model.pico", PICOConfig)))
    model = _section(d.get("model"), f"{where}: model")
    _check_keys(model, ModelConfig, f"{where}: model", (("pico", PICOConfig),))
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
        data = read_yaml(Path(base))
        where = str(base)
    if path is not None:
        loaded = read_yaml(Path(path))
        where = str(path)
        data = _merge(data, loaded)
    for key, value in (overrides or {}).items():
        nested: dict[str, Any] = {}  # the key alone, checked and named by its own flag
        for part in reversed(key.split(".")):
            nested = {part: nested or value}
        _check_tree(nested, (origins or {}).get(key, "overrides"))
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


class _UniqueKeys(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the
    last, so ``epochs: 2`` then ``epochs: 3`` trained 3 epochs without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)  # merge keys (<<: *base) first, as PyYAML does
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, collections.abc.Hashable):
                break  # PyYAML's own "found unhashable key" follows
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(p: Path) -> dict[str, Any]:
    """A config file as nested dicts; its unknown keys are reported against the file."""
    if not p.is_file():
        raise FileNotFoundError(f"{p}: config file not found")
    try:
        loaded = yaml.load(p.read_text(), Loader=_UniqueKeys)  # a SafeLoader: no code runs
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: invalid YAML ({yaml_problem(e)})") from e
    if loaded is None or loaded == {}:  # an empty file trained every default, for minutes
        raise ValueError(f"{p}: the config file holds no options; give some, or leave it out")
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


def _choice(cfg: TrainConfig, name: str) -> tuple[bool, str]:
    """Whether option ``name`` is one of its annotation's choices, and those in words: the
    ``Literal`` is the one list of them (a second list here had to be kept in step)."""
    allowed = get_args(get_type_hints(TrainConfig)[name])
    return getattr(cfg, name) in allowed, ", ".join(allowed[:-1]) + " or " + allowed[-1]
