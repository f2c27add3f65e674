"""Choosing the compute device (`--device auto|cpu|cuda`): shared by training, embedding and evaluation."""

from __future__ import annotations

import torch

from ctxssl_cli.errors import CtxsslError


def resolve_device(pref: str) -> torch.device:
    if pref not in ("auto", "cpu", "cuda"):
        raise CtxsslError(f"unknown device '{pref}'", "use --device auto, cpu or cuda")
    if pref == "cuda" and not torch.cuda.is_available():
        raise CtxsslError("--device cuda was asked for but no CUDA GPU is visible", "use --device cpu (or auto)")
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(pref)
