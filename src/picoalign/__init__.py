"""picoalign: reliable image-text alignment and retrieval with PICO."""

__version__ = "0.1.0"
