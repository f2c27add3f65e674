"""ContextSSL (Gupta et al., NeurIPS 2024, arXiv 2405.18193): encoder + context transformer + aux predictor.

Data flow for one training step (SPEC §2), N = n_seq * n_pairs pairs:

    images x, y (N, 3, H, W) --encode--> h_x, h_y (N, F)      projector = identity, so proj_dim = F
    tokens: x_k = [h_x_k, a_k], y_k = [h_y_k, 0]  -> (n_seq, 2*n_pairs, F + A)
    transformer (pair mask)                       -> z_x, z_y (N, F): read-out at the x_k and y_k positions
    aux predictor on normalised z                 -> predicted absolute latents of y_k (N, A)

At evaluation (SPEC §4) a context of c/2 pairs is run once (`build_context`) and every image is a query
token against its cached keys/values (`embed_queries`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctxssl_cli.data.schema import ACTION_DIM
from ctxssl_cli.model.context import ContextTransformer, KVCache
from ctxssl_cli.model.encoder import build_encoder


class PairOutputs(NamedTuple):
    """Everything one training step needs, from `ContextSSL.forward`; each (N, ·), in the input pair order."""

    h_x: Tensor  # encoder features of the source views (N, F)
    h_y: Tensor  # encoder features of the target views (N, F)
    z_x: Tensor  # prediction of the transformed view, read out at x_k (N, F)
    z_y: Tensor  # target representation, read out at y_k (N, F)
    pred_x: Tensor  # aux predictor on normalised z_x: absolute latent of y_k (N, A)
    pred_y: Tensor  # aux predictor on normalised z_y (N, A)


class ContextSSL(nn.Module):
    """Encoder + GPT-2 style context transformer + auxiliary latent predictor (SPEC §2).

    Defaults are the paper's (ResNet-18, 3 layers, 4 heads, 2048 wide, no dropout, aux MLP 1024 wide).
    """

    def __init__(self, encoder: str = "resnet18", action_dim: int = ACTION_DIM, n_layer: int = 3, n_head: int = 4,
                 n_embd: int = 2048, dropout: float = 0.0, aux_hidden: int = 1024, channels_last: bool = False,
                 aux_dim: int | None = None, aux_norm: str = "l2"):
        super().__init__()
        self.encoder_name = encoder
        if aux_norm not in ("l2", "rms"):
            raise ValueError(f"aux_norm must be l2 or rms, got {aux_norm!r}")
        self.aux_norm = aux_norm
        self.channels_last = channels_last
        self.encoder, self.feature_dim = build_encoder(encoder, channels_last)
        self.action_dim = action_dim
        F_, A = self.feature_dim, action_dim
        self.transformer = ContextTransformer(F_ + A, F_, n_layer, n_head, n_embd, dropout)
        # Per-component factor applied to every action before it enters a token (model.action_units): ones for
        # raw units. Not saved in checkpoints: build_model sets it from the run's spec and schema.
        self.register_buffer("action_scale", torch.ones(A), persistent=False)
        # The paper's auxiliary predictor: MLP proj_dim -> 1024 -> 1024 -> action_dim with ReLU, applied to
        # L2-normalised outputs; it predicts the target view's absolute latent and keeps the representation
        # from collapsing to invariance.
        self.aux_predictor = nn.Sequential(
            nn.Linear(F_, aux_hidden), nn.ReLU(inplace=True),
            nn.Linear(aux_hidden, aux_hidden), nn.ReLU(inplace=True),
            nn.Linear(aux_hidden, aux_dim or A),  # aux_dim: another target encoding (train.aux_rotation/aux_hue)
        )

    # -- encoder ---------------------------------------------------------------------------------------
    def encode(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) float, already normalised -> h (B, F)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.encoder(images)

    # -- training path ---------------------------------------------------------------------------------
    def _token(self, h: Tensor, action: Tensor | None) -> Tensor:
        """[h, action * action_scale] (action None -> zeros): (N, F), (N, A) -> (N, F + A) in the promoted dtype."""
        if action is None:
            return F.pad(h, (0, self.action_dim))
        if action.shape != (h.shape[0], self.action_dim):
            raise ValueError(f"action must be ({h.shape[0]}, {self.action_dim}), got {tuple(action.shape)}")
        dtype = torch.promote_types(h.dtype, action.dtype)
        return torch.cat([h.to(dtype), (action * self.action_scale).to(dtype)], dim=1)

    def make_tokens(self, h_x: Tensor, h_y: Tensor, action: Tensor, n_pairs: int) -> Tensor:
        """h_x, h_y (N, F), action (N, A), already zeroed where not revealed -> tokens (n_seq, 2*n_pairs, F+A).

        Consecutive pairs form a sequence: pairs [s*n_pairs, (s+1)*n_pairs) are sequence s, in the order
        x_1, y_1, x_2, y_2, ...
        """
        N = h_x.shape[0]
        if h_y.shape != h_x.shape or n_pairs < 1 or N % n_pairs:
            raise ValueError(f"need h_x, h_y of one shape (N, F) with N a multiple of n_pairs={n_pairs}, got "
                             f"{tuple(h_x.shape)} and {tuple(h_y.shape)}")
        x_tok = self._token(h_x, action)  # (N, F+A)
        y_tok = self._token(h_y, None).to(x_tok.dtype)  # (N, F+A), zero action
        tokens = torch.stack([x_tok, y_tok], dim=1)  # (N, 2, F+A): x_k then y_k
        return tokens.reshape(N // n_pairs, 2 * n_pairs, -1)  # (n_seq, T, F+A)

    def forward_pairs(self, h_x: Tensor, h_y: Tensor, action: Tensor, n_pairs: int,
                      attn_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Transformer outputs at the x_k and y_k positions -> (z_x, z_y), each (N, F), in the input order."""
        tokens = self.make_tokens(h_x, h_y, action, n_pairs)  # (n_seq, T, F+A)
        out = self.transformer(tokens, attn_mask)  # (n_seq, T, F)
        out = out.reshape(h_x.shape[0], 2, -1)  # (N, 2, F): [:, 0] at x_k, [:, 1] at y_k
        return out[:, 0], out[:, 1]

    def predict_latents(self, z: Tensor) -> Tensor:
        """Auxiliary predictor on normalised outputs: z (N, F) -> predicted absolute latent (N, A).

        aux_norm "l2": unit norm (the paper); "rms": unit RMS per coordinate (the same direction x sqrt(F))."""
        u = F.normalize(z, dim=-1)
        if self.aux_norm == "rms":
            u = u * math.sqrt(z.shape[-1])
        return self.aux_predictor(u)

    def forward(self, images_x: Tensor, images_y: Tensor, action: Tensor, n_pairs: int,
                attn_mask: Tensor) -> PairOutputs:
        """One training forward: both views through the encoder in one pass (one BatchNorm batch), then the
        transformer and the aux predictor. A plain `forward` so that DDP's hooks see it."""
        N = images_x.shape[0]
        h = self.encode(torch.cat([images_x, images_y], dim=0))  # (2N, F)
        h_x, h_y = h[:N], h[N:]
        z_x, z_y = self.forward_pairs(h_x, h_y, action, n_pairs, attn_mask)
        return PairOutputs(h_x, h_y, z_x, z_y, self.predict_latents(z_x), self.predict_latents(z_y))

    # -- evaluation path (SPEC §4) ---------------------------------------------------------------------
    def build_context(self, h_x: Tensor, h_y: Tensor, action: Tensor) -> KVCache:
        """c/2 context pairs (h_x, h_y (c/2, F), action (c/2, A), already masked by the context mode) ->
        the transformer's KV cache of the c context tokens (c may be 0)."""
        n_pairs = h_x.shape[0]
        if n_pairs == 0:
            tokens = h_x.new_zeros(0, self.feature_dim + self.action_dim)  # (0, F+A)
        else:
            tokens = self.make_tokens(h_x, h_y, action, n_pairs)[0]  # (c, F+A)
        return self.transformer.build_cache(tokens)

    def embed_queries(self, h: Tensor, action: Tensor | None, cache: KVCache) -> Tensor:
        """Query tokens [h, action or 0] (h (Q, F)) against a cached context -> z (Q, F), not normalised."""
        return self.transformer.forward_queries(self._token(h, action), cache)
