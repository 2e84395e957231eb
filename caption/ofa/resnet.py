"""The image embedder: a ResNet stem plus stages 1-3 (stride 16, 1024 channels out).

Module names (``conv1``, ``bn1``, ``layer{1,2,3}.{i}.conv{1,2,3}``, ``downsample.{0,1}``) are the ones
the official checkpoints use under ``encoder.embed_images``. Bottlenecks stride in the 3x3 conv
(ResNet v1.5). Drop-path is a training-only identity and is omitted. OFA keeps its batch norms frozen, so
for inference ``fold_batchnorm`` merges each into the convolution before it (one fewer pass over every
activation map); the state dict then no longer has the ``bn`` keys, so fold after loading, never before.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    conv.weight.copy_(conv.weight.double() * scale[:, None, None, None])
    if conv.bias is not None:
        shift = shift + conv.bias.double() * scale
    conv.bias = nn.Parameter(shift.to(conv.weight.dtype), requires_grad=False)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def fold_batchnorm(self) -> None:
        for i in (1, 2, 3):
            _fold(getattr(self, f"conv{i}"), getattr(self, f"bn{i}"))
            setattr(self, f"bn{i}", nn.Identity())
        if self.downsample is not None:
            _fold(self.downsample[0], self.downsample[1])
            self.downsample[1] = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(identity + y)


class ResNetEmbed(nn.Module):
    """``(B, 3, S, S)`` pixels -> ``(B, 1024, S/16, S/16)`` features."""

    out_channels = 1024

    def __init__(self, layers: tuple[int, int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._inplanes = 64
        self.layer1 = self._stage(64, layers[0], 1)
        self.layer2 = self._stage(128, layers[1], 2)
        self.layer3 = self._stage(256, layers[2], 2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def fold_batchnorm(self) -> "ResNetEmbed":
        """Merge every (frozen) batch norm into its convolution, in place; eval only."""
        if self.training:
            raise RuntimeError("fold_batchnorm is for inference: call .eval() first (training updates BN statistics)")
        if isinstance(self.bn1, nn.BatchNorm2d):
            _fold(self.conv1, self.bn1)
            self.bn1 = nn.Identity()
            for block in self.modules():
                if isinstance(block, Bottleneck):
                    block.fold_batchnorm()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))
