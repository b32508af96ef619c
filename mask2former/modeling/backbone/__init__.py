from .backbone import Backbone
from .resnet import ResNet, build_resnet_backbone

__all__ = ["Backbone", "ResNet", "build_resnet_backbone"]
