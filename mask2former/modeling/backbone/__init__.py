from .backbone import Backbone
from .resnet import ResNet, build_resnet_backbone
from .swin import D2SwinTransformer

__all__ = ["Backbone", "D2SwinTransformer", "ResNet", "build_resnet_backbone"]
