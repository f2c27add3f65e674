"""SimCLR (Chen et al., ICML 2020) as the SIE code base trains it (SPEC §7): z = projector(h) and the NT-Xent
loss over the 2N embeddings of a batch of N pairs: L2-normalised, cosine / temperature (0.1), the other view of
the same object the positive and the 2N - 2 other embeddings the negatives, no clamp of the cosines. Invariant:
the action is not used.

NT-Xent is ContextSSL's InfoNCE without its clamp (ctxssl_cli/losses.py info_nce, clamp=False), so the two
methods share one tested implementation. Under DDP the negatives are the global batch: every rank's z is
gathered with gradients (train/dist.py), as ContextSSL's step does.
"""

from __future__ import annotations

from torch import Tensor

from ctxssl_cli.losses import info_nce
from ctxssl_cli.methods.heads import OneProjectorModel, ProjectedPair
from ctxssl_cli.spec import RunSpec, SimCLRSpec, mlp_widths
from ctxssl_cli.train.dist import DistInfo, gather_with_grad


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1, all1: Tensor | None = None,
            all2: Tensor | None = None, offset: int = 0) -> Tensor:
    """NT-Xent of the local pairs (z1[i], z2[i]), each (N, D), against the global batch (all1, all2) whose rows
    [offset, offset + N) are these; the mean over the 2N local rows. Without all1/all2: the local batch."""
    return info_nce(z1, z2, temperature, all1, all2, offset=offset, clamp=False)


def global_nt_xent(z1: Tensor, z2: Tensor, temperature: float, info: DistInfo) -> Tensor:
    """NT-Xent of this rank's pairs with every rank's embeddings as negatives (equal local batches)."""
    z1, z2 = z1.float(), z2.float()
    all1, all2 = gather_with_grad(z1, info), gather_with_grad(z2, info)
    return nt_xent(z1, z2, temperature, all1, all2, offset=info.rank * z1.shape[0])


SimCLROutputs = ProjectedPair  # z1, z2: projector(h) of each view


class SimCLR(OneProjectorModel):
    """Encoder + one projector (spec simclr.mlp)."""

    method = "simclr"


def build(spec: RunSpec, action_dim: int) -> SimCLR:
    return SimCLR(spec.model.encoder, action_dim, mlp_widths("simclr.mlp", spec.simclr.mlp))


def step_loss(out: SimCLROutputs, cfg: SimCLRSpec, info: DistInfo) -> dict[str, Tensor]:
    nce = global_nt_xent(out.z1, out.z2, cfg.temperature, info)
    return {"loss": nce, "nce": nce}
