"""What the baselines share (SPEC §7): the encoder wrapper, the projector and the linear hypernetwork predictor.

Every baseline sees the same two views of one object and the same action as ContextSSL (data/pairs.py
PairBatch: the relative-rotation quaternion and the two hue differences, 6 values); the encoder is the same
builder's (model/encoder.py), so h means the same thing for all six methods and one evaluation scores them all.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ctxssl_cli.data.schema import COLOR, ROTATION
from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.model.encoder import build_encoder

# Which columns of the 6-d action each predictor setting reads (spec.py ACTION_WIDTHS gives their count).
ACTION_COLUMNS = {"rotcolor": ROTATION + COLOR, "rotation": ROTATION}


class Projector(nn.Sequential):
    """The published projector `Projector(d, "a-b-c")` (VICReg, SIE): Linear-BatchNorm1d-ReLU for every layer but
    the last, then a Linear without bias. (N, in_dim) -> (N, widths[-1])."""

    def __init__(self, in_dim: int, widths: list[int]):
        dims = [in_dim, *widths]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-2], dims[1:-1]):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dims[-2], dims[-1], bias=False))
        super().__init__(*layers)
        self.out_dim = dims[-1]


class LinearHypernetwork(nn.Module):
    """The predictor of EquiMod, SEN and SIE (published defaults: linear, no bias, no activation):

        W(a) = reshape(Linear(A -> D², no bias)(a), (D, D)),   ẑ = W(a) z.

    W(a) is linear in a, W(a) = sum_k a_k M_k with M_k = the k-th column of the Linear's weight reshaped to
    (D, D), so ẑ = sum_k a_k (M_k z) is computed without building one D x D matrix per sample (N x D² floats: 2 GB
    for the published D = 2048 at batch 128). Same numbers as the per-sample matrices, up to float rounding."""

    def __init__(self, action_dim: int, dim: int):
        super().__init__()
        self.action_dim, self.dim = action_dim, dim
        self.hyper = nn.Linear(action_dim, dim * dim, bias=False)  # weight (D², A), PyTorch's default init

    def matrices(self, action: Tensor) -> Tensor:
        """W(a) for each action: (N, A) -> (N, D, D), row-major (W[i, j] is output i*D + j). For tests and
        small batches only."""
        return self.hyper(action).reshape(-1, self.dim, self.dim)  # (N, D, D)

    def forward(self, z: Tensor, action: Tensor) -> Tensor:
        """z (N, D), action (N, A) -> ẑ (N, D)."""
        if z.shape[1] != self.dim or action.shape != (z.shape[0], self.action_dim):
            raise ValueError(f"need z (N, {self.dim}) and action (N, {self.action_dim}), got {tuple(z.shape)} and "
                             f"{tuple(action.shape)}")
        m = self.hyper.weight.T.reshape(self.action_dim, self.dim, self.dim)  # (A, D, D): M_k[i, j]
        mz = torch.einsum("kij,nj->nki", m.to(z.dtype), z)  # (N, A, D): M_k z for every k
        return (action.to(mz.dtype).unsqueeze(-1) * mz).sum(1)  # (N, D)


class TwoViewModel(nn.Module):
    """A baseline: the shared encoder plus the method's heads. `forward(images_x, images_y, action)` returns the
    method's outputs (both views through the encoder in one pass, one BatchNorm batch, as ContextSSL does);
    `encode` is what embedding and evaluation use. A baseline has no context, so the context-embedding calls of
    `ctxssl embed` are refused with a one-line error."""

    method = "baseline"

    def __init__(self, encoder: str, action_dim: int, action: str = "rotcolor"):
        super().__init__()
        self.encoder_name = encoder
        self.encoder, self.feature_dim = build_encoder(encoder)
        self.action_dim = action_dim
        self.action_columns = [c for c in ACTION_COLUMNS[action] if c < action_dim]

    def encode(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) float, already normalised -> h (B, F)."""
        return self.encoder(images)

    def encode_pair(self, images_x: Tensor, images_y: Tensor) -> tuple[Tensor, Tensor]:
        n = images_x.shape[0]
        h = self.encode(torch.cat([images_x, images_y], dim=0))  # (2N, F)
        return h[:n], h[n:]

    def predictor_action(self, action: Tensor) -> Tensor:
        """The action components this model's predictor reads: (N, 6) -> (N, A')."""
        return action[:, self.action_columns]

    def build_context(self, *args, **kwargs):
        raise CtxsslError(f"this is a {self.method} run: it has no context transformer, so `ctxssl embed` (context-"
                          "conditioned embeddings) does not apply",
                          "evaluate it with `ctxssl evaluate --checkpoint RUN` (R², top-1 and, for predictor methods, "
                          "MRR on its encoder features)")

    embed_queries = build_context


class ProjectedPair(NamedTuple):
    z1: Tensor  # projector(h) of view x (N, D)
    z2: Tensor  # projector(h) of view y (N, D)


class OneProjectorModel(TwoViewModel):
    """Encoder + one projector shared by both views (SimCLR, VICReg): forward -> ProjectedPair."""

    def __init__(self, encoder: str, action_dim: int, widths: list[int]):
        super().__init__(encoder, action_dim)
        self.projector = Projector(self.feature_dim, widths)

    def forward(self, images_x: Tensor, images_y: Tensor, action: Tensor) -> ProjectedPair:
        h1, h2 = self.encode_pair(images_x, images_y)
        return ProjectedPair(self.projector(h1), self.projector(h2))
