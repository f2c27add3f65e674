"""CPU threads on a shared machine: follow the cores other processes leave free (`train.threads`, issue 17).

Why: PyTorch's CPU ops run as OpenMP parallel regions over all cores, and each region ends when its slowest thread
does. When another process keeps a core busy, one of our threads waits for a time slice in every region, so the
step slows far more than the share of the machine that was lost (measured on 2 cores, demo preset: 938 pairs/s
alone, 194 pairs/s beside a second training; OMP_WAIT_POLICY / GOMP_SPINCOUNT do not help). With one thread per
busy core given back, the same run trains at 381-532 pairs/s beside it (benchmarks/train_step.py --contended).

`train.threads = 0` (auto, the default) starts with the threads torch started with (the cores, or OMP_NUM_THREADS
/ torchrun's 1) and, every POLL_S seconds, measures how many cores other processes used (Linux /proc: the machine's
busy time minus this process's CPU time). When the free-core count has differed from the current thread count for
two polls in a row, torch.set_num_threads follows it, never below 1 nor above the starting count. `train.threads
= N` pins N threads.

The thread count changes the order of floating-point sums (one thread and two give different bits), so a run is
bit-reproducible when its thread count never changed; train.log records every change with its step. Pin
`train.threads` for bit-exact runs on a machine others share.
"""

from __future__ import annotations

import os
import time

import torch

POLL_S = 5.0  # seconds between measurements of the others' CPU use
AGREE = 2  # polls in a row that must agree before the count changes (no flapping on a short burst)
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # /proc/stat cpu: user nice system [idle iowait] irq softirq steal


def _machine_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return sum(fields[i] for i in _BUSY_FIELDS), sum(fields)


def _proc_ticks(pid: str) -> list[int] | None:
    """utime, stime, cutime, cstime of a process (fields 14-17 of proc(5)), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()  # the command name may contain spaces
        return [int(v) for v in rest[11:15]]
    except (OSError, IndexError, ValueError):
        return None


def _own_ticks() -> int | None:
    """CPU clock ticks of this process and its children (DataLoader workers are ours, not a neighbour): our
    threads, the children that ended (cutime, cstime) and the children still running."""
    me = _proc_ticks("self")
    if me is None:
        return None
    children = []
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                children += f.read().split()
    except OSError:
        pass
    return sum(me) + sum(sum(c[:2]) for c in map(_proc_ticks, children) if c)


def free_threads(others_cores: float, cores: int, ceiling: int) -> int:
    """The threads to run beside processes that keep `others_cores` cores busy: the free cores, rounded (a
    neighbour using under half a core costs less than a thread would lose), between 1 and `ceiling`."""
    return max(1, min(ceiling, int(cores - others_cores + 0.5)))


class ThreadGovernor:
    """Call `poll(step)` once per step (cheap: a clock read until POLL_S has passed). It returns a line for
    train.log when the thread count changed, else None. `close()` restores the count torch had before."""

    def __init__(self, setting: int, device: torch.device, clock=time.monotonic):
        self.before = torch.get_num_threads()
        self.setting, self.clock = int(setting), clock
        self.active = device.type == "cpu" and self.setting == 0 and _machine_ticks() is not None
        if device.type == "cpu" and self.setting > 0:
            torch.set_num_threads(self.setting)
        self.ceiling = self.before
        try:
            self.cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            self.cores = os.cpu_count() or 1
        self._last = self._sample() if self.active else None
        self._last_t = clock()
        self._proposal, self._agree = None, 0

    def _sample(self):
        m, own = _machine_ticks(), _own_ticks()
        return None if m is None or own is None else (m[0], m[1], own)

    def others_cores(self, a, b) -> float:
        """Cores of ours that other processes kept busy between two samples: the machine's busy ticks minus ours,
        per CPU of the machine (/proc/stat sums every online CPU), scaled to the cores this process may use."""
        n_cpu = os.cpu_count() or self.cores
        elapsed = (b[1] - a[1]) / n_cpu  # ticks per CPU
        others = max(0.0, (b[0] - a[0]) - (b[2] - a[2])) / max(elapsed, 1)
        return others * self.cores / n_cpu

    def poll(self, step: int) -> str | None:
        if not self.active or self.clock() - self._last_t < POLL_S:
            return None
        now = self._sample()
        if now is None:
            self.active = False
            return None
        others = self.others_cores(self._last, now)
        self._last, self._last_t = now, self.clock()
        want = free_threads(others, self.cores, self.ceiling)
        current = torch.get_num_threads()
        if want == current:
            self._proposal, self._agree = None, 0
            return None
        self._agree = self._agree + 1 if want == self._proposal else 1
        self._proposal = want
        if self._agree < AGREE:
            return None
        torch.set_num_threads(want)
        self._proposal, self._agree = None, 0
        return (f"threads {current} -> {want} at step {step}: other processes are using {others:.1f} of "
                f"{self.cores} cores (train.threads=0 follows the free cores; pin it for bit-exact runs)")

    def close(self) -> None:
        if torch.get_num_threads() != self.before:
            torch.set_num_threads(self.before)
