"""FLOP counts (FlopCounterMode) against hand counts made from the layers' shapes: 2 FLOPs per multiply-add."""

from __future__ import annotations

import torch
from torch import nn

from ctxssl_cli.model import ContextSSL
from ctxssl_cli.model.context import ContextTransformer
from ctxssl_cli.model.encoder import ConvNet
from ctxssl_cli.model.flops import count_flops, model_flops_per_pair, module_flops, transformer_flops


def test_linear_toy_against_hand_count():
    toy = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    # 5 rows x (8*16 + 16*4) multiply-adds x 2 FLOPs
    assert module_flops(toy, torch.randn(5, 8)) == 2 * 5 * (8 * 16 + 16 * 4)


def test_linear_toy_training_against_hand_count():
    toy = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    fwd = 2 * 5 * (8 * 16 + 16 * 4)
    weight_grads = 2 * 5 * (8 * 16 + 16 * 4)  # dW = dY^T X: one more matmul of each layer's size
    hidden_grad = 2 * 5 * 16 * 4  # dX of the second layer; the data (first input) needs none
    assert count_flops(toy, torch.randn(5, 8), train=True) == fwd + weight_grads + hidden_grad
    input_grad = 2 * 5 * 8 * 16
    assert count_flops(toy, torch.randn(5, 8), train=True, grad_inputs=True) == (fwd + weight_grads + hidden_grad
                                                                                + input_grad)
    assert all(p.grad is None for p in toy.parameters())  # counted on meta copies: the model is untouched


def test_conv_against_hand_count():
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)  # 8x8 -> 4x4
    assert module_flops(conv, torch.randn(1, 3, 8, 8)) == 2 * (4 * 4 * 4) * (3 * 3 * 3)
    # training on data: the weight gradient (same multiply-adds as the forward), no input gradient
    assert count_flops(conv, torch.randn(1, 3, 8, 8), train=True) == 2 * 2 * (4 * 4 * 4) * (3 * 3 * 3)


def _transformer_hand_count(in_dim, out_dim, n_layer, n_embd, T):
    """Multiply-adds x 2 of one sequence, from the layer shapes: read-in, per layer the qkv, attention output,
    MLP up and down projections and the two attention matmuls (QK^T: T x T x E, AV: T x T x E), read-out."""
    E = n_embd
    shapes = [(in_dim, E)] + n_layer * [(E, 3 * E), (E, E), (E, 4 * E), (4 * E, E)] + [(E, out_dim)]
    linear = sum(2 * T * a * b for a, b in shapes)
    attention = n_layer * 2 * (T * T * E + T * T * E)
    return linear + attention


def test_transformer_count_at_the_papers_sizes():
    # ResNet-18 features (512) + a 6-d action in, 512 out; 3 layers, 4 heads, width 2048; 64 pairs = 128 tokens
    with torch.device("meta"):  # shapes only: nothing is allocated
        t = ContextTransformer(518, 512, n_layer=3, n_head=4, n_embd=2048)
    fwd = _transformer_hand_count(518, 512, 3, 2048, 128)
    assert transformer_flops(t, 128) == fwd
    # backward: every matmul has two gradient matmuls of its own size (both operands need gradients: the
    # tokens come from the encoder), so training is exactly 3x the forward here
    assert transformer_flops(t, 128, train=True) == 3 * fwd


def test_transformer_count_of_a_small_model_and_its_linear_layers():
    torch.manual_seed(0)
    t = ContextTransformer(262, 256, n_layer=2, n_head=2, n_embd=32)
    linears = [m for m in t.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2 + 4 * 2  # read-in/out and 4 per block: the hand count covers every Linear
    T = 8
    assert transformer_flops(t, T) == _transformer_hand_count(262, 256, 2, 32, T)


def _convnet_macs(resolution):
    """Per conv stage (3x3, padding 1): output pixels x c_out x c_in x 9, from ConvNet's widths and strides."""
    macs, c_in, size = [], 3, resolution
    for c_out, stride in zip(ConvNet.widths, ConvNet.strides):
        size = (size + stride - 1) // stride
        macs.append(size * size * c_out * c_in * 9)
        c_in = c_out
    return macs


def test_model_flops_per_pair_against_hand_count():
    torch.manual_seed(0)
    model = ContextSSL("convnet", action_dim=6, n_layer=2, n_head=2, n_embd=32, aux_hidden=16).train()
    conv = _convnet_macs(32)
    # encoder training: forward + weight gradients (2 x every stage) + input gradients of all but the first
    enc = 2 * (2 * sum(conv) + sum(conv[1:]))
    n_pairs = 4
    trans = 3 * _transformer_hand_count(256 + 6, 256, 2, 32, 2 * n_pairs) / n_pairs
    aux_layers = [(256, 16), (16, 16), (16, 6)]
    aux = 3 * sum(2 * a * b for a, b in aux_layers)  # its input z needs a gradient too
    running_mean = model.encoder.features[1].running_mean.clone()
    assert model_flops_per_pair(model, 32, n_pairs) == 2 * enc + trans + 2 * aux
    assert model.encoder.training  # mode restored
    assert torch.equal(model.encoder.features[1].running_mean, running_mean)  # no BatchNorm side effect
    assert all(p.grad is None for p in model.parameters())


def test_resnet18_at_128px_counts_without_error():
    model = ContextSSL("resnet18", action_dim=6, n_layer=1, n_head=1, n_embd=32, aux_hidden=16)
    flops = model_flops_per_pair(model, 128, 4)
    # ResNet-18 is ~1.8 GFLOP multiply-adds at 224 px, so ~0.6 G at 128 px: 2 views x 3 x 2 x 0.6e9 ~ 7e9
    assert 5e9 < flops < 9e9
