"""Named model builders: variants are data, `create_model(name, **kwargs)` builds one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .resnet import BasicBlock, Block, Bottleneck, ResNet

# ImageNet family, Table 1 of the paper: block type and blocks per stage.
IMAGENET_DEPTHS: dict[int, tuple[Block, list[int]]] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}
# CIFAR family, Sec. 4.2: 6n+2 layers, n basic blocks in each of three stages.
CIFAR_DEPTHS = (8, 20, 32, 44, 56, 110, 1202)

_BUILDERS: dict[str, Callable[..., ResNet]] = {}


def _imagenet(depth: int, residual: bool) -> Callable[..., ResNet]:
    block, layers = IMAGENET_DEPTHS[depth]

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


for _depth in IMAGENET_DEPTHS:
    _BUILDERS[f"resnet{_depth}"] = _imagenet(_depth, residual=True)
    _BUILDERS[f"plain{_depth}"] = _imagenet(_depth, residual=False)
for _depth in CIFAR_DEPTHS:
    _BUILDERS[f"resnet{_depth}"] = _cifar(_depth, residual=True)
    _BUILDERS[f"plain{_depth}"] = _cifar(_depth, residual=False)


def _depth(name: str) -> int:
    return int(name.removeprefix("resnet").removeprefix("plain"))


def list_models() -> list[str]:
    return sorted(_BUILDERS, key=lambda n: (n.startswith("plain"), _depth(n)))


def is_cifar_model(name: str) -> bool:
    return name in _BUILDERS and _depth(name) in CIFAR_DEPTHS


def create_model(name: str, **kwargs: Any) -> ResNet:
    """Build a registered model: `create_model("resnet50", num_classes=10, shortcut="C")`."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None
    return builder(**kwargs)
