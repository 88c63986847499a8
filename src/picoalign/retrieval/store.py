"""Storage layer of gallery indexes (:mod:`picoalign.retrieval.index`): the FAISS first stage, model
identity hashes, and the index folder — written into a temp folder and renamed into place (each
file temp + rename as well), so an interrupted build leaves nothing half-written.

Folder layout: ``tokens.safetensors`` (``tokens`` (N, T, D) float16/bfloat16, ``mask`` (N, T),
``pooled`` (N, D) float32), ``faiss.index``, ``manifest.json`` (written last).
"""

from __future__ import annotations

import hashlib
import shutil
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from picoalign import fileio
from picoalign.checkpoint import model_folder
from picoalign.core.similarity import pool_tokens
from picoalign.fileio import atomic_write_json, atomic_write_safetensors
from picoalign.marks import holds_index
from picoalign.retrieval.first_stage import STAGES, faiss_module
from picoalign.retrieval.manifest import (
    DATA_FILES,
    DTYPES,
    FORMAT,
    FORMAT_VERSION,
    KINDS,
    read_manifest,
)

if TYPE_CHECKING:  # for the annotations only: the model layer sits above this one
    from picoalign.model import PicoAligner


FIRST_STAGES = tuple(STAGES)  # flat, ivf, hnsw


def check_options(kind: str, dtype: str, first_stage: str) -> None:
    for name, value, allowed in (
        ("kind", kind, KINDS),
        ("dtype", dtype, tuple(DTYPES)),
        ("first stage", first_stage, FIRST_STAGES),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


# ---------------------------------------------------------------------------- identity
def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensors_sha256(tensors: dict[str, Tensor]) -> str:
    """Content hash of named tensors (names, dtypes, shapes, bytes): file-format independent."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _fp32(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Floating tensors as fp32: a model's identity does not depend on the dtype it is held
    in. A bf16 model saved and loaded back (``PicoAligner.load`` gives fp32) is the same
    model; hashing raw bytes refused every index of a model trained or saved in bf16."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def model_identity(model: PicoAligner) -> dict[str, Any]:
    """Hashes of a model's tensors (all; heads only) and of PICO's p, for the manifest and
    the refusal check (which names what differs)."""
    state = _fp32(model.state_dict())
    return {
        "weights_sha256": tensors_sha256(state),
        "heads_sha256": tensors_sha256({k: v for k, v in state.items() if "head" in k}),
        "p_sha256": tensors_sha256({"p": model.pico.p.float()}),
        "method": model.config.method,
        "weighted_first_stage": model.eval_weights is not None,
    }


def check_embeddings(tokens: Any, mask: Any) -> None:
    """ValueError naming what is wrong with an index's embeddings: not (N, T, D) floats with
    a (N, T) bool mask, no rows, a row with no real token, or a NaN/Inf value."""
    if not isinstance(tokens, Tensor) or tokens.dim() != 3 or not tokens.is_floating_point():
        got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be a 3-D float tensor (N, tokens, D), got {got}")
    if not isinstance(mask, Tensor) or mask.shape != tokens.shape[:2] or mask.dtype != torch.bool:
        got = f"{tuple(mask.shape)} {mask.dtype}" if isinstance(mask, Tensor) else type(mask)
        raise ValueError(
            f"mask must be a bool tensor of shape {tuple(tokens.shape[:2])}, got {got}"
        )
    if tokens.shape[0] == 0:
        raise ValueError("nothing to index: the embeddings have no rows")
    empty = (~mask.any(dim=1)).nonzero()
    if len(empty):
        raise ValueError(f"row {int(empty[0])} has no real token (its mask is all False)")
    bad = (~torch.isfinite(tokens)).flatten(1).any(dim=1).nonzero()  # padding too: it is pooled
    if len(bad):
        raise ValueError(f"row {int(bad[0])} holds NaN or Inf values")


def low_precision(model: PicoAligner) -> torch.dtype | None:
    """The dtype of a model cast below float32 (``.to(torch.bfloat16)``, ``.half()``), else
    None: why its weights no longer hash as the float32 checkpoint an index was built from."""
    low = [p.dtype for p in model.parameters() if p.is_floating_point() and p.dtype.itemsize < 4]
    return low[0] if low else None


def is_cast_checkpoint(
    model: PicoAligner, manifest: dict[str, Any], checkpoint: str | Path
) -> bool:
    """Whether ``model`` is the index's own checkpoint cast down to its dtype (what the
    README's ``model.to(torch.bfloat16)`` gives): the same model, in rounded weights. Only
    the checkpoint file recorded by its sha256 counts."""
    dtype = low_precision(model)
    expect = (manifest.get("model") or {}).get("model_sha256")
    if dtype is None or not expect:
        return False
    try:
        path = model_folder(checkpoint) / "model.safetensors"
    except FileNotFoundError:
        return False
    if file_sha256(path) != expect:
        return False
    cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(path).items()}
    return tensors_sha256(_fp32(cast)) == model_identity(model)["weights_sha256"]


def identity_difference(got: dict[str, Any], expect: dict[str, Any]) -> str:
    if got["heads_sha256"] != expect.get("heads_sha256"):
        return "weights differ"
    return "PICO's p differs" if got["p_sha256"] != expect["p_sha256"] else "PICO state differs"


def checkpoint_identity(model: PicoAligner, checkpoint: str | Path) -> dict[str, Any]:
    """``model_identity`` plus the checkpoint file's sha256; ValueError if they disagree."""
    mdir = model_folder(checkpoint)
    ident = model_identity(model)
    if tensors_sha256(_fp32(load_file(str(mdir / "model.safetensors")))) != ident["weights_sha256"]:
        raise ValueError(f"the model differs from checkpoint {mdir}: save it before indexing")
    return {**ident, "model_sha256": file_sha256(mdir / "model.safetensors")}


def check_checkpoint(manifest: dict[str, Any], path: Any, checkpoint: str | Path) -> None:
    """ValueError unless ``checkpoint``'s model file is the one the index was built with."""
    expect = (manifest.get("model") or {}).get("model_sha256")
    got = file_sha256(model_folder(checkpoint) / "model.safetensors")
    if expect and got != expect:
        raise ValueError(
            f"index {path} was built with another model (checkpoint "
            f"{manifest.get('checkpoint')}, sha256 {expect[:12]}…); {checkpoint} has sha256 "
            f"{got[:12]}…: rebuild the index with `picoalign index`"
        )


# ---------------------------------------------------------------------------- first stage
def first_stage_settings(
    kind: str, n: int, nlist: int | None = None, nprobe: int | None = None
) -> dict[str, Any]:
    """Manifest entry of a first stage for a gallery of ``n`` items (:mod:`first_stage`)."""
    if kind not in STAGES:
        raise ValueError(f"first stage must be one of {FIRST_STAGES}, got {kind!r}")
    return {"type": kind, **STAGES[kind].settings(n, nlist, nprobe)}


def build_first_stage(pooled: np.ndarray, settings: dict[str, Any]) -> Any:
    """A FAISS inner-product index over ``pooled`` (N, D) float32."""
    x = np.ascontiguousarray(pooled, dtype=np.float32)
    index = STAGES[settings["type"]].build(x, settings)
    index.add(x)
    return index


def set_search_params(index: Any, settings: dict[str, Any], c: int, nprobe: int | None) -> None:
    STAGES[settings["type"]].tune(index, settings, c, nprobe)


# ---------------------------------------------------------------------------- the folder
def pooled_embeddings(tokens: Tensor, mask: Tensor, chunk: int = 4096) -> Tensor:
    """Masked mean of each row's tokens, L2-normalised, float32 (N, D); chunked for memory."""
    parts = [
        pool_tokens(tokens[i : i + chunk].float(), mask[i : i + chunk])
        for i in range(0, len(tokens), chunk)
    ]
    return torch.cat(parts) if parts else torch.empty(0, tokens.shape[-1])


def new_manifest(
    kind: str,
    dims: dict[str, int],
    dtype: str,
    first_stage: dict[str, Any],
    keys: list[str],
    sources: list[str],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The manifest of a new index; ``extra`` (model, dataset, encoders, ...) goes in as is."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": None,
        **extra,
        "dims": dims,
        "dtype": dtype,
        "first_stage": first_stage,
        "keys": keys,
        "sources": sources,
    }


INDEX_FILES = (*DATA_FILES, "manifest.json")


def check_index_folder(out: Path, *, overwrite: bool) -> None:
    """Refuse ``out`` unless it is new, empty, or (with ``overwrite``) an index: replacing
    an index swaps the whole folder, so a folder holding anything else is never taken."""
    fileio.check_out_folder(
        out, INDEX_FILES, "a gallery index does not", "write the index to a new or empty folder"
    )
    index = holds_index(out)  # reads the manifest (megabytes for a large gallery): once
    lookalike = [] if index else [n for n in INDEX_FILES if (out / n).exists()]
    if lookalike:
        raise ValueError(
            f"--out {out}: holds files a gallery index does not write "
            f"({fileio.name_list(lookalike)}; their names are an index's, but it holds no "
            "picoalign index: a damaged one is removed by hand); write the index to a new or "
            "empty folder"
        )
    if index and not overwrite:
        raise ValueError(
            f"--out {out}: holds a gallery index; pass --overwrite to replace it "
            "(in Python: overwrite=True)"
        )


def write_folder(
    tensors: dict[str, Tensor],
    faiss_index: Any,
    manifest: dict[str, Any],
    out: Path,
    *,
    overwrite: bool = False,
) -> None:
    """Write an index folder at ``out``, new or empty, or over an index with ``overwrite``;
    anything else is refused (:func:`check_index_folder`). Interrupted writes leave neither
    a folder at ``out`` nor temp files."""
    check_index_folder(out, overwrite=overwrite)
    tmp = fileio.make_temp_dir(out)
    try:
        atomic_write_safetensors(tensors, tmp / "tokens.safetensors")
        _write_faiss(faiss_index, tmp / "faiss.index")
        manifest["files_sha256"] = {n: file_sha256(tmp / n) for n in DATA_FILES}
        atomic_write_json(manifest, tmp / "manifest.json")  # last: marks a complete index
        fileio.swap_in_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_folder(
    path: Path, *, verify: bool = True
) -> tuple[dict[str, Tensor], Any, dict[str, Any]]:
    """(tensors, faiss index, manifest) of an index folder; ValueError if missing/corrupt.

    ``verify``: the data files must have the sha256 the manifest recorded when they were
    written. Why: a damaged or swapped file of the right shape (rows zeroed by a bad disk,
    another model's tokens copied in) searched without a word, with other scores, and a
    flipped byte surfaced as "img contains NaN". About a second per 1.5 GB; an index from
    before the checksums were recorded is checked for non-finite values instead."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: gallery index not found")
    man = read_manifest(path)
    for name in DATA_FILES:
        if not (path / name).is_file():
            raise ValueError(f"{path / name}: missing (incomplete index; rebuild it)")
    recorded = man.get("files_sha256") or {}
    for name in DATA_FILES if verify and recorded else ():
        if file_sha256(path / name) != recorded.get(name):
            raise ValueError(
                f"{path / name}: not the file this index wrote (its checksum differs: damaged "
                "or replaced since); rebuild the index with picoalign index --overwrite"
            )
    try:
        arrays = load_file(str(path / "tokens.safetensors"))
        index = faiss_module().read_index(str(path / "faiss.index"))
        tokens = arrays["tokens"]
        _ = arrays["mask"], arrays["pooled"]
    except Exception as e:
        raise ValueError(f"{path}: corrupt index files ({type(e).__name__}: {e})") from e
    dims = man["dims"]
    shape = (dims["n"], dims["tokens"], dims["embed_dim"])
    if (
        tuple(tokens.shape) != shape
        or tokens.dtype != DTYPES.get(man["dtype"])
        or index.ntotal != dims["n"]
        or not _stage_is(index, man["first_stage"])
    ):
        raise ValueError(f"{path}: index files disagree with manifest.json (corrupt index)")
    if verify and not recorded:  # an older index: at least no NaN reaches the scores
        for name in ("tokens", "pooled"):
            if not torch.isfinite(arrays[name]).all():
                raise ValueError(
                    f"{path / 'tokens.safetensors'}: holds NaN or Inf values (damaged); "
                    "rebuild the index with picoalign index --overwrite"
                )
        warnings.warn(
            f"index {path} records no checksums of its files (built by an older picoalign): "
            "a damaged faiss.index or tokens file cannot be told from a good one; rebuild it "
            "(picoalign index --overwrite) to have them checked",
            stacklevel=3,
        )
    return arrays, index, man


def _stage_is(index: Any, stage: dict[str, Any]) -> bool:
    """Whether a FAISS index is the manifest's first stage (searched with its settings: an
    IVF's nprobe among its nlist lists, an HNSW's efSearch)."""
    return STAGES[stage["type"]].matches(index, stage)


def _write_faiss(index: Any, path: Path) -> None:
    fileio.atomic_write(path, lambda tmp: faiss_module().write_index(index, tmp))
