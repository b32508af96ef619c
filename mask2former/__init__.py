"""Mask2Former: masked-attention Mask Transformer for universal image segmentation."""

from .utils.env import bound_openmp_spinning

__version__ = "0.1.0"

bound_openmp_spinning()  # before PyTorch is loaded (see its docstring)
