"""Raw-image batches for image-backbone fine-tuning, decoded ahead in worker threads."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from picoalign.features import FeatureSet, SourceImages

if TYPE_CHECKING:  # for the annotations only: the model layer sits above this one
    from picoalign.model import PicoAligner


class PixelBatches:
    """Backbone input for batches of captions' images, decoded ahead in worker threads.

    ``prefetch(idx)`` starts decoding and preprocessing the images of captions ``idx`` (each
    distinct image once) while the current step computes (Pillow releases the GIL);
    ``get(idx)`` returns ``(B, 3, H, W)`` rows in caption order.
    """

    def __init__(self, model: PicoAligner, fs: FeatureSet, workers: int = 4) -> None:
        SourceImages(fs)  # fails early, with the dataset's name, where there are no files
        self.model, self.fs = model, fs
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="picoalign-img")
        self.pending: dict[tuple[int, ...], tuple[list[int], list[int], list[Future]]] = {}

    def _submit(self, idx: Tensor) -> tuple[list[int], list[int], list[Future]]:
        rows = self.fs.caption_image[idx].tolist()
        unique = sorted(set(rows))
        enc = self.model.backbone("image")
        load = self.fs.image_source
        futures = [
            self.pool.submit(lambda k: enc.preprocess([load(k)]), self.fs.image_keys[r])
            for r in unique
        ]
        return rows, unique, futures

    def prefetch(self, idx: Tensor) -> None:
        key = tuple(idx.tolist())
        if key not in self.pending:
            self.pending[key] = self._submit(idx)

    def get(self, idx: Tensor, device: torch.device) -> Tensor:
        key = tuple(idx.tolist())
        rows, unique, futures = self.pending.pop(key, None) or self._submit(idx)
        pixels = torch.cat([f.result() for f in futures])
        where = {r: i for i, r in enumerate(unique)}
        return pixels[[where[r] for r in rows]].to(device)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
