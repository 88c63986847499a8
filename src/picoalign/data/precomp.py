"""Precomputed image token features (SCAN / VSE++ / VSE∞ ``*_precomp`` folders).

Layout, in ``DIR`` or ``DIR/precomp``, per split prefix (``train``, ``dev`` → val,
``testall`` or else ``test`` → test):

* ``{split}_ims.npy``: float array ``N x T x C`` (e.g. 36 bottom-up regions x 2048), or
  ``N x C`` (read as ``T = 1``); memory-mapped, so a 20 GB file costs no RAM up front; or
* ``{split}_ims.safetensors`` with key ``images`` (``N x T x C``) and optionally ``mask``
  (``N x T``, non-zero = real token) for variable token counts;
* ``{split}_caps.txt``: one caption per line, ``len(caps) / N`` (5) consecutive captions per
  row, or one caption per row when the counts are equal.

Items have key ``"{split}:{row}"`` and ``source = "precomp:{split}:{row}"``. They have no image:
``dataset.load(item)`` raises DataError. Fetch features instead with::

    tokens, mask = dataset.image_features([it.key for it in batch])
    # tokens: float32 B x T x C; mask: bool B x T (rows padded to the longest T in the batch)

``dataset.features`` is the :class:`PrecompFeatures` object behind it (also has ``dim``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from picoalign.data._text import Problems, find_split_files, read_caption_file
from picoalign.data.base import DataError, ImageCaptionDataset, Item, items_fingerprint

FEATURE_SUFFIXES = ("_ims.npy", "_ims.safetensors")
FP16_MAX = 65504.0  # the largest float16: cached features are stored in float16
# how many leading rows are compared to recognise a file that repeats each image per caption
REPEAT_PROBE = 10


class PrecompFeatures:
    """Lazily opened per-split feature files, indexed by item key (``"split:row"``).

    File handles are dropped on pickling and reopened on first use, so the object can be
    sent to DataLoader worker processes.
    """

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = dict(files)
        self._open: dict[str, tuple[Any, Any]] = {}  # split -> (tokens, mask or None)

    def __getstate__(self) -> dict[str, Any]:
        return {"files": self.files, "_open": {}}

    def _arrays(self, split: str) -> tuple[Any, Any]:
        if split not in self._open:
            self._open[split] = _open_features(self.files[split])
        return self._open[split]

    def shape(self, split: str) -> tuple[int, int, int]:
        """(rows, tokens, channels) of one split's file."""
        tokens, _ = self._arrays(split)
        return tuple(tokens.shape)  # type: ignore[return-value]

    @property
    def dim(self) -> int:
        return self.shape(next(iter(self.files)))[2]

    def _row(self, split: str, row: int) -> tuple[np.ndarray, np.ndarray]:
        tokens, mask = self._arrays(split)
        t = np.asarray(tokens[row : row + 1], dtype=np.float32)[0]
        m = np.ones(t.shape[0], bool) if mask is None else np.asarray(mask[row : row + 1])[0] != 0
        peak = np.abs(t).max(initial=0.0)  # one pass: NaN and Inf carry through the max
        if not np.isfinite(peak):
            raise DataError(
                f"{self.files[split]}: row {row} holds NaN or Inf values: a model cannot be "
                "trained or scored on them; recompute or remove that row"
            )
        if peak > FP16_MAX:  # the feature cache stores float16
            raise DataError(
                f"{self.files[split]}: row {row} holds values up to {peak:.4g}, "
                f"beyond float16's {FP16_MAX:g} (the feature cache stores float16): scale "
                "the features down (e.g. divide by their largest magnitude) and save them again"
            )
        return t, m

    def __call__(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        rows = []
        for key in keys:
            split, _, row = key.rpartition(":")
            if split not in self.files or not row.isdigit():
                raise DataError(f"not a precomputed-feature key: {key!r} (want 'split:row')")
            n = self.shape(split)[0]
            if int(row) >= n:
                raise DataError(f"{self.files[split]}: row {row} out of range ({n} rows)")
            rows.append(self._row(split, int(row)))
        if not rows:
            return np.zeros((0, 0, self.dim), np.float32), np.zeros((0, 0), bool)
        t_max = max(t.shape[0] for t, _ in rows)
        dims = {t.shape[1] for t, _ in rows}
        if len(dims) > 1:
            raise DataError(f"feature files disagree on the channel count: {sorted(dims)}")
        out = np.zeros((len(rows), t_max, dims.pop()), np.float32)
        mask = np.zeros((len(rows), t_max), bool)
        for i, (t, m) in enumerate(rows):
            out[i, : t.shape[0]] = t
            mask[i, : t.shape[0]] = m
        return out, mask


def _open_features(path: Path) -> tuple[Any, Any]:
    """(tokens, mask) array-likes supporting ``[a:b]`` slicing, shape-checked."""
    try:
        if path.suffix == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            mask = None
        else:
            from safetensors import safe_open

            handle = safe_open(str(path), framework="numpy")
            names = set(handle.keys())
            if "images" not in names:
                raise DataError(f"{path}: no 'images' tensor (has: {sorted(names)})")
            arr = _Sliced(handle, "images")
            mask = _Sliced(handle, "mask") if "mask" in names else None
    except DataError:
        raise
    except Exception as e:  # numpy/safetensors raise ValueError, OSError, SafetensorError...
        raise DataError(f"{path}: cannot read features ({type(e).__name__}: {e})") from None
    if len(arr.shape) == 2:
        arr = _AddTokenAxis(arr)
    if len(arr.shape) != 3 or 0 in arr.shape:
        raise DataError(f"{path}: features must be N x T x C (or N x C), got {tuple(arr.shape)}")
    if mask is not None and tuple(mask.shape) != tuple(arr.shape[:2]):
        raise DataError(f"{path}: mask shape {tuple(mask.shape)} != N x T {arr.shape[:2]}")
    return arr, mask


class _Sliced:
    """A safetensors tensor that reads only the rows asked for."""

    def __init__(self, handle: Any, key: str) -> None:
        self._slice = handle.get_slice(key)
        self.shape = tuple(self._slice.get_shape())

    def __getitem__(self, rows: slice) -> np.ndarray:
        return self._slice[rows]


class _AddTokenAxis:
    """View an ``N x C`` array (one global vector per image) as ``N x 1 x C``."""

    def __init__(self, arr: Any) -> None:
        self._arr = arr
        self.shape = (arr.shape[0], 1, arr.shape[1])

    def __getitem__(self, rows: slice) -> np.ndarray:
        return np.asarray(self._arr[rows])[:, None, :]


def _no_image(item: Item) -> Image.Image:
    raise DataError(
        f"{item.source}: precomputed features have no image; use dataset.image_features(keys)"
    )


def precomp(data_dir: Path | str, *, skip_bad: bool = False) -> ImageCaptionDataset:
    """Captions + precomputed image features (layout in the module docstring)."""
    data_dir = Path(data_dir)
    folder, found = find_split_files(data_dir, FEATURE_SUFFIXES)
    files = {}
    for split, prefix in found.items():
        npy = folder / f"{prefix}_ims.npy"
        files[split] = npy if npy.is_file() else folder / f"{prefix}_ims.safetensors"
    features = PrecompFeatures(files)
    _check_widths(features)
    problems = Problems(skip_bad)
    items: list[Item] = []
    stats: list[str] = []
    per_row: dict[str, int] = {}
    for split, prefix in found.items():
        n_rows = features.shape(split)[0]
        caps_path = folder / f"{prefix}_caps.txt"
        caps = read_caption_file(caps_path, problems)
        if not caps or len(caps) % n_rows:
            raise DataError(
                f"{caps_path}: {len(caps)} captions do not fit {n_rows} feature rows "
                f"in {files[split]} (need equal counts or a multiple, e.g. 5)"
            )
        per = per_row[split] = len(caps) // n_rows
        if per == 1:
            _refuse_repeated_rows(features, split, caps_path)
        empty = _rows_without_tokens(features, split)
        st = files[split].stat()
        stats.append(f"{files[split].name}:{st.st_size}:{st.st_mtime_ns}")
        for row in range(n_rows):
            chunk = caps[row * per : (row + 1) * per]
            captions = tuple(c for _, _, c in chunk if c is not None)
            if row in empty:
                problems.add(f"{files[split]}: row {row}", "its mask marks no real token")
                continue
            if not captions:
                problems.add(chunk[0][1], f"feature row {row} has no usable caption")
                continue
            key = f"{split}:{row}"
            items.append(Item(key, captions, split, key, f"precomp:{key}"))
    _check_captions_per_row(per_row, files, folder, found)
    if not items:
        problems.empty(str(data_dir))
    fp = items_fingerprint("precomp", str(data_dir.resolve()), *stats, items=items)
    return problems.finish(
        ImageCaptionDataset(data_dir.name, items, _no_image, fp, root=data_dir, features=features)
    )


def _check_widths(features: PrecompFeatures) -> None:
    """Every split's features must have one channel count: a model has one head width. Said
    up front, naming each file and its shape (a file saved transposed, N x C x T, shows)."""
    shapes = {split: features.shape(split) for split in features.files}
    if len({shape[2] for shape in shapes.values()}) > 1:
        listing = "; ".join(
            f"{features.files[s].name} is {' x '.join(map(str, shape))}"
            for s, shape in shapes.items()
        )
        raise DataError(
            f"{features.files[next(iter(shapes))].parent}: the splits' features differ in "
            f"channel count (the last axis of N x T x C): {listing}"
        )


def _refuse_repeated_rows(features: PrecompFeatures, split: str, caps_path: Path) -> None:
    """One caption per row, and the rows come in runs of identical copies: each image saved
    once per caption (a layout some VSE++ releases use). Read as it is, every copy would be
    an image of its own and its copies its negatives (text-to-image R@1 falls to 0)."""
    tokens, _ = features._arrays(split)
    n = tokens.shape[0]
    head = np.asarray(tokens[: min(n, 2 * REPEAT_PROBE)])
    run = 1
    while run < min(len(head), REPEAT_PROBE) and np.array_equal(head[run], head[0]):
        run += 1
    if run < 2 or n % run or len(head) < 2 * run:
        return
    second = head[run : 2 * run]
    if not (
        all(np.array_equal(r, second[0]) for r in second) and not np.array_equal(second[0], head[0])
    ):
        return
    path = features.files[split]
    if path.suffix == ".npy":
        fix = (
            f"python -c \"import numpy as np; a = np.load('{path.name}', mmap_mode='r'); "
            f"np.save('{path.stem}_dedup.npy', a[::{run}])\""
        )
    else:
        fix = (
            'python -c "from safetensors.numpy import load_file, save_file; '
            f"t = load_file('{path.name}'); "
            f"save_file({{k: v[::{run}].copy() for k, v in t.items()}}, "
            f"'{path.stem}_dedup.safetensors')\""
        )
    raise DataError(
        f"{path}: rows 0-{run - 1} are identical, and so are rows {run}-{2 * run - 1}: each "
        f"image looks saved once per caption of {caps_path.name} ({n} rows, {n} captions). "
        f"picoalign wants one row per image, its {run} captions on consecutive lines; keep the "
        f"first row of each {run}: {fix}, then put the new file in its place"
    )


def _rows_without_tokens(features: PrecompFeatures, split: str) -> set[int]:
    """Rows whose mask (safetensors ``mask``) marks no real token: the scorers need one."""
    _, mask = features._arrays(split)
    if mask is None:
        return set()
    m = np.asarray(mask[0 : mask.shape[0]])
    return set(np.flatnonzero(~(m != 0).any(axis=1)).tolist())


def _check_captions_per_row(
    per_row: dict[str, int], files: dict[str, Path], folder: Path, found: dict[str, str]
) -> None:
    """Warn when the splits have different numbers of captions per row. Captions are paired
    with rows by position, so a captions file short by whole rows (40 lines for 10 rows that
    have 5 each) is read as 4 per row and pairs every image but the first with the wrong
    captions; a warning, not an error, as a split may really have fewer."""
    if len(set(per_row.values())) <= 1:
        return
    listing = ", ".join(
        f"{found[s]}_caps.txt has {k} per row of {files[s].name}" for s, k in per_row.items()
    )
    warnings.warn(
        f"{folder}: the splits have different numbers of captions per feature row ({listing}); "
        "captions are paired with rows by position, so a file short or long by whole rows "
        "pairs them with the wrong images: check the files if that is not what they hold",
        stacklevel=3,
    )
