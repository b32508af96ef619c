"""Inference: the Python API (`Predictor`), turning raw model outputs into results
(`postprocessing`), and export to torch.export / ONNX (`export`).

`postprocessing` is used by the model itself (`MaskFormer.forward` in eval mode), so this package
imports `predictor` and `export` (which build on `mask2former.modeling`) only when one of their
names is first used; that keeps `import mask2former.modeling` free of an import cycle.
"""

import importlib

from .postprocessing import instance_inference, panoptic_inference, sem_seg_postprocess, semantic_inference

_LAZY_NAMES = {
    "Predictor": "predictor",
    "ExportableMaskFormer": "export",
    "export_onnx": "export",
    "export_torch": "export",
    "load_exported_program": "export",
    "postprocess_exported": "export",
    "run_onnx": "export",
}

__all__ = [
    "instance_inference",
    "panoptic_inference",
    "sem_seg_postprocess",
    "semantic_inference",
    *_LAZY_NAMES,
]


def __getattr__(name: str):
    if name in _LAZY_NAMES:
        module = importlib.import_module(f".{_LAZY_NAMES[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
