"""FLOP counts for throughput and MFU reports (benchmarks/), by torch.utils.flop_counter.FlopCounterMode.

Each count runs the real module (its own forward, and for training its backward) under FlopCounterMode, on
"meta" copies of its parameters, buffers and inputs: shapes only, so nothing is computed, the model is not
touched (no gradients, no BatchNorm statistics) and paper-sized models cost nothing to count. On the meta
device scaled_dot_product_attention takes its math path, whose matmuls FlopCounterMode counts, over the full
T x T grid as the masked SDPA kernels compute it, whichever device the model lives on.

What FlopCounterMode counts: matmuls (Linear, attention QK^T and AV) and convolutions, 2 FLOPs per
multiply-add. Not counted: normalisation, activations, softmax, biases, pooling (a few percent at most).
Training FLOPs are measured, forward plus backward, not taken as 3x forward: the backward computes gradients
for every parameter and for every input that needs one (the transformer's and the aux predictor's inputs come
from the encoder; the images need none, so the first convolution has no input gradient and the encoder's
training count is a little under 3x its forward).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from ctxssl_cli.model.context import ContextTransformer, pair_attention_mask


def _meta(t: Tensor, requires_grad: bool = False) -> Tensor:
    return torch.empty_like(t, device="meta").requires_grad_(requires_grad)


def count_flops(module: nn.Module, *inputs: Tensor, train: bool = False, grad_inputs: bool = False) -> float:
    """FLOPs of module(*inputs), as FlopCounterMode counts them, on meta copies (the module is not changed).

    train: forward and backward (gradients for every parameter that requires one, and, with grad_inputs, for
    every floating-point input); otherwise the forward alone. The module runs in eval mode for the count
    (BatchNorm and dropout are not counted either way; eval avoids BatchNorm's batch-size check) and is left
    in the mode it was in.
    """
    state = {n: _meta(p, p.requires_grad and train) for n, p in module.named_parameters()}
    state.update({n: _meta(b) for n, b in module.named_buffers()})
    args = tuple(_meta(x, train and grad_inputs and x.is_floating_point()) for x in inputs)
    was_training = module.training
    module.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(train):
            out = functional_call(module, state, args)
            if train:
                out.sum().backward()
    finally:
        module.train(was_training)
    return float(counter.get_total_flops())


def module_flops(module: nn.Module, *inputs: Tensor) -> float:
    """Forward FLOPs of `module` on `inputs`."""
    return count_flops(module, *inputs)


def transformer_flops(transformer: ContextTransformer, seq_len: int, train: bool = False) -> float:
    """FLOPs of one sequence of seq_len tokens through the context transformer (forward; with train, forward
    and backward, the tokens needing gradients as in training)."""
    p = transformer.read_in.weight
    tokens = torch.zeros(1, seq_len, transformer.in_dim, dtype=p.dtype)  # (1, T, in_dim)
    mask = pair_attention_mask(1, seq_len // 2, 0.0, None)  # (1, T, T); its values do not change the count
    return count_flops(transformer, tokens, mask, train=train, grad_inputs=True)


def model_flops_per_pair(model, resolution: int, n_pairs_per_seq: int) -> float:
    """Training FLOPs (forward + backward, measured) per pair of a ContextSSL model: two encoder passes, the
    pair's share of one transformer sequence, and two aux-predictor passes (on z_x and z_y)."""
    p = next(model.encoder.parameters())
    image = torch.zeros(1, 3, resolution, resolution, dtype=p.dtype)  # (1, 3, R, R); data: no gradient
    enc = count_flops(model.encoder, image, train=True)
    trans = transformer_flops(model.transformer, 2 * n_pairs_per_seq, train=True) / n_pairs_per_seq
    z = torch.zeros(1, model.feature_dim, dtype=p.dtype)  # (1, F): the transformer's output for one view
    aux = count_flops(model.aux_predictor, z, train=True, grad_inputs=True)
    return 2 * enc + trans + 2 * aux
