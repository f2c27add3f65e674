"""Progress of long work, readable on a terminal and in a log file.

On a terminal (stderr is a TTY): a rich bar with count, rate, elapsed time and ETA. Anywhere else (`make demo >
log 2>&1`, CI, a cluster job): one plain line on stderr every `interval` seconds (and at the first and the last
update), e.g.

    pretrain: 1200/3000 (40%) ep 2 rot loss 3.112 ... | 574 pairs/s | elapsed 2m05s | ETA 3m08s

Each plain line also goes to `log` when given (training passes its train.log writer). Overrides:
CTXSSL_PROGRESS=bar|plain|off forces a mode; CTXSSL_PROGRESS_INTERVAL=SECONDS sets the plain-line interval
(default 30).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

DEFAULT_INTERVAL_S = 30.0
MODES = ("bar", "plain", "off")


def _mode(enabled: bool) -> str:
    if not enabled:
        return "off"
    forced = os.environ.get("CTXSSL_PROGRESS", "").strip().lower()
    if forced in MODES:
        return forced
    return "bar" if sys.stderr.isatty() else "plain"


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("CTXSSL_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def format_duration(seconds: float) -> str:
    seconds = int(max(0, round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """One piece of long work with a known total: `update(completed, text)` or `advance(n, text)`.

    `text` is a short status (loss, rate, ...) shown beside the count. Use as a context manager.
    """

    def __init__(self, label: str, total: int, *, unit: str = "", completed: int = 0, enabled: bool = True,
                 log: Callable[[str], None] | None = None, transient: bool = False):
        self.label, self.total, self.unit = label, max(int(total), 0), unit
        self.completed, self.text = int(completed), ""
        self.mode, self.interval, self.log = _mode(enabled), _interval(), log
        self._start_completed = self.completed
        self._t0 = time.perf_counter()
        self._last_emit: float | None = None
        self._emitted_at = -1  # `completed` at the last plain line (the exit line is not printed twice)
        self._bar = self._task = None
        self._transient = transient

    # -- context --------------------------------------------------------------------------------------------
    def __enter__(self) -> "Progress":
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=20),
                                     MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                                     TimeRemainingColumn(), console=Console(stderr=True), transient=self._transient)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total or None, completed=self.completed)
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None
        elif self.mode == "plain" and exc[0] is None and self._last_emit is not None \
                and self._emitted_at != self.completed:
            self._emit()

    # -- updates --------------------------------------------------------------------------------------------
    def advance(self, n: int = 1, text: str | None = None) -> None:
        self.update(self.completed + n, text)

    def update(self, completed: int, text: str | None = None) -> None:
        self.completed = int(completed)
        if text is not None:
            self.text = text
        if self._bar is not None:
            desc = f"{self.label} {self.text}" if self.text else self.label
            self._bar.update(self._task, completed=self.completed, description=desc)
        elif self.mode == "plain":
            now = time.perf_counter()
            if (self._last_emit is None or now - self._last_emit >= self.interval
                    or (self.total and self.completed >= self.total)):
                self._emit(now)

    def line(self) -> str:
        """The plain progress line for the current state."""
        elapsed = time.perf_counter() - self._t0
        parts = [f"{self.label}: {self.completed}/{self.total}" if self.total else f"{self.label}: {self.completed}"]
        if self.total:
            parts[0] += f" ({100 * self.completed / self.total:.0f}%)"
        if self.text:
            parts[0] += f" {self.text}"
        done = self.completed - self._start_completed
        if self.unit and done > 0 and elapsed > 0:
            parts.append(f"{done / elapsed:,.1f} {self.unit}/s")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if self.total and done > 0 and self.completed < self.total:
            parts.append(f"ETA {format_duration(elapsed / done * (self.total - self.completed))}")
        return " | ".join(parts)

    def _emit(self, now: float | None = None) -> None:
        self._last_emit = time.perf_counter() if now is None else now
        self._emitted_at = self.completed
        msg = self.line()
        print(msg, file=sys.stderr, flush=True)
        if self.log is not None:
            self.log(msg)
