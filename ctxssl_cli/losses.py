"""ContextSSL's losses (SPEC §2 "Loss"), as pure functions.

- `info_nce`: NT-Xent (SimCLR, Chen et al. 2020) over all 2N outputs of a step: z(x_k) and z(y_k) are
  positives, every other output of the (global) batch is a negative; cosine similarity / temperature 0.1,
  optionally with the published code's clamp of the cosines at 1e-7.
- `aux_loss`: MSE of the auxiliary predictor's absolute-latent prediction, on the revealed components only.
Both compute in float32 whatever the input precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

NCE_CLAMP_MIN = 1e-7  # the published nt_xent's floor on cosine similarities


def info_nce(z_x: Tensor, z_y: Tensor, temperature: float = 0.1, all_x: Tensor | None = None,
             all_y: Tensor | None = None, offset: int = 0, clamp: bool = False) -> Tensor:
    """NT-Xent of the local pairs (z_x, z_y), each (N, F), against the global batch (all_x, all_y).

    Row i of the 2N local outputs [z_x; z_y] has its partner as the positive and every other one of the
    2*N_global outputs [all_x; all_y] (itself excluded) as negatives. Returns the mean over the 2N local
    rows.

    Distributed use: all_x/all_y are the (N_global, F) gathers of every rank's z_x/z_y, with this rank's
    rows at [offset, offset + N). Gather them with a differentiable all-gather whose backward sums the
    gradients over ranks (torch.distributed.nn.functional.all_gather); DDP's gradient averaging then gives
    exactly the gradients of one large batch (the mean of the ranks' losses is the large batch's loss, for
    equal local batch sizes). By default all_* are the local tensors and offset is 0.

    clamp: the published NT-Xent's `(cos).clamp(min=1e-7) / t`: every cosine below 1e-7 (negatives and
    positives alike) becomes 1e-7, so it adds the constant exp(1e-7 / t) to the denominator and passes no
    gradient. The train.nce_clamp default; False is the plain NT-Xent.
    """
    if (all_x is None) != (all_y is None):
        raise ValueError("pass both all_x and all_y, or neither")
    if all_x is None:
        all_x, all_y = z_x, z_y
    n, n_global = z_x.shape[0], all_x.shape[0]
    if z_y.shape != z_x.shape or all_y.shape != all_x.shape or not 0 <= offset <= n_global - n:
        raise ValueError(f"bad shapes: z_x {tuple(z_x.shape)}, z_y {tuple(z_y.shape)}, all_x {tuple(all_x.shape)}, "
                         f"all_y {tuple(all_y.shape)}, offset {offset}")
    q = F.normalize(torch.cat([z_x, z_y]).float(), dim=1)  # (2n, F) local rows
    k = F.normalize(torch.cat([all_x, all_y]).float(), dim=1)  # (2G, F) global columns
    cos = q @ k.T  # (2n, 2G)
    if clamp:
        cos = cos.clamp(min=NCE_CLAMP_MIN)
    logits = cos / temperature
    local = torch.arange(n, device=q.device) + offset  # global index of each local pair
    self_col = torch.cat([local, local + n_global])  # (2n,) column holding the row itself
    pos_col = torch.cat([local + n_global, local])  # (2n,) x_k <-> y_k
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[torch.arange(2 * n, device=q.device), self_col] = True
    logits = logits.masked_fill(is_self, float("-inf"))
    return F.cross_entropy(logits, pos_col)


def aux_loss(pred: Tensor, target: Tensor, revealed: Tensor) -> Tensor:
    """Mean squared error over the revealed components only.

    pred, target (N, A); revealed (A,) bool (or anything broadcastable to (N, A)). Hidden components
    contribute neither to the value nor to the gradient; with nothing revealed the result is a zero that
    is still connected to the graph (so backward works and gives zero gradients). No host sync.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    mask = revealed.to(device=pred.device, dtype=torch.bool).expand_as(pred)  # (N, A)
    diff = torch.where(mask, pred.float() - target.float(), 0.0)  # (N, A); hidden entries exactly 0, even NaN
    return diff.square().sum() / mask.sum().clamp_min(1)
