"""Which threads run torch's parallel CPU kernels, and with how many threads each.

torch's CPU kernels run in OpenMP parallel regions (libgomp in the PyPI wheels). Every thread that
opens a region becomes the master of its own team of helper threads, and the team lives until that
thread exits. libgomp counts every thread it manages in the process. While that count is above the
number of CPUs, helpers sleep between regions instead of spinning, so every region pays a wake-up.
Mask3D's sparse convolution opens thousands of short regions per cloud, and it runs about twice as
slowly then. Measured on 2 cores at 100k points (models/folk-synth, Mask3D only): 1.45 s with the
model loaded on the main thread and the cloud segmented on a worker thread (two teams), 0.75 s with
both on the worker (one team).

The node therefore keeps one team:

* one long-lived thread runs torch with several threads: the node's worker
  (:func:`use_threads` when it starts);
* torch work elsewhere either runs on a short-lived thread, whose team ends with it
  (:func:`on_own_thread`: the model's loading at configure), or runs serially (:func:`serial`: the
  map services on the executor, the worker's helper that makes the labeled cloud, the short-lived
  threads of :func:`concurrently` that split the worker's DBSCAN neighbour search).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

T = TypeVar("T")


def use_threads(threads: int) -> None:
    """Run this thread's torch CPU kernels on ``threads`` threads (>= 1).

    torch sets a thread's count on its first parallel kernel, from the process-wide value at that
    moment. Reading the count first makes that happen now, so it cannot later override this call.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.get_num_threads()
    torch.set_num_threads(threads)


@contextmanager
def serial() -> Iterator[None]:
    """Inside the block, this thread's torch CPU kernels run on this thread alone, with no team.

    For short torch work on a thread that lives on (an executor serving services) while another
    thread computes in parallel. The previous count is restored on exit.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def serially(fn: Callable[..., T], *args) -> T:
    """``fn(*args)`` inside :func:`serial`: what a helper thread runs, so that it opens no OpenMP team
    beside the worker's."""
    with serial():
        return fn(*args)


def concurrently(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run the ``calls`` at once, the first on this thread and the others on helper threads (one per call at
    most), their torch kernels serial (:func:`serial`); their results, in order. One call runs here alone,
    with this thread's torch threads.

    For work that spends its time in code that releases the GIL (numpy's array loops, scipy's kd-tree
    searches) split into as many parts as this thread has torch threads. The threads have ended when this
    returns; a call's exception is re-raised once all have finished.
    """
    if len(calls) <= 1:
        return [call() for call in calls]
    with ThreadPoolExecutor(max_workers=len(calls) - 1) as pool:
        others = [pool.submit(serially, call) for call in calls[1:]]
        return [serially(calls[0]), *(future.result() for future in others)]


def on_own_thread(fn: Callable[..., T], *args, threads: int, **kwargs) -> T:
    """``fn(*args, **kwargs)`` on a new thread with ``threads`` torch threads; its result, or its
    exception re-raised here. The thread, and its OpenMP team, have ended when this returns."""
    with ThreadPoolExecutor(max_workers=1, initializer=use_threads, initargs=(threads,)) as pool:
        return pool.submit(fn, *args, **kwargs).result()
