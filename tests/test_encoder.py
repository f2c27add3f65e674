"""Image encoders: names, feature dimensions, resolutions, stems."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctxssl_cli.errors import CtxsslError
from ctxssl_cli.model.encoder import ENCODERS, build_encoder

CASES = [("convnet", 32), ("convnet", 64), ("convnet", 128), ("resnet18_small", 32), ("resnet18_small", 64),
         ("resnet18", 64)]  # resnet18 at 64 only: it is the slow one


@pytest.mark.parametrize("name,res", CASES)
def test_encoder_output_shape(name, res):
    torch.manual_seed(0)
    enc, dim = build_encoder(name)
    assert dim == {"resnet18": 512, "resnet18_small": 512, "convnet": 256}[name]
    h = enc.eval()(torch.randn(2, 3, res, res))
    assert h.shape == (2, dim) and torch.isfinite(h).all()


def test_all_encoders_covered():
    assert {name for name, _ in CASES} == set(ENCODERS)


def test_unknown_encoder_lists_the_choices():
    with pytest.raises(CtxsslError) as err:
        build_encoder("resnet81")
    msg = str(err.value)
    assert "resnet81" in msg and all(name in msg for name in ENCODERS) and "did you mean 'resnet18'" in msg


def test_resnet_stems():
    big, _ = build_encoder("resnet18")
    small, _ = build_encoder("resnet18_small")
    assert big.conv1.kernel_size == (7, 7) and big.conv1.stride == (2, 2) and isinstance(big.maxpool, nn.MaxPool2d)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1) and isinstance(small.maxpool, nn.Identity)
    assert isinstance(big.fc, nn.Identity) and isinstance(small.fc, nn.Identity)


def test_channels_last_same_output():
    torch.manual_seed(0)
    enc, _ = build_encoder("convnet")
    torch.manual_seed(0)
    enc_cl, _ = build_encoder("convnet", channels_last=True)
    assert enc_cl.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32)
    out_cl = enc_cl.eval()(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(enc.eval()(x), out_cl, atol=1e-5)


def test_encoders_are_randomly_initialised_and_trainable():
    torch.manual_seed(0)
    a, _ = build_encoder("convnet")
    torch.manual_seed(1)
    b, _ = build_encoder("convnet")
    assert not torch.equal(a.features[0].weight, b.features[0].weight)
    a(torch.randn(4, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in a.parameters())
