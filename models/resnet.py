"""Residual networks of He et al. 2015, "Deep Residual Learning for Image Recognition".

Composed as torchvision composes them (conv helpers -> blocks -> stages -> ResNet) and with
torchvision's parameter names, so a torchvision ResNet state_dict loads with strict=True.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Shortcut = Literal["A", "B", "C"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A (Sec. 3.3): identity with strided subsampling and zero-padded extra channels.

    It has no parameters, so it changes nothing in the state_dict.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_planes - in_planes

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


def make_shortcut(option: Shortcut, in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    """The shortcut of one block; None means the identity."""
    reshapes = stride != 1 or in_planes != out_planes
    if option == "A":
        return ZeroPadShortcut(in_planes, out_planes, stride) if reshapes else None
    if option == "B" and not reshapes:
        return None
    if option not in ("B", "C"):
        raise ValueError(f"shortcut must be 'A', 'B' or 'C', got {option!r}")
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; out = relu(F(x) + shortcut(x)), or relu(F(x)) for a plain block."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: Shortcut = "B",
                 residual: bool = True, stride_in_1x1: bool = False) -> None:
        super().__init__()
        del stride_in_1x1  # a basic block has no 1x1 convolution
        self.residual = residual
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = make_shortcut(shortcut, in_planes, planes, stride) if residual else None

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (Fig. 5 right).

    The paper puts the stride on the first 1x1 convolution; torchvision ("ResNet v1.5") moves it
    to the 3x3, which costs a little more compute and gains accuracy. Both are selectable.
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: Shortcut = "B",
                 residual: bool = True, stride_in_1x1: bool = False) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.residual = residual
        self.conv1 = conv1x1(in_planes, planes, stride if stride_in_1x1 else 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, 1 if stride_in_1x1 else stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(shortcut, in_planes, out_planes, stride) if residual else None

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """A stem, stages of residual blocks, and a GAP + FC head.

    stem="imagenet": 7x7/2 conv + 3x3/2 max-pool, stages of 64/128/256/512 planes (Table 1).
    stem="cifar": 3x3 conv, stages of 16/32/64 planes, 6n+2 layers (Sec. 4.2); stem_stride=2
    makes that conv strided, for inputs twice the CIFAR side at the same cost (the demo model).
    `forward_features` returns the last convolutional feature map and `forward_head` pools and
    classifies it: the seam class-activation maps need (Zhou et al. 2016).
    """

    def __init__(self, block: Block, layers: list[int], num_classes: int = 1000, in_channels: int = 3,
                 stem: Literal["imagenet", "cifar"] = "imagenet", shortcut: Shortcut = "B",
                 residual: bool = True, stride_in_1x1: bool = False, zero_init_residual: bool = False,
                 widths: tuple[int, ...] | None = None, stem_stride: int = 1) -> None:
        super().__init__()
        if widths is None:
            widths = (64, 128, 256, 512) if stem == "imagenet" else (16, 32, 64)
        if len(widths) != len(layers):
            raise ValueError(f"{len(layers)} stages need {len(layers)} widths, got {widths}")
        self.block_options = dict(shortcut=shortcut, residual=residual, stride_in_1x1=stride_in_1x1)
        self.in_planes = widths[0]
        if stem == "imagenet":
            if stem_stride != 1:
                raise ValueError("stem_stride is for the CIFAR stem; the ImageNet stem already reduces by 4")
            self.conv1 = nn.Conv2d(in_channels, self.in_planes, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = conv3x3(in_channels, self.in_planes, stem_stride)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(self.in_planes)
        self.relu = nn.ReLU(inplace=True)
        for i, (planes, blocks) in enumerate(zip(widths, layers)):
            stage = self._make_layer(block, planes, blocks, stride=1 if i == 0 else 2)
            setattr(self, f"layer{i + 1}", stage)
        self.num_stages = len(layers)
        self.num_features = self.in_planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.num_features, num_classes)
        self._init_weights(zero_init_residual)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(block(self.in_planes, planes, s, **self.block_options))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero gamma in the last BN of each residual branch makes every block start as the
        # identity (Goyal et al. 2017); meaningless for plain blocks, so only residual ones.
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)) and m.residual:
                    nn.init.zeros_(m.last_bn.weight)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def forward_features(self, x: Tensor) -> Tensor:
        return self.forward_stages(x)[-1]

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Every stage's output, the first to the last (the last is forward_features'): the
        open-world score reads all of them (training/export.py)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward_head(self, features: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(features), 1))

    def forward_cam(self, features: Tensor) -> Tensor:
        """Class-activation maps (N, classes, h, w): the FC layer applied at every position, i.e. a
        1x1 convolution. Their spatial mean is exactly the logits, since GAP and FC commute."""
        return F.conv2d(features, self.fc.weight[:, :, None, None], self.fc.bias)

    def forward(self, x: Tensor, with_cam: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """The logits; with_cam: and the CAMs, from the same pass (training on boxes fits them)."""
        features = self.forward_features(x)
        return (self.forward_head(features), self.forward_cam(features)) if with_cam else self.forward_head(features)
