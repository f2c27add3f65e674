"""EquiMod (Devillers & Lefort, ICLR 2023), SimCLR flavour, as the SIE code base trains it (`SimCLREquiMod`,
SPEC §7): two projectors of the same widths on h, an invariant z_i and an equivariant z_e; the linear
hypernetwork predictor maps view x's z_e and the action to a prediction of view y's z_e, and

    loss = NT-Xent(z_i1, z_i2) + equi_factor · NT-Xent(P(z_e1, a), z_e2)

(temperature 0.1, no clamp; equi_factor 1, EquiMod's default). Both NT-Xent terms take their negatives from the
global batch under DDP (simclr.py global_nt_xent).
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from ctxssl_cli.methods.heads import LinearHypernetwork, Projector, TwoViewModel
from ctxssl_cli.methods.simclr import global_nt_xent
from ctxssl_cli.spec import ACTION_WIDTHS, EquiModSpec, RunSpec, mlp_widths
from ctxssl_cli.train.dist import DistInfo


def equimod_loss(inv: Tensor, equi: Tensor, equi_factor: float) -> dict[str, Tensor]:
    """The two NT-Xent terms (already computed on the global batch) -> {"loss", "inv", "equi"}."""
    return {"loss": inv + equi_factor * equi, "inv": inv, "equi": equi}


class EquiModOutputs(NamedTuple):
    zi1: Tensor  # invariant projection of view x (N, D)
    zi2: Tensor  # invariant projection of view y (N, D)
    pred: Tensor  # P(z_e1, a): the predicted equivariant projection of view y (N, D)
    ze2: Tensor  # equivariant projection of view y (N, D)


class EquiMod(TwoViewModel):
    method = "equimod"

    def __init__(self, encoder: str, action_dim: int, widths: list[int], action: str):
        super().__init__(encoder, action_dim, action)
        self.projector_inv = Projector(self.feature_dim, widths)
        self.projector_equi = Projector(self.feature_dim, widths)
        self.predictor = LinearHypernetwork(ACTION_WIDTHS[action], widths[-1])

    def equivariant(self, h: Tensor) -> Tensor:
        """The embedding the predictor acts on: h (N, F) -> z_e (N, D)."""
        return self.projector_equi(h)

    def predict(self, z_e: Tensor, action: Tensor) -> Tensor:
        """z_e of a view and the 6-d action to another view -> that view's predicted z_e (N, D)."""
        return self.predictor(z_e, self.predictor_action(action))

    def forward(self, images_x: Tensor, images_y: Tensor, action: Tensor) -> EquiModOutputs:
        h1, h2 = self.encode_pair(images_x, images_y)
        return EquiModOutputs(self.projector_inv(h1), self.projector_inv(h2),
                              self.predict(self.equivariant(h1), action), self.equivariant(h2))


def build(spec: RunSpec, action_dim: int) -> EquiMod:
    cfg = spec.equimod
    return EquiMod(spec.model.encoder, action_dim, mlp_widths("equimod.mlp", cfg.mlp), cfg.action)


def step_loss(out: EquiModOutputs, cfg: EquiModSpec, info: DistInfo) -> dict[str, Tensor]:
    inv = global_nt_xent(out.zi1, out.zi2, cfg.temperature, info)
    equi = global_nt_xent(out.pred, out.ze2, cfg.temperature, info)
    return equimod_loss(inv, equi, cfg.equi_factor)
