"""Named model builders: variants are data, `create_model(name, **kwargs)` builds one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .names import CIFAR_DEPTHS, IMAGENET_LAYERS, list_models
from .resnet import BasicBlock, Block, Bottleneck, ResNet

BLOCKS: dict[str, Block] = {"basic": BasicBlock, "bottleneck": Bottleneck}

_BUILDERS: dict[str, Callable[..., ResNet]] = {}


def _imagenet(depth: int, residual: bool) -> Callable[..., ResNet]:
    block, layers = BLOCKS[IMAGENET_LAYERS[depth][0]], IMAGENET_LAYERS[depth][1]

    def build(**kwargs: Any) -> ResNet:
        return ResNet(block, layers, stem="imagenet", residual=residual, **kwargs)

    return build


def _cifar(depth: int, residual: bool) -> Callable[..., ResNet]:
    n = (depth - 2) // 6

    def build(**kwargs: Any) -> ResNet:
        kwargs.setdefault("shortcut", "A")
        kwargs.setdefault("num_classes", 10)
        return ResNet(BasicBlock, [n] * 3, stem="cifar", residual=residual, **kwargs)

    return build


for _depth in IMAGENET_LAYERS:
    _BUILDERS[f"resnet{_depth}"] = _imagenet(_depth, residual=True)
    _BUILDERS[f"plain{_depth}"] = _imagenet(_depth, residual=False)
for _depth in CIFAR_DEPTHS:
    _BUILDERS[f"resnet{_depth}"] = _cifar(_depth, residual=True)
    _BUILDERS[f"plain{_depth}"] = _cifar(_depth, residual=False)


def create_model(name: str, **kwargs: Any) -> ResNet:
    """Build a registered model: `create_model("resnet50", num_classes=10, shortcut="C")`."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None
    return builder(**kwargs)
