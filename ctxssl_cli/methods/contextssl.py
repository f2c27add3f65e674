"""ContextSSL (Gupta et al., NeurIPS 2024) in the methods registry: its pieces live where they were first written
and are only named here, so that `ctxssl_cli.methods` lists all six methods in one place.

- model: model/ctxssl.py ContextSSL (encoder + context transformer + aux predictor), built by model/build.py;
- loss: losses.py info_nce (NT-Xent with the published clamp) and aux_loss, combined by train/step.py
  compute_loss (environments, context masks).
"""

from ctxssl_cli.losses import aux_loss, info_nce
from ctxssl_cli.model.ctxssl import ContextSSL

__all__ = ["ContextSSL", "aux_loss", "info_nce"]
