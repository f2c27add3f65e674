"""Learning-rate schedule, precomputed per global step (DINO-style): linear warm-up from 0, cosine to 0."""

from __future__ import annotations

import math

import numpy as np


def warmup_cosine(peak: float, total_steps: int, warmup_steps: int) -> np.ndarray:
    """lr for each step 0..total_steps-1. Warm-up reaches `peak` at step warmup_steps; the last step is ~0."""
    warmup_steps = min(max(warmup_steps, 0), total_steps)
    lrs = np.empty(total_steps, dtype=np.float64)
    for s in range(total_steps):
        if s < warmup_steps:
            lrs[s] = peak * (s + 1) / warmup_steps
        else:
            span = max(total_steps - warmup_steps, 1)
            lrs[s] = 0.5 * peak * (1 + math.cos(math.pi * (s - warmup_steps) / span))
    return lrs
