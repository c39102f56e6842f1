"""ResNet architectures (He et al. 2015). Pure torch modules, no I/O."""

from .registry import create_model, is_cifar_model, list_models
from .resnet import BasicBlock, Bottleneck, ResNet, ZeroPadShortcut

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "ZeroPadShortcut", "create_model", "is_cifar_model",
           "list_models"]
