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


# torchvision's ImageNet weights for the ImageNet family (IMAGENET1K_V1), by the file name it gives
# them: the part after the dash is the start of the file's SHA-256 (torchvision checks it so too).
TORCHVISION_WEIGHTS: dict[str, str] = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "resnet101": "resnet101-63fe2227.pth",
    "resnet152": "resnet152-394f9c45.pth",
}
