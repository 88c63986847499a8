"""Serving retrieval over a gallery: the two-stage index, its on-disk folder, contact sheets."""

from picoalign.retrieval.build import build_index
from picoalign.retrieval.index import GalleryIndex, Hit
from picoalign.retrieval.sheet import contact_sheet

__all__ = ["GalleryIndex", "Hit", "build_index", "contact_sheet"]
