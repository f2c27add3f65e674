"""VICReg (Bardes, Ponce & LeCun, ICLR 2022) as the SIE code base trains it (SPEC §7): z = projector(h) and

    loss = sim · MSE(z1, z2) + std · (v(z1) + v(z2)) / 2 + cov · (c(z1) + c(z2)),
    v(z) = mean_d relu(1 - sqrt(Var_d(z) + 1e-4)),    c(z) = sum_{i != j} Cov(z)_ij² / D,

with unbiased (1/(N-1)) variances and covariances. Invariant: the action is not used.

The variance and covariance terms are statistics of the batch, so under DDP they are computed over the GLOBAL
batch: each rank gathers every rank's z (train/dist.py gather_with_grad) and computes the same global loss;
the gather's backward sums each rank's gradient into its own rows and DDP's averaging then gives exactly the
one-process gradient (tests/test_methods.py checks 1 process against 2). `variance_term` and
`covariance_term` are SIE's too.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ctxssl_cli.methods.heads import OneProjectorModel, ProjectedPair
from ctxssl_cli.spec import RunSpec, VICRegSpec, mlp_widths
from ctxssl_cli.train.dist import DistInfo, gather_with_grad

VAR_EPS = 1e-4  # inside the square root of the variance, as published


def variance_term(z: Tensor) -> Tensor:
    """mean over dimensions of relu(1 - std): (N, D) -> scalar. Pushes every dimension's std up to 1."""
    std = (z.float().var(dim=0) + VAR_EPS).sqrt()  # (D,), unbiased
    return F.relu(1 - std).mean()


def covariance_term(z: Tensor) -> Tensor:
    """Sum of the squared off-diagonal covariances over D: (N, D) -> scalar. Decorrelates the dimensions."""
    z = z.float()
    n, d = z.shape
    zc = z - z.mean(dim=0)
    cov = zc.T @ zc / (n - 1)  # (D, D)
    off = cov - cov.diagonal().diag()
    return off.square().sum() / d


def vicreg_loss(z1: Tensor, z2: Tensor, sim_coeff: float = 10.0, std_coeff: float = 10.0,
                cov_coeff: float = 1.0) -> dict[str, Tensor]:
    """VICReg on the (global) batch z1, z2 (N, D) -> {"loss", "inv", "std", "cov"} (the terms unweighted)."""
    inv = F.mse_loss(z1.float(), z2.float())
    std = variance_term(z1) / 2 + variance_term(z2) / 2
    cov = covariance_term(z1) + covariance_term(z2)
    return {"loss": sim_coeff * inv + std_coeff * std + cov_coeff * cov, "inv": inv, "std": std, "cov": cov}


VICRegOutputs = ProjectedPair  # z1, z2: projector(h) of each view


class VICReg(OneProjectorModel):
    """Encoder + one projector (spec vicreg.mlp)."""

    method = "vicreg"


def build(spec: RunSpec, action_dim: int) -> VICReg:
    return VICReg(spec.model.encoder, action_dim, mlp_widths("vicreg.mlp", spec.vicreg.mlp))


def step_loss(out: VICRegOutputs, cfg: VICRegSpec, info: DistInfo) -> dict[str, Tensor]:
    z1, z2 = gather_with_grad(out.z1.float(), info), gather_with_grad(out.z2.float(), info)  # (N_global, D)
    return vicreg_loss(z1, z2, cfg.sim_coeff, cfg.std_coeff, cfg.cov_coeff)
