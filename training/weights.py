"""Starting weights for fine-tuning (`--init`): a torch state_dict (`.pth`, a rescam checkpoint or
a registry version's weights.pth), a `.safetensors` file, or a torchvision ResNet name (`resnet50`)
found in the local torch hub cache (no download: rescam runs offline)."""

from __future__ import annotations

from pathlib import Path

import torch

from models import list_models

IMAGENET_NAMES = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}  # torchvision's, trained on ImageNet


class InitError(ValueError):
    """Starting weights that cannot be found or read; the message says what to do."""


def resolve(init: str) -> tuple[str, bool]:
    """(the weights file, whether they are ImageNet weights) for `--init` as the user wrote it."""
    path = Path(init).expanduser()
    if path.is_file():
        return str(path), False
    name = init.removeprefix("torchvision:")
    if name in IMAGENET_NAMES:
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        found = sorted(cache.glob(f"{name}-*.pth"))
        if not found:
            raise InitError(f"no torchvision {name} weights in {cache}: this machine does not download them; copy "
                            f"a file such as {name}-<hash>.pth there (torchvision's name for it), or pass a file path")
        return str(found[-1]), True
    if name in list_models():
        raise InitError(f"{name} has no ImageNet weights in torchvision; pass a weights file")
    raise InitError(f"--init {init!r}: no such file, and not a torchvision ResNet ({', '.join(sorted(IMAGENET_NAMES))})")


def load_state(path: str) -> dict[str, torch.Tensor]:
    """The state_dict in a .safetensors or torch file (a rescam checkpoint's `model` entry)."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch and safetensors raise many kinds; all mean "unreadable"
        raise InitError(f"{path} is not a readable weights file: {e}") from None
    if not isinstance(state, dict):
        raise InitError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return state.get("model", state)
