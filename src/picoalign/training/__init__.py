"""Training, apart from the library (as open_clip keeps ``open_clip_train``): the loop, its
resumable state, data-parallel helpers and device / precision policy."""

from picoalign.training.loop import train

__all__ = ["train"]
