"""Parallel helpers for dataset preparation: an ordered process-pool map and a progress bar.

Rendering and packing fan work out to spawned worker processes (so each worker imports numpy/PIL only, not
torch) through a bounded window, so memory stays flat however large the dataset is.
"""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def track(label: str, total: int, unit: str = "views", enabled: bool = True):
    """A rich progress bar on stderr with count, rate and ETA; yields `advance(n)`."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TaskProgressColumn,
                               TextColumn, TimeElapsedColumn, TimeRemainingColumn)

    class Rate(ProgressColumn):
        def render(self, task):
            return f"{task.speed or 0:,.0f}/s"

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               Rate(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n=1: bar.advance(task, n)


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


# =========================================================================================================
# Reader
# =========================================================================================================
