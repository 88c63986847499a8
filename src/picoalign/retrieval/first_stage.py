"""The first stages of a gallery search: FAISS inner-product indexes over the pooled
embeddings, one small class per kind in a registry (no if-chains over their names).

Each kind says which settings its manifest entry holds, how to choose them for a gallery of
N items, how to build the FAISS index, how to set it up for a search of ``c`` candidates, and
whether a FAISS index read from disk is one of its kind with those settings.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np


def faiss_module() -> Any:
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError("gallery indexes need faiss: pip install faiss-cpu") from e
    return faiss


class Flat:
    """Exact inner product over every item."""

    fields: ClassVar[tuple[str, ...]] = ()

    @staticmethod
    def settings(n: int, nlist: int | None, nprobe: int | None) -> dict[str, Any]:
        return {}

    @staticmethod
    def build(x: np.ndarray, settings: dict[str, Any]) -> Any:
        return faiss_module().IndexFlatIP(x.shape[1])

    @staticmethod
    def tune(index: Any, settings: dict[str, Any], c: int, nprobe: int | None) -> None:
        return None

    @staticmethod
    def matches(index: Any, settings: dict[str, Any]) -> bool:
        return isinstance(index, faiss_module().IndexFlat)


class IVF:
    """Inverted lists: nlist ≈ √N clusters, ``nprobe`` of them searched."""

    fields: ClassVar[tuple[str, ...]] = ("nlist", "nprobe")
    NPROBE = 32

    @classmethod
    def settings(cls, n: int, nlist: int | None, nprobe: int | None) -> dict[str, Any]:
        nlist = max(1, min(n, nlist or round(math.sqrt(n))))
        return {"nlist": nlist, "nprobe": min(nlist, nprobe or cls.NPROBE)}

    @staticmethod
    def build(x: np.ndarray, settings: dict[str, Any]) -> Any:
        faiss = faiss_module()
        quantizer = faiss.IndexFlatIP(x.shape[1])
        index = faiss.IndexIVFFlat(
            quantizer, x.shape[1], settings["nlist"], faiss.METRIC_INNER_PRODUCT
        )
        index.cp.min_points_per_centroid = 1  # small galleries: no warning spam
        index.train(x)
        return index

    @staticmethod
    def tune(index: Any, settings: dict[str, Any], c: int, nprobe: int | None) -> None:
        faiss_module().extract_index_ivf(index).nprobe = nprobe or settings["nprobe"]

    @staticmethod
    def matches(index: Any, settings: dict[str, Any]) -> bool:
        return isinstance(index, faiss_module().IndexIVF) and index.nlist == settings["nlist"]


class HNSW:
    """A navigable small-world graph; efSearch raised to 5 × candidates at search time
    (clustered galleries need a wide beam)."""

    fields: ClassVar[tuple[str, ...]] = ("m", "ef_search")
    M, EF_CONSTRUCTION, EF_SEARCH = 32, 80, 256

    @classmethod
    def settings(cls, n: int, nlist: int | None, nprobe: int | None) -> dict[str, Any]:
        return {"m": cls.M, "ef_search": cls.EF_SEARCH}

    @classmethod
    def build(cls, x: np.ndarray, settings: dict[str, Any]) -> Any:
        faiss = faiss_module()
        index = faiss.IndexHNSWFlat(x.shape[1], settings["m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cls.EF_CONSTRUCTION
        return index

    @staticmethod
    def tune(index: Any, settings: dict[str, Any], c: int, nprobe: int | None) -> None:
        index.hnsw.efSearch = max(5 * c, settings["ef_search"])  # ≈ flat's top-c

    @staticmethod
    def matches(index: Any, settings: dict[str, Any]) -> bool:
        return hasattr(index, "hnsw")


STAGES: dict[str, Any] = {"flat": Flat, "ivf": IVF, "hnsw": HNSW}
