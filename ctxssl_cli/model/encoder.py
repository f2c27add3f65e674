"""Image encoders: image (B, 3, H, W) -> feature h (B, F).

The paper uses a randomly initialised torchvision ResNet-18 with its classifier removed (512-d, SPEC §2).
Two variants make small resolutions and CPU demos practical:
- resnet18_small: the CIFAR-style stem (3x3 stride-1 conv1, no max-pool), so 32-64 px images keep enough
  spatial resolution through the four stages;
- convnet: five conv-BN-ReLU stages (~1M parameters), fast enough to pretrain on a laptop CPU.
The projector is the identity (SPEC §2), so h is also the transformer's input feature.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn
from torchvision.models import resnet18

from ctxssl_cli.errors import CtxsslError

ENCODERS = ("resnet18", "resnet18_small", "convnet")


class ConvNet(nn.Module):
    """A small CNN for CPU demos: 5 conv3x3-BN-ReLU stages, global average pool -> 256-d.

    Stage strides (2, 2, 2, 2, 1) take 64 px to 4x4 and 128 px to 8x8 before the pool, so the same weights
    work at every resolution the tool uses. The stride-2 stem makes a 64 px image cost about what a 32 px
    image costs with a stride-1 stem (about 3x faster on a 2-core CPU), while the input keeps 64 px detail.
    """

    widths = (32, 64, 128, 256, 256)
    strides = (2, 2, 2, 2, 1)

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c_out, stride in zip(self.widths, self.strides):
            layers += [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = c_in
        for m in self.modules():  # as torchvision's ResNet initialises its convolutions
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 256, H/16, W/16)
        return torch.flatten(self.pool(x), 1)  # (B, 256)


def _resnet18(small_stem: bool) -> nn.Module:
    net = resnet18(weights=None)  # random init, never a download
    if small_stem:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()  # classifier removed: forward returns the pooled 512-d feature
    return net


def build_encoder(name: str, channels_last: bool = False) -> tuple[nn.Module, int]:
    """Build encoder `name` (one of ENCODERS); returns (module, feature_dim).

    channels_last converts the weights to NHWC memory format (faster convolutions on recent GPUs); the
    caller then feeds channels_last images as well (ContextSSL.encode does).
    """
    if name == "resnet18":
        module, dim = _resnet18(small_stem=False), 512
    elif name == "resnet18_small":
        module, dim = _resnet18(small_stem=True), 512
    elif name == "convnet":
        module = ConvNet()
        dim = module.out_dim
    else:
        close = difflib.get_close_matches(str(name), ENCODERS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise CtxsslError(f"unknown encoder {name!r}", f"{hint}choose one of: {', '.join(ENCODERS)}")
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    return module, dim
