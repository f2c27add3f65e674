"""SIE, Split Invariant-Equivariant (Garrido, Najman & LeCun, ICML 2023; `SIE` in facebookresearch/SIE, SPEC §7).

h (F) is split into an invariant part h_inv = h[:F-e] and an equivariant part h_equi = h[F-e:] (published
e = 256 of 512, `--equi 256`); each has its own projector, scaled by its share of h (sie.mlp 2048-2048-2048 ->
1024-1024-1024 each), giving z_inv and z_equi. The linear hypernetwork predicts view y's z_equi from view x's
and the action, ẑ = P(z_equi1, a), and

    loss = sim · MSE(z_inv1, z_inv2) + equi_factor · sim · MSE(ẑ, z_equi2)
           + std · (v(z1) + v(z2)) / 2 + std · v(ẑ) / 2 + cov · (c(z1) + c(z2)),   z = concat(z_inv, z_equi),

with VICReg's variance v and covariance c (vicreg.py), all on the global batch under DDP.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ctxssl_cli.methods.heads import LinearHypernetwork, Projector, TwoViewModel
from ctxssl_cli.methods.vicreg import covariance_term, variance_term
from ctxssl_cli.spec import ACTION_WIDTHS, RunSpec, SIESpec, sie_widths
from ctxssl_cli.train.dist import DistInfo, gather_with_grad


def sie_loss(zinv1: Tensor, zinv2: Tensor, zequi1: Tensor, zequi2: Tensor, pred: Tensor, equi_factor: float = 0.45,
             sim_coeff: float = 10.0, std_coeff: float = 10.0, cov_coeff: float = 1.0) -> dict[str, Tensor]:
    """SIE's loss on the (global) batch -> {"loss", "inv", "equi", "std", "pred_std", "cov"} (terms unweighted).

    zinv* (N, Di), zequi* and pred (N, De)."""
    z1 = torch.cat([zinv1, zequi1], dim=1).float()  # (N, Di + De)
    z2 = torch.cat([zinv2, zequi2], dim=1).float()
    inv = F.mse_loss(zinv1.float(), zinv2.float())
    equi = F.mse_loss(pred.float(), zequi2.float())
    std = variance_term(z1) / 2 + variance_term(z2) / 2
    pred_std = variance_term(pred) / 2
    cov = covariance_term(z1) + covariance_term(z2)
    loss = (sim_coeff * inv + equi_factor * sim_coeff * equi + std_coeff * std + std_coeff * pred_std
            + cov_coeff * cov)
    return {"loss": loss, "inv": inv, "equi": equi, "std": std, "pred_std": pred_std, "cov": cov}


class SIEOutputs(NamedTuple):
    zinv1: Tensor  # (N, Di)
    zinv2: Tensor
    zequi1: Tensor  # (N, De)
    zequi2: Tensor
    pred: Tensor  # P(z_equi1, a) (N, De)


class SIE(TwoViewModel):
    method = "sie"

    def __init__(self, encoder: str, action_dim: int, equi_dim: int, inv_widths: list[int],
                 equi_widths: list[int], action: str):
        super().__init__(encoder, action_dim, action)
        if not 0 < equi_dim < self.feature_dim:
            raise ValueError(f"equi_dim must be in (0, {self.feature_dim}), got {equi_dim}")
        self.equi_dim = equi_dim
        self.inv_dim = self.feature_dim - equi_dim
        self.projector_inv = Projector(self.inv_dim, inv_widths)
        self.projector_equi = Projector(equi_dim, equi_widths)
        self.predictor = LinearHypernetwork(ACTION_WIDTHS[action], equi_widths[-1])

    def split(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """h (N, F) -> (h_inv (N, F - e), h_equi (N, e))."""
        return h[:, :self.inv_dim], h[:, self.inv_dim:]

    def equivariant(self, h: Tensor) -> Tensor:
        return self.projector_equi(self.split(h)[1])

    def predict(self, z_e: Tensor, action: Tensor) -> Tensor:
        return self.predictor(z_e, self.predictor_action(action))

    def forward(self, images_x: Tensor, images_y: Tensor, action: Tensor) -> SIEOutputs:
        h1, h2 = self.encode_pair(images_x, images_y)
        (i1, e1), (i2, e2) = self.split(h1), self.split(h2)
        ze1, ze2 = self.projector_equi(e1), self.projector_equi(e2)
        return SIEOutputs(self.projector_inv(i1), self.projector_inv(i2), ze1, ze2, self.predict(ze1, action))


def build(spec: RunSpec, action_dim: int) -> SIE:
    inv, equi = sie_widths(spec)
    return SIE(spec.model.encoder, action_dim, spec.sie.equi_dim, inv, equi, spec.sie.action)


def step_loss(out: SIEOutputs, cfg: SIESpec, info: DistInfo) -> dict[str, Tensor]:
    g = [gather_with_grad(t.float(), info) for t in out]  # every output over the global batch
    return sie_loss(*g, equi_factor=cfg.equi_factor, sim_coeff=cfg.sim_coeff, std_coeff=cfg.std_coeff,
                    cov_coeff=cfg.cov_coeff)
