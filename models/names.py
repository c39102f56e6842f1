"""The architectures rescam builds, by name, as plain data: importable without torch (the CLI's
choices, the service's checks)."""

from __future__ import annotations

# ImageNet family, Table 1 of the paper: block type and blocks per stage.
IMAGENET_LAYERS: dict[int, tuple[str, list[int]]] = {
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
    152: ("bottleneck", [3, 8, 36, 3]),
}
# CIFAR family, Sec. 4.2: 6n+2 layers, n basic blocks in each of three stages.
CIFAR_DEPTHS = (8, 20, 32, 44, 56, 110, 1202)


def depth(name: str) -> int:
    return int(name.removeprefix("resnet").removeprefix("plain"))


def list_models() -> list[str]:
    """resnetN and plainN (the same network without shortcuts) for every depth of both families."""
    names = [f"{kind}{d}" for d in (*IMAGENET_LAYERS, *CIFAR_DEPTHS) for kind in ("resnet", "plain")]
    return sorted(names, key=lambda n: (n.startswith("plain"), depth(n)))


def is_cifar_model(name: str) -> bool:
    return name in list_models() and depth(name) in CIFAR_DEPTHS
