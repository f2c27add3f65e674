"""The action schema of 3DIEBench-like datasets (SPEC §2, §3.2): which action components each environment
reveals, and the width of an action.

An action is 6 numbers: the relative rotation as a quaternion (x, y, z, w; indices 0-3) and the two hue
differences (floor, light; indices 4-5). A view's latent row stores 7 values (rotation x, y, z, floor hue,
light theta, light phi, light hue), from which actions and absolute targets are computed. Everything that needs
the action width reads it from here (or from a run's recorded `action_dim`), never as a literal.
"""

from __future__ import annotations

ACTION_DIM = 6  # quaternion (4) + two hue differences (2)
ROTATION = (0, 1, 2, 3)
COLOR = (4, 5)

# What each environment reveals of the action (SPEC §2 "Environments"). An environment hides the rest (zeroes
# it in every x token). "invariant" reveals nothing, so the model is pushed to invariance.
ENVIRONMENTS: dict[str, tuple[int, ...]] = {
    "rotation": ROTATION,
    "color": COLOR,
    "rotcolor": ROTATION + COLOR,
    "invariant": (),
}


def revealed_mask(env: str, action_dim: int = ACTION_DIM, device="cpu"):
    """(A,) bool tensor: the action components environment `env` reveals (the one definition; training and
    the evaluation context modes both use it)."""
    import torch

    m = torch.zeros(action_dim, dtype=torch.bool, device=device)
    m[[i for i in ENVIRONMENTS[env] if i < action_dim]] = True
    return m
