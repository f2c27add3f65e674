"""Keep freed memory in the process instead of handing it back to the OS after every batch (glibc only).

Why: glibc serves every allocation above its mmap threshold (at most 32 MB, adapted at run time) with a fresh
mmap and returns it with munmap when freed; the next allocation of the same size then faults in every page
again. A training step allocates and frees the same large blocks every time (image batches: 100 MB of float32
at batch 256 and 128 px; activations at the paper's size), so on the CPU a large part of the step becomes kernel
time spent on page faults: measured on the 2-core development VM, 40% of a paper-size step was system time
(0.7-1.1 M page faults per step), and the prepared-data reader at batch 256 ran at 2,535 pairs/s with glibc's
defaults against 8,271 with freed memory kept (benchmarks/loader.py, README Benchmarks).

`keep_freed_memory()` raises the mmap threshold and the trim threshold to 1 GiB with mallopt(3): blocks up to that
size come from the heap and freed ones stay there for reuse. The cost: the process keeps its peak heap instead
of shrinking after a peak. `ctxssl pretrain` calls it once at start (its data-loader workers inherit it);
`embed` and `evaluate`, whose large blocks are allocated once each, and the Python API leave the allocator alone.
`CTXSSL_MALLOC=system` keeps glibc's defaults. On other C libraries (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters of glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30  # blocks up to 1 GiB come from the heap and stay there once freed


def keep_freed_memory() -> bool:
    """Apply the settings above; True when they took effect."""
    if os.environ.get("CTXSSL_MALLOC", "").strip().lower() == "system":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
    except (OSError, AttributeError):
        return False
