"""Coarse worker threads for blocked scoring: each thread takes whole tiles and runs them
single-threaded.

Why not torch's own intra-op threads: many small ops with an OpenMP barrier each collapse
when other processes load the cores (a descheduled thread stalls its partner at every
barrier); whole-tile workers do not, and need no barrier (``core/similarity.py``).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")


@functools.cache
def openmp_backend() -> bool:
    """Per-thread ``set_num_threads`` is safe only with the OpenMP backend (libgomp/iomp ICVs
    are per thread); the native thread pool would be resized for the whole process."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def run_tiles(tiles: Sequence[T], do: Callable[[T, dict[str, Any]], None], workers: int) -> None:
    """``do(tile, state)`` for every tile, in order of ``tiles``, by ``workers`` threads that
    each take the next free tile (``state`` is a dict per worker, for what it may reuse).

    With one worker it runs here. Otherwise each worker runs single-threaded with the caller's
    inference/no-grad mode; on an error the others stop at their next tile and the error is
    re-raised here; the caller's thread count is restored.
    """
    queue = iter(tiles)
    lock, abort = threading.Lock(), threading.Event()
    inference = torch.is_inference_mode_enabled()  # thread-local: hand it to the workers

    def work(single_threaded: bool) -> None:
        if single_threaded:  # per-thread setting (OpenMP ICV, MKL local): the caller keeps its
            torch.set_num_threads(1)
        state: dict[str, Any] = {}
        with torch.inference_mode(inference), torch.no_grad():
            while True:
                with lock:
                    tile = next(queue, None)
                if tile is None or abort.is_set():
                    return
                do(tile, state)

    workers = min(workers, len(tiles))
    if workers <= 1:
        work(False)
        return
    caller_threads = torch.get_num_threads()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work(True)
        except BaseException as exc:
            errors.append(exc)
            abort.set()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(workers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        # set_num_threads also records the count new threads inherit: store the caller's again
        torch.set_num_threads(caller_threads)
    if errors:
        raise errors[0]
