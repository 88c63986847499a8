"""An index's ``manifest.json``, read and checked: every field that search reads has the
type and range picoalign writes, so a hand edit or a damaged disk is refused in one line
naming the file and the field, not met later as a KeyError, a faiss assertion or results
filed under the wrong names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from picoalign.marks import INDEX_FORMAT, INDEX_FORMAT_VERSION
from picoalign.retrieval.first_stage import STAGES

FORMAT, FORMAT_VERSION = INDEX_FORMAT, INDEX_FORMAT_VERSION
REQUIRED = ("format", "format_version", "kind", "dims", "dtype", "first_stage", "keys", "sources")
KINDS = ("images", "captions")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
DATA_FILES = ("tokens.safetensors", "faiss.index")  # their sha256 is in the manifest


def _count(value: Any, least: int = 0) -> bool:
    """An integer (not a bool: JSON's true passed as 1) of at least ``least``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def read_manifest(path: Path) -> dict[str, Any]:
    f = path / "manifest.json"
    if not f.is_file():
        raise ValueError(f"{path}: not a picoalign gallery index (no manifest.json)")
    try:
        man = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{f}: corrupt manifest ({e})") from e
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise ValueError(f"{f}: not a picoalign gallery manifest")
    version = man.get("format_version")
    if not _count(version, 1) or version > FORMAT_VERSION:
        raise ValueError(
            f"{f}: format version {version!r} is not supported (this picoalign reads "
            f"<= {FORMAT_VERSION}; upgrade picoalign or rebuild the index)"
        )
    missing = [k for k in REQUIRED if k not in man]
    if missing:
        raise ValueError(f"{f}: corrupt manifest (missing {', '.join(missing)})")
    wrong = _wrong_field(man)
    if wrong:  # a hand edit or a damaged disk: one line, not a KeyError from deep in search
        raise ValueError(f"{f}: corrupt manifest ({wrong})")
    return man


# what an index records of its model (picoalign.retrieval.store.checkpoint_identity)
MODEL_HASHES = ("weights_sha256", "heads_sha256", "p_sha256")
# the first-stage settings each kind of first stage is searched with
STAGE_SETTINGS = {name: stage.fields for name, stage in STAGES.items()}


def _wrong_field(man: dict[str, Any]) -> str | None:
    """What is malformed in a manifest that has every required field, or None."""
    dims = man["dims"]
    if not isinstance(dims, dict) or not all(
        _count(dims.get(k)) for k in ("n", "tokens", "embed_dim")
    ):
        return "dims must hold the integers n, tokens and embed_dim"
    if man["kind"] not in KINDS or man["dtype"] not in DTYPES:
        return f"kind {man['kind']!r} or dtype {man['dtype']!r} is not one picoalign writes"
    stage = man["first_stage"]
    kind = stage.get("type") if isinstance(stage, dict) else None
    if kind not in STAGE_SETTINGS or not all(_count(stage.get(k), 1) for k in STAGE_SETTINGS[kind]):
        return f"first_stage {stage!r} is not one picoalign writes"
    if kind == "ivf" and stage["nprobe"] > stage["nlist"]:
        return f"first_stage nprobe {stage['nprobe']} is more than its nlist {stage['nlist']}"
    lists = ("keys", "sources", *(("captions",) if man["kind"] == "captions" else ()))
    for name in lists:
        value = man.get(name)
        if not isinstance(value, list) or len(value) != dims["n"]:
            return f"{name} must be a list of {dims['n']} entries, one per item"
        if not all(isinstance(x, str) for x in value):
            return f"{name} must hold strings"
    stats = man.get("source_stats")
    if stats is not None and not (
        isinstance(stats, list)
        and len(stats) == dims["n"]
        and all(x is None or isinstance(x, str) for x in stats)
    ):
        return f"source_stats must be a list of {dims['n']} entries, one per item"
    model, checkpoint = man.get("model"), man.get("checkpoint")
    if model is not None and not (
        isinstance(model, dict) and all(isinstance(model.get(k), str) for k in MODEL_HASHES)
    ):
        return f"model must record the {', '.join(MODEL_HASHES)} of the model that built it"
    if checkpoint is not None and not isinstance(checkpoint, str):
        return "checkpoint must be the path of the model that built it"
    sums = man.get("files_sha256")
    if sums is not None and not (
        isinstance(sums, dict) and all(isinstance(sums.get(n), str) for n in DATA_FILES)
    ):
        return f"files_sha256 must give the sha256 of {' and '.join(DATA_FILES)}"
    return None
