"""Mask2Former: masked-attention Mask Transformer for universal image segmentation."""

__version__ = "0.1.0"
