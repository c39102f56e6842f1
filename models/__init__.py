"""ResNet architectures (He et al. 2015). Pure torch modules, no I/O.

The names (`list_models`, `is_cifar_model`) import without torch; the modules load torch when
first used, so that the CLI's serving commands never do."""

from .names import is_cifar_model, list_models

_TORCH = {"BasicBlock": "resnet", "Bottleneck": "resnet", "ResNet": "resnet", "ZeroPadShortcut": "resnet",
          "create_model": "registry"}


def __getattr__(name: str):
    if name in _TORCH:
        import importlib

        return getattr(importlib.import_module(f".{_TORCH[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BasicBlock", "Bottleneck", "ResNet", "ZeroPadShortcut", "create_model", "is_cifar_model",
           "list_models"]
