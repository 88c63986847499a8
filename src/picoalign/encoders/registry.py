"""Name -> factory registries for image and text encoders.

Configs and the CLI name encoders by string (``"efficientnet-lite0"``, ``"minilm"``,
``"hf:google/vit-base-patch16-224"``). A spec is either an exact registered name, or
``PREFIX:ARGUMENT`` where ``PREFIX:`` is registered and the factory receives ``ARGUMENT`` as its
first positional argument. Both cases go through the same dictionaries, so adding an encoder
family is one decorator and never an edit to a dispatch chain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .base import ImageEncoder, TextEncoder

F = TypeVar("F", bound=Callable[..., Any])

_IMAGE: dict[str, Callable[..., ImageEncoder]] = {}
_TEXT: dict[str, Callable[..., TextEncoder]] = {}


class UnknownEncoderError(KeyError):
    """An encoder spec that names nothing registered; the message lists what is."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def _register(table: dict[str, Callable[..., Any]], name: str, kind: str) -> Callable[[F], F]:
    if not name or name.count(":") > 1 or (":" in name and not name.endswith(":")):
        raise ValueError(f"{kind} encoder name must be 'name' or 'prefix:', got {name!r}")

    def deco(factory: F) -> F:
        if name in table and table[name] is not factory:
            raise ValueError(f"{kind} encoder {name!r} is already registered")
        table[name] = factory
        return factory

    return deco


def register_image_encoder(name: str) -> Callable[[F], F]:
    """Register an image encoder factory (a class or function returning an ImageEncoder).

    ``name`` ending in ``":"`` registers a prefix family: ``"hf:"`` handles ``"hf:ANYTHING"``.
    """
    return _register(_IMAGE, name, "image")


def register_text_encoder(name: str) -> Callable[[F], F]:
    """Register a text encoder factory; see :func:`register_image_encoder`."""
    return _register(_TEXT, name, "text")


def _create(table: dict[str, Callable[..., Any]], spec: str, kind: str, kw: dict[str, Any]) -> Any:
    if not isinstance(spec, str):
        raise TypeError(f"{kind} encoder spec must be a string, got {type(spec).__name__}")
    if spec in table and not spec.endswith(":"):
        return table[spec](**kw)
    prefix, sep, arg = spec.partition(":")
    factory = table.get(prefix + sep) if sep else None
    if factory is None:
        names = ", ".join(sorted(n + ("NAME_OR_PATH" if n.endswith(":") else "") for n in table))
        raise UnknownEncoderError(f"unknown {kind} encoder {spec!r}; available: {names}")
    if not arg:
        raise ValueError(f"{kind} encoder spec {spec!r} needs an argument after {prefix + sep!r}")
    return factory(arg, **kw)


def create_image_encoder(spec: str | ImageEncoder, **kwargs: Any) -> ImageEncoder:
    """Build an image encoder from a spec (an existing encoder instance is returned as is)."""
    if isinstance(spec, ImageEncoder):
        return spec
    return _create(_IMAGE, spec, "image", kwargs)


def create_text_encoder(spec: str | TextEncoder, **kwargs: Any) -> TextEncoder:
    """Build a text encoder from a spec (an existing encoder instance is returned as is)."""
    if isinstance(spec, TextEncoder):
        return spec
    return _create(_TEXT, spec, "text", kwargs)


def list_encoders() -> dict[str, list[str]]:
    """Registered names: ``{"image": [...], "text": [...]}`` (prefix families end in ``:``)."""
    return {"image": sorted(_IMAGE), "text": sorted(_TEXT)}
