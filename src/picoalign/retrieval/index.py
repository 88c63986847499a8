"""Gallery retrieval: embed a gallery once, search it in two stages.

An index (a folder written atomically by :mod:`picoalign.retrieval.store`) holds the gallery's
embedded D-dim tokens (float16/bfloat16), masks, pooled embeddings (masked mean, L2-normalised),
a FAISS inner-product index over them — ``flat`` (exact), ``ivf`` (nlist ≈ √N, ``nprobe``) or
``hnsw`` (M = 32) — and a manifest: model hashes (checkpoint file, tensors, PICO's p), dataset
spec and fingerprint, keys, sources, encoders, dims, dtype. It refuses any other model.

Stage 1 asks FAISS for ``candidates`` rows by pooled inner product (the pooled query times the
model's ``eval_weights`` when PICO scores weighted); stage 2 re-ranks them with the model's own
evaluation rule, ``model.scores``. ``rerank=False`` returns stage 1; ``exhaustive=True`` applies
the rule to the whole gallery in memory-bounded chunks. An index holds one ``kind``: ``images``
(searched by text, :meth:`GalleryIndex.search_text`) or ``captions`` (searched by image,
:meth:`GalleryIndex.search_image`; ``build_index(..., kind="captions")``).
"""

from __future__ import annotations

import contextlib
import math
import operator
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from picoalign.core.similarity import DEFAULT_BUDGET_MB, pool_tokens
from picoalign.retrieval import store
from picoalign.retrieval.queries import image_queries, text_queries, warn_if_cut
from picoalign.retrieval.sheet import contact_sheet, dataset_image_loader
from picoalign.retrieval.store import DTYPES, FIRST_STAGES, KINDS

if TYPE_CHECKING:  # for the annotations only: the model layer sits above this one
    from picoalign.model import PicoAligner


__all__ = ["DTYPES", "FIRST_STAGES", "KINDS", "GalleryIndex", "Hit", "contact_sheet"]

# (img, img_mask, txt, txt_mask, *, memory_budget_mb) -> (N_img, N_txt), e.g. model.scores
ScoreFn = Callable[..., Tensor]


@dataclass(frozen=True)
class Hit:
    """One result: gallery ``row``, item ``key`` and ``source``, ``score`` (stage-2 score, or
    the pooled inner product with ``rerank=False``); ``caption`` for caption indexes."""

    row: int
    key: str
    source: str
    score: float
    caption: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def file_stat(path: str) -> str | None:
    """``SIZE:MTIME_NS`` of an image file, None when there is none (or no path)."""
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}" if st is not None else None


class GalleryIndex:
    """Embedded gallery tokens + FAISS first stage + manifest. Build with :func:`build_index`
    (or :meth:`from_embeddings` for tokens you embedded yourself); open with :meth:`load`."""

    def __init__(
        self,
        tokens: Tensor,
        mask: Tensor,
        pooled: Tensor,
        faiss_index: Any,
        manifest: dict[str, Any],
        path: Path | None = None,
    ) -> None:
        self.tokens, self.mask, self.pooled = tokens, mask.bool(), pooled.float()
        self.faiss_index, self.manifest, self.path = faiss_index, manifest, path
        self.checkpoint: str | None = manifest.get("checkpoint")
        self._verified: weakref.WeakSet = weakref.WeakSet()

    def stale_sources(self, rows: Sequence[int]) -> tuple[list[str], list[str]]:
        """The image files of ``rows`` that are gone, and those whose size or modification
        time is not what it was when indexed (edited or replaced: the index holds the old
        picture's features, while a contact sheet would draw the new one). Size and time,
        not the inode, so a gallery copied to another disk and relocated is not "changed".
        Indexes from before the sizes were recorded report no changes."""
        stats = self.manifest.get("source_stats") or [None] * self.n
        gone, changed = set(), set()
        for row in rows:
            path = self.sources[row]
            if not (path and os.path.isabs(path)):
                continue
            now = file_stat(path)
            if now is None:
                gone.add(path)
            elif stats[row] is not None and now != stats[row]:
                changed.add(path)
        return sorted(gone), sorted(changed)

    n = property(lambda self: int(self.tokens.shape[0]))
    kind = property(lambda self: self.manifest["kind"])
    keys = property(lambda self: self.manifest["keys"])
    sources = property(lambda self: self.manifest["sources"])

    @classmethod
    def from_embeddings(
        cls,
        tokens: Tensor,
        mask: Tensor,
        *,
        keys: Sequence[str] | None = None,
        sources: Sequence[str] | None = None,
        pooled: Tensor | None = None,
        kind: str = "images",
        dtype: str = "float16",
        first_stage: str = "flat",
        nlist: int | None = None,
        nprobe: int | None = None,
        **manifest: Any,
    ) -> GalleryIndex:
        """An in-memory index of embedded tokens (N, T, D) and their mask (N, T), as
        ``encode_*`` give them; ``manifest`` extras are stored. Malformed embeddings are
        refused by name (a NaN row was indexed and then matched nothing, silently)."""
        store.check_options(kind, dtype, first_stage)
        store.check_embeddings(tokens, mask)
        n, t, d = tokens.shape
        if pooled is None:
            pooled = store.pooled_embeddings(tokens, mask)
        elif not (
            isinstance(pooled, Tensor)
            and pooled.shape == (n, d)
            and bool(torch.isfinite(pooled).all())
        ):
            got = tuple(pooled.shape) if isinstance(pooled, Tensor) else type(pooled).__name__
            raise ValueError(
                f"pooled must be a finite ({n}, {d}) tensor, one row per item; got {got}"
            )
        keys = list(keys) if keys is not None else [str(i) for i in range(n)]
        sources = list(sources) if sources is not None else [""] * n
        if not len(keys) == len(sources) == n:
            raise ValueError(f"{n} rows but {len(keys)} keys and {len(sources)} sources")
        settings = store.first_stage_settings(first_stage, n, nlist, nprobe)
        dims = {"n": n, "tokens": t, "embed_dim": d}
        man = store.new_manifest(kind, dims, dtype, settings, keys, sources, manifest)
        pooled = pooled.detach().cpu()  # an index lives in host memory, whatever embedded it
        index = store.build_first_stage(pooled.numpy(), settings)
        return cls(tokens.detach().to("cpu", DTYPES[dtype]), mask.cpu(), pooled, index, man)

    def save(self, out: str | Path, *, overwrite: bool = False) -> Path:
        """Write the index folder (as one folder swap) into a new or empty folder, or over an
        index with ``overwrite=True``; a folder holding anything else is refused."""
        out = Path(out).expanduser()
        tensors = {"tokens": self.tokens, "mask": self.mask, "pooled": self.pooled}
        store.write_folder(tensors, self.faiss_index, self.manifest, out, overwrite=overwrite)
        self.path = out
        return self.path

    @classmethod
    def load(
        cls,
        path: str | Path,
        model: PicoAligner | None = None,
        checkpoint: str | Path | None = None,
        *,
        verify: bool = True,
    ) -> GalleryIndex:
        """Open an index. Given ``checkpoint`` (its ``model.safetensors`` hash, and it replaces
        the recorded checkpoint) or ``model`` (its tensors' hash), refuse any model other than
        the one that built it. ValueError for a missing or corrupt manifest or files; with
        ``verify`` (the default) also for data files whose checksum is not the recorded one
        (:func:`picoalign.retrieval.store.read_folder`: a second per 1.5 GB of index)."""
        path = Path(path).expanduser()
        arrays, index, man = store.read_folder(path, verify=verify)
        if checkpoint is not None:
            store.check_checkpoint(man, path, checkpoint)
        out = cls(arrays["tokens"], arrays["mask"], arrays["pooled"], index, man, path)
        if checkpoint is not None:
            out.checkpoint = str(checkpoint)
        if model is not None:
            out.verify_model(model)
        return out

    def verify_model(self, model: PicoAligner) -> None:
        """ValueError unless ``model`` has exactly the weights (and p) the index was built with."""
        expect = self.manifest.get("model")
        if expect is None or model in self._verified:
            return
        got = store.model_identity(model)
        if got["weights_sha256"] != expect["weights_sha256"] and not (
            self.checkpoint and store.is_cast_checkpoint(model, self.manifest, self.checkpoint)
        ):
            what = store.identity_difference(got, expect)
            low = store.low_precision(model)
            fix = (
                f"a model in {str(low).removeprefix('torch.')} is searched only as its "
                "checkpoint cast down (the one this index recorded), else rebuild the index"
                if low
                else "rebuild it with `picoalign index`"
            )
            raise ValueError(
                f"index {self.path or '(in memory)'} was built with another model ({what}; "
                f"built from {self.manifest.get('checkpoint')}): {fix}"
            )
        self._verified.add(model)

    def load_model(self) -> Any:
        """The model of :attr:`checkpoint` (the manifest's, or the override given to ``load``)."""
        from picoalign.model import PicoAligner

        if not self.checkpoint:
            raise ValueError("this index records no checkpoint: pass one (--checkpoint)")
        ckpt = Path(self.checkpoint)
        if not ckpt.exists():
            raise FileNotFoundError(
                f"{ckpt}: checkpoint of index {self.path} not found (moved? pass --checkpoint)"
            )
        store.check_checkpoint(self.manifest, self.path, ckpt)
        model = PicoAligner.load(ckpt).eval()
        self.verify_model(model)
        return model

    def image_loader(self) -> Callable[[Hit], Any]:
        """``hit -> PIL image`` through the manifest's dataset spec (works for rendered data)."""
        return dataset_image_loader(self.manifest.get("dataset") or {})

    # -- search -----------------------------------------------------------------------
    def search_text(
        self, model: PicoAligner, queries: str | Iterable[str], k: int = 10, **kw: Any
    ) -> list[list[Hit]]:
        """Top-``k`` gallery images per text query (one string, or an iterable of them) of an
        image index; ``kw``: see
        :meth:`search_tokens` (candidates=100, rerank=True, exhaustive=False, nprobe)."""
        if self.kind != "images":
            raise ValueError(
                "this index holds captions: search it by image, or build an image "
                "index (picoalign index --kind images)"
            )
        queries = text_queries(queries)
        self.verify_model(model)
        warn_if_cut(model, queries)
        q, qm = model.encode_texts(queries)
        return self.search_tokens(q, qm, model.scores, weights=model.eval_weights, k=k, **kw)

    def search_image(
        self, model: PicoAligner, images: Any, k: int = 10, **kw: Any
    ) -> list[list[Hit]]:
        """Top-``k`` captions per query image of a caption index: a PIL image or a path, or
        an iterable of them."""
        if self.kind != "captions":
            raise ValueError(
                "this index holds images: search it by text, or build a caption "
                "index (picoalign index --kind captions)"
            )
        images = image_queries(images)
        self.verify_model(model)
        q, qm = model.encode_images(images)
        return self.search_tokens(q, qm, model.scores, weights=model.eval_weights, k=k, **kw)

    @torch.no_grad()
    def search_tokens(
        self,
        q: Tensor,
        q_mask: Tensor,
        score_fn: ScoreFn,
        *,
        weights: Tensor | None = None,
        k: int = 10,
        candidates: int = 100,
        rerank: bool = True,
        exhaustive: bool = False,
        nprobe: int | None = None,
        memory_budget_mb: float = DEFAULT_BUDGET_MB,
    ) -> list[list[Hit]]:
        """Search with embedded query tokens ``q`` (Q, T, D) and mask. ``score_fn`` is the
        stage-2 rule, called as (images, mask, captions, mask, memory_budget_mb=) ->
        (N_img, N_txt); ``weights`` (D,) weight the pooled query of stage 1.

        The queries may be on an accelerator (a model on CUDA embedded them): the gallery's
        candidates are moved to them for scoring, and only scores come back to the host."""
        k, candidates = _count(k, "k"), _count(candidates, "candidates")
        if q.dim() != 3 or q.shape[-1] != self.tokens.shape[-1]:
            raise ValueError(
                f"the queries are {tuple(q.shape)} (Q, tokens, D) but this index holds "
                f"D={self.tokens.shape[-1]}: embed them with the model that built it"
            )
        q, k = q.float(), min(k, self.n)
        if exhaustive:
            scores, rows = self._exhaustive(q, q_mask, score_fn, k, memory_budget_mb)
        else:
            pooled = pool_tokens(q, q_mask)
            if weights is not None:
                pooled = pooled * weights.to(pooled.device, torch.float32)
            c = min(self.n, max(candidates, k)) if rerank else k
            scores, rows = self.first_stage(pooled.cpu(), c, nprobe=nprobe)
            if rerank:
                scores, rows = self._rerank(q, q_mask, rows, score_fn, k, memory_budget_mb)
        return [
            [self._hit(int(r), float(s)) for s, r in zip(srow[:k], rrow[:k], strict=True) if r >= 0]
            for srow, rrow in zip(scores.tolist(), rows.tolist(), strict=True)
        ]

    def first_stage(
        self, pooled: Tensor, c: int, *, nprobe: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """FAISS top-``c`` (scores, rows) per pooled query; rows are -1 where fewer exist."""
        store.set_search_params(self.faiss_index, self.manifest["first_stage"], c, nprobe)
        s, r = self.faiss_index.search(np.ascontiguousarray(pooled.numpy(), np.float32), c)
        return torch.from_numpy(s), torch.from_numpy(r)

    def _score(
        self, rows: slice | Tensor, q: Tensor, qm: Tensor, fn: ScoreFn, budget: float
    ) -> Tensor:
        """Stage-2 scores (n_rows, Q) of gallery ``rows`` against the queries."""
        if isinstance(rows, slice):
            g, gm = self.tokens[rows], self.mask[rows]
        else:  # index_select copies whole rows; tokens[rows] went element by element on fp16
            g, gm = self.tokens.index_select(0, rows), self.mask.index_select(0, rows)
        g, gm = g.to(q.device, torch.float32), gm.to(q.device)
        if self.kind == "images":
            return fn(g, gm, q, qm, memory_budget_mb=budget).cpu()
        return fn(q, qm, g, gm, memory_budget_mb=budget).T.cpu()

    def _rerank(
        self, q: Tensor, qm: Tensor, cand: Tensor, fn: ScoreFn, k: int, budget: float
    ) -> tuple[Tensor, Tensor]:
        """Per query: its candidates (a few MB) scored on one thread. Small products gain
        nothing from intra-op threads and lose much to their barriers on a loaded machine."""
        out_s = torch.full((len(q), k), -math.inf)
        out_r = torch.full((len(q), k), -1, dtype=torch.long)
        with _torch_threads(1 if cand.shape[1] <= 2048 else torch.get_num_threads()):
            for i in range(len(q)):
                rows = np.sort(cand[i][cand[i] >= 0].numpy())  # row order: deterministic blocking
                s = self._score(torch.from_numpy(rows), q[i : i + 1], qm[i : i + 1], fn, budget)
                order = np.lexsort((rows, -s[:, 0].numpy()))[:k]  # score desc, then row
                out_s[i, : len(order)] = s[order, 0]
                out_r[i, : len(order)] = torch.from_numpy(rows[order])
        return out_s, out_r

    def _exhaustive(
        self, q: Tensor, qm: Tensor, fn: ScoreFn, k: int, budget: float
    ) -> tuple[Tensor, Tensor]:
        """The rule over the whole gallery, in chunks of ≈ 4 × budget MB of fp32 tokens."""
        _, t, d = self.tokens.shape
        chunk = max(1, int(4 * budget * 2**20 // (t * d * 4)))
        best_s, best_r = torch.empty(len(q), 0), torch.empty(len(q), 0, dtype=torch.long)
        for c0 in range(0, self.n, chunk):
            c1 = min(self.n, c0 + chunk)
            s = self._score(slice(c0, c1), q, qm, fn, budget).T  # (Q, chunk)
            cat_s = torch.cat([best_s, s], 1)
            cat_r = torch.cat([best_r, torch.arange(c0, c1).expand(len(q), -1)], 1)
            top = cat_s.topk(min(k, cat_s.shape[1]), dim=1)
            best_s, best_r = top.values, cat_r.gather(1, top.indices)
        return best_s, best_r

    def _hit(self, row: int, score: float) -> Hit:
        captions = self.manifest.get("captions")
        return Hit(
            row, self.keys[row], self.sources[row], score, captions[row] if captions else None
        )


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _count(n: Any, name: str) -> int:
    """``n`` as an int >= 1 (a NumPy or 0-d torch integer too; not a float, bool or str)."""
    try:
        value = operator.index(n) if not isinstance(n, bool) else 0
    except TypeError:
        value = 0
    if value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {n!r}")
    return value
