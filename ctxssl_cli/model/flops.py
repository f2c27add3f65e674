"""Rough FLOP counts for throughput and MFU reports (benchmarks/); 2 FLOPs per multiply-add.

Counted: every nn.Conv2d and nn.Linear (by forward hooks on one real forward pass for the encoder,
analytically for the transformer and the aux predictor) and the attention matmuls (QK^T and AV, over the
full T x T grid, as the masked SDPA kernels compute them). Not counted: normalisation, activations, softmax,
biases, pooling: a few percent at most. Training is taken as 3x forward (backward ~ 2x forward).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ctxssl_cli.model.context import ContextTransformer


def module_flops(module: nn.Module, *inputs: Tensor) -> float:
    """Forward FLOPs of the Linear and Conv2d layers of `module` on `inputs` (one no-grad forward pass)."""
    total = 0

    def hook(m: nn.Module, _inp, out: Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Linear):
            total += 2 * out.numel() * m.in_features
        elif isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total += 2 * out.numel() * (m.in_channels // m.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return float(total)


def transformer_flops(transformer: ContextTransformer, seq_len: int) -> float:
    """Forward FLOPs of one sequence of seq_len tokens through the context transformer."""
    E, L, T = transformer.n_embd, transformer.n_layer, seq_len
    # per token: read-in, L x (qkv 3E^2 + attn proj E^2 + mlp 8E^2), read-out
    per_token = 2 * (transformer.in_dim * E + L * 12 * E * E + E * transformer.out_dim)
    attention = L * 2 * (2 * T * T * E)  # per layer: QK^T and AV, each T*T*E multiply-adds
    return float(T * per_token + attention)


def model_flops_per_pair(model, resolution: int, n_pairs_per_seq: int) -> float:
    """Training FLOPs (forward + backward ~ 3x forward) per pair of a ContextSSL model: two encoder passes,
    the pair's share of one transformer sequence, and two aux-predictor passes (on z_x and z_y)."""
    p = next(model.encoder.parameters())
    was_training = model.encoder.training
    model.encoder.eval()  # no BatchNorm running-statistics update from the probe image
    try:
        enc = module_flops(model.encoder, torch.zeros(1, 3, resolution, resolution, device=p.device, dtype=p.dtype))
    finally:
        model.encoder.train(was_training)
    trans = transformer_flops(model.transformer, 2 * n_pairs_per_seq) / n_pairs_per_seq
    aux = sum(2 * m.in_features * m.out_features for m in model.aux_predictor.modules() if isinstance(m, nn.Linear))
    return 3.0 * (2 * enc + trans + 2 * aux)
