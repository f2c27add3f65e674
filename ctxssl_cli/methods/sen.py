"""SEN (Park et al., "Learning symmetric embeddings for equivariant world models", ICML 2022) as the SIE code base
trains it (`SimCLROnlyEqui`, SPEC §7): one projector z_e = projector(h), the linear hypernetwork predictor, and
only an equivariant term,

    loss = NT-Xent(P(z_e1, a), z_e2)

(temperature 0.1, no clamp, negatives from the global batch under DDP). There is no invariant term: what the
encoder keeps of the object identity it keeps because the contrast needs it.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from ctxssl_cli.methods.heads import LinearHypernetwork, Projector, TwoViewModel
from ctxssl_cli.methods.simclr import global_nt_xent
from ctxssl_cli.spec import ACTION_WIDTHS, RunSpec, SENSpec, mlp_widths
from ctxssl_cli.train.dist import DistInfo


class SENOutputs(NamedTuple):
    pred: Tensor  # P(z_e1, a) (N, D)
    ze2: Tensor  # projection of view y (N, D)


class SEN(TwoViewModel):
    method = "sen"

    def __init__(self, encoder: str, action_dim: int, widths: list[int], action: str):
        super().__init__(encoder, action_dim, action)
        self.projector = Projector(self.feature_dim, widths)
        self.predictor = LinearHypernetwork(ACTION_WIDTHS[action], widths[-1])

    def equivariant(self, h: Tensor) -> Tensor:
        return self.projector(h)

    def predict(self, z_e: Tensor, action: Tensor) -> Tensor:
        return self.predictor(z_e, self.predictor_action(action))

    def forward(self, images_x: Tensor, images_y: Tensor, action: Tensor) -> SENOutputs:
        h1, h2 = self.encode_pair(images_x, images_y)
        return SENOutputs(self.predict(self.equivariant(h1), action), self.equivariant(h2))


def build(spec: RunSpec, action_dim: int) -> SEN:
    return SEN(spec.model.encoder, action_dim, mlp_widths("sen.mlp", spec.sen.mlp), spec.sen.action)


def step_loss(out: SENOutputs, cfg: SENSpec, info: DistInfo) -> dict[str, Tensor]:
    equi = global_nt_xent(out.pred, out.ze2, cfg.temperature, info)
    return {"loss": equi, "equi": equi}
