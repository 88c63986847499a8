"""What ``GalleryIndex.search_text`` / ``search_image`` accept, checked before any encoding:
one query or many (a generator is read once), no blank text, image files that exist; and the
warnings for a text query the encoder reads only in part or not at all."""

from __future__ import annotations

import unicodedata
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:  # for the annotations only: the model layer sits above this one
    from picoalign.model import PicoAligner


def text_queries(queries: str | Iterable[str]) -> list[str]:
    """One string or an iterable of them, as a list; ValueError for none, a non-string, or
    a blank query (it would still rank the gallery, by the empty caption's special tokens)."""
    if isinstance(queries, str):
        queries = [queries]
    elif not isinstance(queries, Iterable):  # None, a number: not "not iterable"
        raise ValueError("queries must be a string or a non-empty list of strings")
    queries = list(queries)
    if not queries or not all(isinstance(x, str) for x in queries):
        raise ValueError("queries must be a string or a non-empty list of strings")
    blank = [i for i, x in enumerate(queries) if not _readable(x)]
    if blank:
        raise ValueError(
            f"text query {blank[0] + 1} is empty (or only invisible characters): nothing "
            "to search for"
        )
    return queries


def image_queries(images: Any) -> list[Any]:
    """One PIL image or path, or an iterable of them, as a list; a path must be a file."""
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    elif not isinstance(images, Iterable):
        raise ValueError("images must be a PIL image, a path or a non-empty list of them")
    images = list(images)
    if not images:
        raise ValueError("images must be a PIL image, a path or a non-empty list of them")
    for x in images:
        if isinstance(x, (str, Path)) and not Path(x).expanduser().is_file():
            what = "is a folder, not an image" if Path(x).expanduser().is_dir() else "not found"
            raise FileNotFoundError(f"{x}: image {what}")
    return images


def _readable(text: str) -> bool:
    """Whether ``text`` has a letter, digit, symbol or punctuation mark: a zero-width space,
    a control character or a lone combining mark encodes to nothing but special tokens."""
    return any(unicodedata.category(ch)[0] in "LNSP" for ch in text)


def warn_if_cut(model: PicoAligner, queries: Sequence[str]) -> None:
    """Warn for each query longer than the text encoder reads (MiniLM: 32 tokens): its end
    would be dropped without a word; and for each the tokenizer knows no word of (an emoji
    or a script outside its vocabulary is only ``[UNK]``), which ranked the gallery by the
    unknown token, without a word."""
    enc = model.backbone("text")
    tokenizer, most = getattr(enc, "tokenizer", None), getattr(enc, "max_length", None)
    if tokenizer is None or most is None:
        return
    unk = getattr(tokenizer, "unk_token_id", None)
    for i, q in enumerate(queries, 1):
        own = tokenizer(q, add_special_tokens=False)["input_ids"]
        if unk is not None and own and all(t == unk for t in own):
            warnings.warn(
                f"text query {i} ({q!r}) holds no word the text encoder knows (its tokenizer "
                "reads it as unknown): the results rank the gallery by nothing in it",
                stacklevel=3,
            )
        n = len(tokenizer(enc.prepare([q])[0], truncation=False)["input_ids"])
        if n > most:
            warnings.warn(
                f"text query {i} has {n} tokens; the text encoder reads the first {most}, so "
                "the rest is not searched",
                stacklevel=3,
            )
