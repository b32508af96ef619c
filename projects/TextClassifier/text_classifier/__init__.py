"""Mask2Former with a fixed text-embedding classifier: the worked example of docs/EXTENDING.md.

Importing this package registers `TextClassifierTransformerDecoder` (Transformer decoders) and
`TextMaskFormer` (meta-architectures); `add_text_classifier_config(cfg)` adds its keys."""

from .config import add_text_classifier_config
from .head import TextClassifier, TextClassifierTransformerDecoder
from .meta_arch import TextMaskFormer
from .text_encoder import encode_class_names

__all__ = [
    "TextClassifier",
    "TextClassifierTransformerDecoder",
    "TextMaskFormer",
    "add_text_classifier_config",
    "encode_class_names",
]
