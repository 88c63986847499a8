"""The field's dataset formats and users' own data, as :class:`ImageCaptionDataset`.

* :func:`jsonl` — picoalign's own format, one image per line::

      {"image": "imgs/dog.png", "captions": ["a dog", "a brown dog"], "split": "train"}

  ``split`` is required (``train``, ``val``/``dev``, ``test``): a line without one is an
  error, because silently guessing where an image goes decides what is tested. Say what
  lines without a split are with ``default_split`` (spec option ``default-split=``):
  ``"train"`` (everything is training data; a val split is then carved from it, see
  :mod:`picoalign.data.check`) or ``"seeded"`` (a seeded split by ``group``, 70/10/20).
  ``group`` is optional (default: the image path; give images of one concept the same group
  to keep them in one split).
  ``caption`` (a string) is accepted instead of ``captions``. Relative paths are resolved
  against ``root`` (default: the file's folder) and may not leave it.
* :func:`karpathy` — ``dataset_flickr30k.json`` / ``dataset_coco.json`` (restval → train).
* :func:`laps` — the LAPS / VSE∞ layout (``precomp/{split}_ids.txt``, ``{split}_caps.txt``,
  ``id_mapping.json``).
* :func:`precomp` — precomputed image token features (SCAN/VSE ``{split}_ims.npy`` or
  ``.safetensors``). Its items have no image (``load`` raises DataError); fetch features with
  ``tokens, mask = dataset.image_features(keys)`` (float32 B x T x C, bool B x T). Details in
  :mod:`picoalign.data.precomp`.

Every problem is reported as ``FILE line N: what is wrong``, all of a file's problems at once
(:class:`~picoalign.data.base.DataProblems`). File existence is checked when the dataset is
built (a cheap ``stat``); image headers are checked by :mod:`picoalign.data.check`, decoding
happens lazily in ``load``. With ``skip_bad=True`` bad records are dropped and listed in
``dataset.skipped`` instead, so a scrape with a few broken lines can still be used while its
defects stay visible.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from picoalign.data._text import (
    Problems,
    RepeatedKey,
    find_split_files,
    loads_json,
    read_caption_file,
    read_lines,
)
from picoalign.data.base import (
    DataError,
    ImageCaptionDataset,
    Item,
    items_fingerprint,
)
from picoalign.data.images import FileLoader
from picoalign.data.jsonl import jsonl
from picoalign.data.precomp import precomp
from picoalign.data.records import inside, split_value, stat_image, text_list

__all__ = ["jsonl", "karpathy", "laps", "precomp"]


# --------------------------------------------------------------------------- Karpathy


def _karpathy_record(rec: Any, image_root: Path) -> Item:
    if not isinstance(rec, dict):
        raise DataError(f"expected an object, got {type(rec).__name__}")
    filename, filepath = rec.get("filename"), rec.get("filepath", "")
    if not isinstance(filename, str) or not filename:
        hint = ' (it has "file_name", the COCO annotations\' key: Karpathy\'s is "filename")'
        raise DataError('missing or non-string "filename"' + (hint if "file_name" in rec else ""))
    if not isinstance(filepath, str):
        raise DataError('"filepath" must be a string')
    if "split" not in rec:
        raise DataError('missing key "split"')
    split = split_value(rec["split"])
    sentences = rec.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise DataError('"sentences" must be a non-empty list')
    raws = []
    for i, s in enumerate(sentences):
        raw = s.get("raw") if isinstance(s, dict) else None
        blank = raw is None or (isinstance(raw, str) and not raw.strip())
        if blank and isinstance(s, dict) and isinstance(s.get("tokens"), list) and s["tokens"]:
            raw = " ".join(map(str, s["tokens"]))
        raws.append(raw)
        if not isinstance(raw, str):
            got = " (it is a plain string: Karpathy's are objects" if isinstance(s, str) else ""
            raise DataError(
                f'sentences[{i}] has no "raw" string'
                + (f'{got}, {{"raw": ..., "tokens": [...]}})' if got else "")
            )
    captions = text_list(raws, "sentences[].raw")
    full, key = inside(image_root, f"{filepath}/{filename}" if filepath else filename)
    return Item(key, captions, split, key, str(full))


def _check_image_root(image_root: Path, check_files: bool = True) -> None:
    """A missing image folder is one line, not one "image file not found" per image."""
    if check_files and not image_root.is_dir():
        what = "is a file, not a folder" if image_root.exists() else "no such folder"
        raise DataError(f"image folder {image_root}: {what} (IMAGE_ROOT of the spec)")


def karpathy(
    json_path: Path | str,
    image_root: Path | str,
    *,
    skip_bad: bool = False,
    check_files: bool = True,
) -> ImageCaptionDataset:
    """Karpathy-split JSON (Flickr8k/30k, COCO). Image path = ``image_root/[filepath/]filename``;
    the splits are the file's own (``restval`` joins train), so no seed is involved."""
    json_path, image_root = Path(json_path), Path(image_root)
    _check_image_root(image_root, check_files)
    try:
        data = loads_json(json_path.read_bytes().decode("utf-8-sig"))  # a BOM, as in JSONL
    except FileNotFoundError:
        raise DataError(f"{json_path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RepeatedKey) as e:
        raise DataError(f"{json_path}: not a readable UTF-8 JSON file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f'{json_path}: expected {{"images": [...]}} (a Karpathy split file)')
    problems = Problems(skip_bad)
    items: list[Item] = []
    where_of: dict[str, str] = {}
    stats: list[str] = []
    for i, rec in enumerate(data["images"]):
        where = f"{json_path} images[{i}]"
        try:
            item = _karpathy_record(rec, image_root)
            if item.key in where_of:
                raise DataError(f"duplicate image {item.key!r} (first at {where_of[item.key]})")
            if check_files:
                stats.append(stat_image(Path(item.source)))
        except DataError as e:
            problems.add(where, str(e))
            continue
        where_of[item.key] = where
        items.append(item)
    if not items:
        problems.empty(str(json_path))
    fp = items_fingerprint(
        "karpathy", str(json_path.resolve()), str(image_root.resolve()), *stats, items=items
    )
    return problems.finish(
        ImageCaptionDataset(
            json_path.stem, items, FileLoader(where_of=where_of), fp, root=image_root
        )
    )


# --------------------------------------------------------------------------- LAPS / VSE∞


def _find_mapping(data_dir: Path, precomp_dir: Path) -> Path:
    for d in (data_dir, precomp_dir, precomp_dir.parent):
        if (d / "id_mapping.json").is_file():
            return d / "id_mapping.json"
    raise DataError(
        f"{data_dir}: no id_mapping.json (LAPS layout: DIR/id_mapping.json, "
        "DIR/precomp/{train,dev,test}_{ids,caps}.txt)"
    )


def laps(
    data_dir: Path | str,
    image_root: Path | str,
    *,
    skip_bad: bool = False,
    check_files: bool = True,
) -> ImageCaptionDataset:
    """The LAPS / VSE∞ raw-image layout.

    ``{split}_ids.txt`` holds one image id per line: either one per caption (equal line
    counts) or one per image with ``len(caps) / len(ids)`` (5) captions per image, in order.
    ``id_mapping.json`` maps id → file name under ``image_root``. Split files: ``train``,
    ``dev`` (→ val), ``testall`` or else ``test`` (→ test; COCO's 5K ``testall`` contains the
    1K ``test``, so only one is read).
    """
    data_dir, image_root = Path(data_dir), Path(image_root)
    split_dir, found = find_split_files(data_dir, ("_ids.txt",))
    _check_image_root(image_root, check_files)  # after the layout: its message comes first
    mapping_path = _find_mapping(data_dir, split_dir)
    try:
        mapping = loads_json(mapping_path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RepeatedKey) as e:
        raise DataError(f"{mapping_path}: not a readable UTF-8 JSON file ({e})") from None
    if not isinstance(mapping, dict):
        raise DataError(f"{mapping_path}: expected an object mapping image id to file name")
    problems = Problems(skip_bad)
    items: list[Item] = []
    where_of: dict[str, str] = {}
    stats: list[str] = []
    for split, prefix in found.items():
        ids_path = split_dir / f"{prefix}_ids.txt"
        caps = read_caption_file(split_dir / f"{prefix}_caps.txt", problems)
        ids = list(read_lines(ids_path, problems, drop_trailing_blank=True))
        if not ids or not caps or len(caps) % len(ids):  # 0 % n is 0: an empty file fit
            raise DataError(
                f"{split_dir / (prefix + '_caps.txt')}: {len(caps)} captions do not "
                f"fit {len(ids)} ids in {ids_path} (need equal counts or a multiple)"
            )
        per = len(caps) // len(ids)
        by_id: dict[str, tuple[str, list[str]]] = {}  # id -> (where, captions); insertion order
        for i, (_, _, cap) in enumerate(caps):
            n_id, image_id = ids[i // per]
            if image_id is None:
                continue  # undecodable id line, already reported
            image_id = image_id.strip()
            where = f"{ids_path} line {n_id}"
            if image_id not in by_id:
                by_id[image_id] = (where, [])
            if cap is not None:
                by_id[image_id][1].append(cap)
        for image_id, (where, captions) in by_id.items():
            try:
                rel = mapping.get(image_id)
                if not isinstance(rel, str):
                    raise DataError(f"image id {image_id!r} is not in {mapping_path.name}")
                full, key = inside(image_root, rel)
                if key in where_of:
                    raise DataError(f"image {key!r} also at {where_of[key]}")
                if not captions:
                    raise DataError(f"image id {image_id!r} has no usable caption")
                if check_files:
                    stats.append(stat_image(full))
            except DataError as e:
                problems.add(where, str(e))
                continue
            where_of[key] = where
            items.append(Item(key, tuple(captions), split, key, str(full)))
    if not items:
        problems.empty(str(data_dir))
    fp = items_fingerprint(
        "laps", str(data_dir.resolve()), str(image_root.resolve()), *stats, items=items
    )
    return problems.finish(
        ImageCaptionDataset(
            data_dir.name, items, FileLoader(where_of=where_of), fp, root=image_root
        )
    )
