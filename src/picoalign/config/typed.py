"""Typed validation of every option of TrainConfig, ModelConfig and PICOConfig (pydantic v2).

Why pydantic and not hand-written coercion: the dataclasses' annotations already say what each
option is (``bool``, ``Literal[...]``, ``list[int]``); validating against them covers every
field, including ones added later, where a partial hand-written check let ``feedback=maybe``
into a checkpoint and crashed on ``lam=high`` with a ``'<='`` TypeError. The mode is pydantic's
default (lax) on purpose: YAML 1.1 reads ``1e-3`` as a string, and ``"1e-3"`` → 0.001 is the
one string coercion users rely on; a string that is not a number, a bool that is not one of
true/false/yes/no/on/off/1/0, a value outside a ``Literal`` or a scalar for a list is refused.

Errors are :class:`ConfigError` (a ``ValueError``, so the CLI prints one line): the dotted key,
the value, what was expected and where it came from (``--set``, a flag or the file).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

# what a training run derives instead of reading it: widths from the features, PICO's dim
# from embed_dim (picoalign.training.derived.model_config_for, ModelConfig.__post_init__)
DERIVED = {
    "model.image_dim": "the image features' width",
    "model.text_dim": "the text features' width",
}


class ConfigError(ValueError):
    """An option with a wrong key, type or value; the message names it and its origin."""


@lru_cache(maxsize=1)
def _adapter() -> TypeAdapter[Any]:
    from picoalign.config.loading import TrainConfig

    return TypeAdapter(TrainConfig)


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def _origin(key: str, origins: Mapping[str, str], where: str) -> str:
    """Who set ``key`` (or the option it is an element of, ``lr_steps.0``): its flag or
    ``--set`` (from ``origins``), else the file/defaults."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in origins:
            return origins[".".join(parts[:n])]
    return where


def describe(key: str, value: Any, origins: Mapping[str, str], where: str) -> str:
    """``--set model.pico.lam=high`` / ``--lr 0.5`` / ``FILE: model.pico.lam = 'high'``."""
    origin = _origin(key, origins, where)
    if origin == "--set":
        return f"--set {key}={value}"
    if origin.startswith("--"):
        return f"{origin} {value}"
    return f"{origin}: {key} = {value!r}"


def validate(data: dict[str, Any], where: str, origins: Mapping[str, str] | None = None) -> Any:
    """Build a TrainConfig from nested dicts (keys already checked), typed field by field."""
    origins = origins or {}
    check_derived(data, where, origins)
    try:
        return _adapter().validate_python(data)
    except ValidationError as e:
        raise ConfigError("; ".join(_messages(e.errors(), data, where, origins))) from e


_UNION_TAG = re.compile(r"^(int|float|str|bool|list|dict|none|literal\[.*\]|function-.*)$")


def _messages(
    errors: list[Any], data: dict[str, Any], where: str, origins: Mapping[str, str]
) -> list[str]:
    """One message per option. A value that fits no member of a union (``epochs``: an
    integer or ``auto``) gets one error per member from pydantic, located at
    ``epochs.int`` and ``epochs.literal['auto']``: those become one message at the option,
    naming every alternative."""
    by_key: dict[str, list[Any]] = {}
    for err in errors:
        loc = list(err["loc"])
        while loc and isinstance(loc[-1], str) and _UNION_TAG.match(loc[-1]):
            loc.pop()
        by_key.setdefault(_dotted(tuple(loc)), []).append({**err, "loc": tuple(loc)})
    out = []
    for key, errs in by_key.items():
        if len(errs) == 1:
            out.append(_message(errs[0], data, where, origins))
            continue
        wants = []
        for e in errs:  # "a valid integer, got a number with …" -> "a valid integer (got …)"
            want, got, why = e["msg"].removeprefix("Input should be ").partition(", got ")
            wants.append(f"{want} (got {why})" if got else want)
        value = errs[0].get("input")
        out.append(f"{describe(key, value, origins, where)}: should be {', or '.join(wants)}")
    return out


def _message(err: Any, data: dict[str, Any], where: str, origins: Mapping[str, str]) -> str:
    key = _dotted(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "value_error":  # a range check of a __post_init__: names its option
        named = re.match(r"(?:invalid )?(?:\w+Config\.)?(\w+)(?::| must)", msg)
        option = ".".join(p for p in (key, named and named[1]) if p)
        if named and _origin(option, origins, where) != where:  # what the user typed
            return f"{describe(option, _lookup(data, option), origins, where)}: {msg}"
        section = f"{key}: " if key else ""
        origin = where if not origins else f"{where} or the command line"
        return f"{origin}: {section}{msg}"
    value = err.get("input")
    hint = ""
    if err["type"] == "list_type" and not isinstance(value, (dict, list)):
        hint = f" (write a list, e.g. {key}=[{value}])"
    return f"{describe(key, value, origins, where)}: {msg}{hint}"


def _lookup(data: dict[str, Any], key: str) -> Any:
    """The value at a dotted key of nested dicts (None where there is none)."""
    node: Any = data
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def check_derived(data: dict[str, Any], where: str, origins: Mapping[str, str]) -> None:
    """Refuse options a run derives (they used to be silently overwritten). A value equal to
    what would be used anyway (the default, as older config.yaml files store) is accepted."""
    from picoalign.config.model import ModelConfig

    model = data.get("model") or {}
    if not isinstance(model, dict):
        return
    defaults = ModelConfig()
    for key, what in DERIVED.items():
        leaf = key.split(".")[-1]
        if leaf in model and model[leaf] != getattr(defaults, leaf):
            raise ConfigError(
                f"{describe(key, model[leaf], origins, where)}: not settable, it is taken "
                f"from {what}; remove it"
            )
    pico = model.get("pico") or {}
    embed = model.get("embed_dim", defaults.embed_dim)
    if isinstance(pico, dict) and "dim" in pico and pico["dim"] != embed:
        raise ConfigError(
            f"{describe('model.pico.dim', pico['dim'], origins, where)}: not settable, PICO's "
            f"dim is always model.embed_dim ({embed}); set model.embed_dim instead"
        )
