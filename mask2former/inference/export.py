"""Export a built `MaskFormer` network to a `torch.export` program and to ONNX.

Only the network is exported: normalisation, padding, backbone and head, giving the last decoder
layer's class logits and mask logits. Post-processing (semantic / panoptic / instance) has
data-dependent output sizes and stays in Python: `postprocess_exported` runs
`MaskFormer.postprocess` on the exported outputs.

Shape shorthand: B batch, H, W input size, Hp, Wp input size padded to the size divisibility,
Q queries, K classes (+1 for "no object").

Deformable attention: the `torch.export` program keeps the compiled op
`torch.ops.mask2former.ms_deform_attn` when the extension is built (load such a program with
`load_exported_program`, which registers the op first). The ONNX model uses the PyTorch reference,
so the op becomes one ONNX GridSample per level (opset 16+).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.ms_deform_attn import compiled_op_available, deform_attn_implementation, load_extension
from ..modeling.meta_arch import MaskFormer
from ..structures import ImageList

__all__ = [
    "ExportableMaskFormer",
    "batch_images",
    "export_onnx",
    "export_torch",
    "load_exported_program",
    "max_abs_differences",
    "postprocess_exported",
    "run_onnx",
]

OUTPUT_NAMES = ("pred_logits", "pred_masks")
# GridSample needs 16 and LayerNormalization 17; the torch.export-based exporter writes 18 and up
# (asked for 17, it falls back to 18 because the version converter cannot lower this graph).
MIN_ONNX_OPSET = 18


def _padded_size(size: tuple[int, int], divisibility: int) -> tuple[int, int]:
    if divisibility <= 1:
        return size
    return (-(-size[0] // divisibility) * divisibility, -(-size[1] // divisibility) * divisibility)


class ExportableMaskFormer(nn.Module):
    """A `MaskFormer` as a tensor-in, tensors-out network.

    Input: images [B, 3, H, W], float pixel values in the channel order of the model's pixel_mean
    (the config's INPUT.FORMAT), not normalised. The module normalises them and pads the
    normalised batch with zeros at the bottom/right to a multiple of the size divisibility, as
    `MaskFormer.preprocess_image` does.
    Output: (pred_logits [B, Q, K+1], pred_masks [B, Q, Hp/4, Wp/4]), the last decoder layer's
    predictions, in float32.
    """

    def __init__(self, model: MaskFormer):
        super().__init__()
        if model.inference_dtype != torch.float32:
            raise ValueError(
                f"export runs in float32, but the model infers in {model.inference_dtype}; "
                "set MODEL.INFERENCE_DTYPE float32"
            )
        self.model = model
        self.eval()

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if images.dim() != 4 or images.shape[1] != self.model.pixel_mean.shape[0]:
            raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        hp, wp = _padded_size((h, w), self.model.size_divisibility)
        x = (images.float() - self.model.pixel_mean) / self.model.pixel_std  # [B, 3, H, W]
        if (hp, wp) != (h, w):
            x = F.pad(x, (0, wp - w, 0, hp - h))  # [B, 3, Hp, Wp]
        outputs = self.model.sem_seg_head(self.model.backbone(x))
        return outputs["pred_logits"], outputs["pred_masks"]

    def level_shapes(self, images: Tensor) -> list[tuple[int, int]]:
        """(H_l, W_l) of the deformable encoder's levels for this input size (runs the backbone once)."""
        h, w = images.shape[-2:]
        hp, wp = _padded_size((h, w), self.model.size_divisibility)
        probe = images.new_zeros((1, images.shape[1], hp, wp), dtype=torch.float32)
        with torch.no_grad():
            features = self.model.backbone(probe)
        pixel_decoder: Any = self.model.sem_seg_head.pixel_decoder
        names = pixel_decoder.transformer_in_features  # coarse to fine
        return [(int(features[f].shape[-2]), int(features[f].shape[-1])) for f in names]


@contextmanager
def _deform_attn_for_tracing(wrapper: ExportableMaskFormer, example: Tensor, impl: str) -> Iterator[None]:
    """Deformable attention as `impl` while tracing; the reference gets the static level sizes."""
    level_shapes = wrapper.level_shapes(example) if impl == "reference" else None
    with deform_attn_implementation(impl, level_shapes=level_shapes):
        yield


def export_torch(wrapper: ExportableMaskFormer, example: Tensor, path: str | None = None):
    """`torch.export` the wrapper for inputs shaped like `example` [B, 3, H, W] (static shapes).

    Keeps the compiled deformable-attention op when it is available for the example's device,
    otherwise traces the PyTorch reference. Saves to `path` (`.pt2`) when given.
    Returns (the ExportedProgram, the deformable-attention implementation used).
    """
    impl = "compiled" if compiled_op_available(example.device) else "reference"
    with torch.no_grad(), _deform_attn_for_tracing(wrapper, example, impl):
        program = torch.export.export(wrapper, (example,))
    if path is not None:
        torch.export.save(program, path)
    return program, impl


def load_exported_program(path: str):
    """Load a `.pt2` written by `export_torch`, registering the deformable-attention op first
    (the program calls `torch.ops.mask2former.ms_deform_attn`, which `mask2former._C` defines)."""
    if load_extension() is None:
        raise RuntimeError(
            f"{path}: the program may call torch.ops.mask2former.ms_deform_attn, but mask2former._C is not "
            "built; build it with `pip install --no-build-isolation -e .`"
        )
    return torch.export.load(path)


def export_onnx(
    wrapper: ExportableMaskFormer, example: Tensor, path: str, opset: int = MIN_ONNX_OPSET
) -> None:
    """Export the wrapper to ONNX at `path` for inputs shaped like `example` [B, 3, H, W].

    Uses the `torch.export`-based exporter (needs the `onnxscript` package) with deformable attention
    in its PyTorch formulation (grid_sample -> ONNX GridSample). Inputs: "images"; outputs:
    "pred_logits", "pred_masks". Weights go inline (models over 2 GB need external data).
    Raises if the written model's opset differs from `opset`."""
    if opset < MIN_ONNX_OPSET:
        raise ValueError(f"ONNX export needs opset >= {MIN_ONNX_OPSET}, got {opset}")
    with torch.no_grad(), _deform_attn_for_tracing(wrapper, example, "reference"):
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=["images"],
            output_names=list(OUTPUT_NAMES),
            external_data=False,
            verbose=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no ONNX program")
    written = program.model.opset_imports.get("")
    if written != opset:
        raise RuntimeError(f"asked for ONNX opset {opset}, but the exporter wrote opset {written}")
    program.save(path)


def run_onnx(path: str, images: Tensor) -> tuple[Tensor, Tensor]:
    """Run an exported ONNX model with onnxruntime's CPU provider: images [B, 3, H, W] ->
    (pred_logits [B, Q, K+1], pred_masks [B, Q, Hp/4, Wp/4]) as CPU tensors."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: images.detach().cpu().float().numpy()}
    logits, masks = session.run(list(OUTPUT_NAMES), feed)
    return torch.from_numpy(np.asarray(logits)), torch.from_numpy(np.asarray(masks))


def max_abs_differences(
    expected: Sequence[Tensor], actual: Sequence[Tensor]
) -> dict[str, tuple[float, float]]:
    """{output name: (max |expected - actual|, max |expected|)} for (pred_logits, pred_masks)."""
    result = {}
    for name, e, a in zip(OUTPUT_NAMES, expected, actual):
        if e.shape != a.shape:
            raise ValueError(f"{name}: shapes differ, expected {tuple(e.shape)}, got {tuple(a.shape)}")
        e, a = e.detach().cpu().float(), a.detach().cpu().float()
        result[name] = ((e - a).abs().max().item(), e.abs().max().item())
    return result


def batch_images(model: MaskFormer, images: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
    """Stack images [3, h_i, w_i] (pixel values) into [B, 3, H, W] for an exported network of input
    size `size` = (H, W), padding at the bottom/right with the pixel mean (zero once normalised,
    as the eager model pads)."""
    height, width = size
    batch = model.pixel_mean.new_empty((len(images), model.pixel_mean.shape[0], height, width))
    batch.copy_(model.pixel_mean.expand_as(batch))
    for out, img in zip(batch, images):
        if img.shape[-2] > height or img.shape[-1] > width:
            raise ValueError(f"image of size {tuple(img.shape[-2:])} does not fit the export size {size}")
        out[:, : img.shape[-2], : img.shape[-1]] = img.to(out)
    return batch


def postprocess_exported(
    model: MaskFormer,
    outputs: Sequence[Tensor],
    image_sizes: Sequence[tuple[int, int]],
    input_size: tuple[int, int],
    output_sizes: Sequence[tuple[int, int]] | None = None,
) -> list[dict]:
    """`MaskFormer.postprocess` applied to an exported network's outputs.

    Args:
        model: the eager model the network came from (its thresholds and switches are used).
        outputs: (pred_logits [B, Q, K+1], pred_masks [B, Q, Hp/4, Wp/4]).
        image_sizes: (h, w) of each image inside the batch before padding (see `batch_images`).
        input_size: (H, W) of the batch fed to the exported network.
        output_sizes: (height, width) to resize each result to; defaults to `image_sizes`.
    Returns:
        one dict per image, as `MaskFormer.forward` returns at inference.
    """
    logits, masks = (torch.as_tensor(t).to(model.device) for t in outputs)
    if len(image_sizes) != logits.shape[0]:
        raise ValueError(f"{len(image_sizes)} image sizes for a batch of {logits.shape[0]}")
    hp, wp = _padded_size((int(input_size[0]), int(input_size[1])), model.size_divisibility)
    # postprocess reads only the padded size of the batch tensor, so an empty [B, 0, Hp, Wp] stands in for it
    images = ImageList(
        logits.new_empty((logits.shape[0], 0, hp, wp)), [(int(h), int(w)) for h, w in image_sizes]
    )
    sizes = output_sizes if output_sizes is not None else image_sizes
    batched_inputs = [{"height": int(h), "width": int(w)} for h, w in sizes]
    with torch.no_grad():
        return model.postprocess({"pred_logits": logits, "pred_masks": masks}, batched_inputs, images)
