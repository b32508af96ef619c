from .image_list import ImageList
from .instances import Boxes, Instances

__all__ = ["Boxes", "ImageList", "Instances"]
