"""Registries at the seams users extend. Each maps a config name to a builder called with
`(cfg, input_shape)` (or `(cfg,)` for meta-architectures and `(cfg, input_shape)` for backbones,
where `input_shape` is the image's `ShapeSpec`). A user's own module registers itself with
`@BACKBONE_REGISTRY.register()` and is then picked by name from YAML."""

from __future__ import annotations

from typing import Any

from fvcore.common.registry import Registry as _FvRegistry


class Registry(_FvRegistry):
    """fvcore's Registry, whose `register` also takes the config name to register under:
    `@REG.register()` (the object's own name), `@REG.register("MaskFormerHead")`, or
    `REG.register(obj)`."""

    def register(self, obj: Any = None, name: str | None = None) -> Any:
        if isinstance(obj, str):
            obj, name = None, obj
        if obj is None:

            def deco(func_or_class: Any) -> Any:
                self._do_register(name or func_or_class.__name__, func_or_class)
                return func_or_class

            return deco
        self._do_register(name or obj.__name__, obj)
        return obj


def _registry(name: str, doc: str) -> Registry:
    registry = Registry(name)
    registry.__doc__ = doc
    return registry


META_ARCH_REGISTRY = _registry(
    "META_ARCH", "Whole models, chosen by MODEL.META_ARCHITECTURE; called as obj(cfg)."
)
BACKBONE_REGISTRY = _registry(
    "BACKBONE",
    "Backbones, chosen by MODEL.BACKBONE.NAME; called as obj(cfg, input_shape) and returning a "
    "Backbone (an nn.Module with output_shape() -> dict[str, ShapeSpec]).",
)
SEM_SEG_HEADS_REGISTRY = _registry(
    "SEM_SEG_HEADS", "Segmentation heads, chosen by MODEL.SEM_SEG_HEAD.NAME; called as obj(cfg, input_shape)."
)
PIXEL_DECODER_REGISTRY = _registry(
    "PIXEL_DECODER",
    "Pixel decoders, chosen by MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME; called as obj(cfg, input_shape) "
    "with the backbone's output shapes.",
)
TRANSFORMER_DECODER_REGISTRY = _registry(
    "TRANSFORMER_MODULE",
    "Transformer decoders, chosen by MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME; called as "
    "obj(cfg, in_channels, mask_classification).",
)
