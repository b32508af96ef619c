"""Mask2Former: masked-attention Mask Transformer for universal image segmentation."""

from .utils.env import prefer_passive_openmp_wait

__version__ = "0.1.0"

prefer_passive_openmp_wait()  # before PyTorch is loaded (see its docstring)
