"""Parallel helpers for dataset preparation: an ordered process-pool map and its progress (`track`).

Rendering and packing fan work out to spawned worker processes (so each worker imports numpy/PIL only, not
torch) through a bounded window, so memory stays flat however large the dataset is.
"""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def track(label: str, total: int, unit: str = "views", enabled: bool = True):
    """Progress of a prepare step (ctxssl_cli.progress.Progress: a rich bar on a terminal, a few plain lines on
    stderr elsewhere); yields `advance(n)`."""
    from ctxssl_cli.progress import Progress

    with Progress(label, total, unit=unit, enabled=enabled) as bar:
        yield lambda n=1: bar.advance(n)


def default_workers() -> int:
    """The cores this process may use (respects CPU affinity, e.g. under taskset or a batch scheduler)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: exit when the main process dies (kill -9 would otherwise leave idle workers)."""
    import threading
    import time

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def parallel_map(fn, items: list, workers=None):
    """Ordered map over a spawn process pool with a bounded window (memory stays flat); workers<=1: in-process."""
    workers = default_workers() if workers is None else int(workers)
    if workers <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    import multiprocessing as mp
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    window = 4 * workers
    with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=mp.get_context("spawn"),
                             initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
        queue, it = deque(), iter(items)
        try:
            for item in it:
                queue.append(pool.submit(fn, item))
                if len(queue) >= window:
                    yield queue.popleft().result()
            while queue:
                yield queue.popleft().result()
        finally:
            for fut in queue:
                fut.cancel()
