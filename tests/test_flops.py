"""The rough FLOP counter used by the benchmarks."""

from __future__ import annotations

import torch
from torch import nn

from ctxssl_cli.model import ContextSSL
from ctxssl_cli.model.flops import model_flops_per_pair, module_flops, transformer_flops


def test_linear_toy_against_hand_count():
    toy = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    # 5 rows x (8*16 + 16*4) multiply-adds x 2 FLOPs
    assert module_flops(toy, torch.randn(5, 8)) == 2 * 5 * (8 * 16 + 16 * 4)


def test_conv_against_hand_count():
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)  # 8x8 -> 4x4
    assert module_flops(conv, torch.randn(1, 3, 8, 8)) == 2 * (4 * 4 * 4) * (3 * 3 * 3)


def test_transformer_formula_matches_hooks_plus_attention():
    torch.manual_seed(0)
    model = ContextSSL("convnet", action_dim=6, n_layer=2, n_head=2, n_embd=32, aux_hidden=16)
    T = 8
    linear = module_flops(model.transformer, torch.randn(1, T, 262), torch.ones(1, T, T, dtype=torch.bool))
    attention = 2 * 2 * (2 * T * T * 32)  # layers x (QK^T + AV) x 2*T*T*E
    assert transformer_flops(model.transformer, T) == linear + attention


def test_model_flops_per_pair_composition():
    torch.manual_seed(0)
    model = ContextSSL("convnet", action_dim=6, n_layer=2, n_head=2, n_embd=32, aux_hidden=16).train()
    enc = module_flops(model.encoder.eval(), torch.zeros(1, 3, 32, 32))
    model.train()
    aux = 2 * (256 * 16 + 16 * 16 + 16 * 6)
    expected = 3 * (2 * enc + transformer_flops(model.transformer, 8) / 4 + 2 * aux)
    running_mean = model.encoder.features[1].running_mean.clone()
    assert model_flops_per_pair(model, 32, 4) == expected
    assert model.encoder.training  # mode restored
    assert torch.equal(model.encoder.features[1].running_mean, running_mean)  # no BatchNorm side effect
