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

import hashlib
import io
import json
import pickle
import re
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint.atomic import atomic_save, atomic_write
from ..checkpoint.errors import CheckpointError
from ..checkpoint.integrity import record_sha256, recorded_sha256, sha256_path, verify_sha256
from ..layers.extension import compiled_op_available, load_extension
from ..layers.ms_deform_attn import deform_attn_implementation
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
        atomic_write(path, lambda f: torch.export.save(program, f))  # never a half-written .pt2
        record_sha256(path)
    return program, impl


def load_exported_program(path: str):
    """Load a `.pt2` written by `export_torch`, registering the deformable-attention op first
    (the program calls `torch.ops.mask2former.ms_deform_attn`, which `mask2former._C` defines).

    Never unpickles code: `torch.export.load` unpickles some members with `weights_only=False`
    (tensors flagged `use_pickle`, custom and opaque objects, legacy members, sample inputs that
    `weights_only=True` cannot read), so the archive is checked first and refused
    (`CheckpointError`) unless every member is one that loads without such a pickle. The file is
    read once, checked against its recorded SHA-256 (`<path>.sha256`, written by `export_torch`),
    and the checked bytes are what gets loaded."""
    if load_extension() is None:
        raise RuntimeError(
            f"{path}: the program may call torch.ops.mask2former.ms_deform_attn, but mask2former._C is not "
            "built; build it with `pip install --no-build-isolation -e .`"
        )
    with open(path, "rb") as f:
        data = f.read()
    expected = recorded_sha256(path)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(
            f"{path} is corrupt: its SHA-256 differs from the one recorded in {sha256_path(path)} when it was written"
        )
    _check_program_archive(data, path)
    return torch.export.load(io.BytesIO(data))


# Members of a `torch.export.save` archive (below its root folder) that load without unpickling
# code; `sample_inputs` is a torch pickle, checked separately with weights_only=True.
_PROGRAM_MEMBERS = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/\w+\.json|data/weights/\w+_weights_config\.json|data/constants/\w+_constants_config\.json"
    r"|data/weights/weight_\d+|data/constants/tensor_\d+|data/sample_inputs/\w+\.pt|extra/[^/]+)"
)
_RAW_TENSOR_NAME = re.compile(r"(weight|tensor)_\d+")


def _check_program_archive(data: bytes, path: str) -> None:
    """Refuse (CheckpointError naming `path` and the member) an archive `torch.export.load` would
    unpickle code from; see `load_exported_program`."""

    def refuse(why: str) -> CheckpointError:
        return CheckpointError(
            f"refused to load {path}: {why}. Only programs saved by torch.export.save with raw tensors are "
            "loaded, because other members are unpickled with weights_only=False and could run code"
        )

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
            roots = {name.split("/", 1)[0] for name in names}
            if len(roots) != 1 or any("/" not in name for name in names):
                raise refuse("not a torch.export archive with one root folder (an older format?)")
            root = roots.pop() + "/"
            for name in names:
                member = name[len(root) :]
                if not _PROGRAM_MEMBERS.fullmatch(member):
                    raise refuse(f"unexpected member {name}")
                if member.endswith("_config.json"):
                    _check_payload_config(archive.read(name), name, refuse)
                elif member.startswith("data/sample_inputs/"):
                    try:
                        torch.load(io.BytesIO(archive.read(name)), map_location="cpu", weights_only=True)
                    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
                        raise refuse(f"member {name} is not plain tensors ({e})") from None
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"cannot read {path} as an exported program: {e}") from None


def _check_payload_config(text: bytes, name: str, refuse) -> None:
    try:
        entries = json.loads(text)["config"]
        for fqn, meta in entries.items():
            if meta["use_pickle"] is not False or not _RAW_TENSOR_NAME.fullmatch(meta["path_name"]):
                raise refuse(f"{name} stores {fqn!r} as a pickle ({meta['path_name']})")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise refuse(f"{name} is not a payload config ({type(e).__name__}: {e})") from None


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
    # one self-contained file (an external-data file would be named after the temporary file)
    atomic_save(path, lambda tmp: program.save(tmp, external_data=False))  # never a half-written .onnx
    record_sha256(path)


def run_onnx(path: str, images: Tensor) -> tuple[Tensor, Tensor]:
    """Run an exported ONNX model with onnxruntime's CPU provider: images [B, 3, H, W] ->
    (pred_logits [B, Q, K+1], pred_masks [B, Q, Hp/4, Wp/4]) as CPU tensors. The file is checked
    against its recorded SHA-256 (`<path>.sha256`, written by `export_onnx`) first."""
    import onnxruntime

    verify_sha256(path)
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
