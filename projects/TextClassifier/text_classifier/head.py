"""Classification by dot product with fixed class-name embeddings instead of a linear layer.

`TextClassifierTransformerDecoder` is Mask2Former's masked-attention decoder with `class_embed`
replaced by a `TextClassifier`; everything else (and every other checkpoint key) is unchanged.
Shape shorthand: B batch, Q queries, C hidden dim, D embedding dim, K classes."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mask2former.config import CfgNode
from mask2former.data import MetadataCatalog
from mask2former.modeling import TRANSFORMER_DECODER_REGISTRY, MultiScaleMaskedTransformerDecoder

from .config import text_classifier_config
from .text_encoder import encode_class_names


class TextClassifier(nn.Module):
    """Query features [B, Q, C] -> logits [B, Q, K+1]: the cosine similarity of a projection of
    each query with the K fixed class embeddings and one learned "no object" embedding, divided by
    `temperature`."""

    def __init__(self, hidden_dim: int, class_embeddings: Tensor, temperature: float):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"MODEL.TEXT_CLASSIFIER.TEMPERATURE must be positive, got {temperature}")
        num_classes, embed_dim = class_embeddings.shape
        self.proj = nn.Linear(hidden_dim, embed_dim)
        # [K, D], fixed: saved with the weights, never trained.
        self.register_buffer("class_embeddings", F.normalize(class_embeddings.float(), dim=-1))
        self.void_embedding = nn.Parameter(torch.randn(1, embed_dim) / embed_dim**0.5)  # [1, D]
        self.temperature = temperature

    def forward(self, x: Tensor) -> Tensor:
        query = F.normalize(self.proj(x), dim=-1)  # [B, Q, D]
        classes = torch.cat([self.class_embeddings, F.normalize(self.void_embedding, dim=-1)])  # [K+1, D]
        return query @ classes.T / self.temperature  # [B, Q, K+1]


class TextClassifierTransformerDecoder(MultiScaleMaskedTransformerDecoder):
    """The masked-attention decoder whose class prediction is a `TextClassifier`."""

    def __init__(self, *, class_embeddings: Tensor, temperature: float, **kwargs: Any):
        super().__init__(**kwargs)
        if class_embeddings.shape[0] != kwargs["num_classes"]:
            raise ValueError(
                f"{class_embeddings.shape[0]} class embeddings for {kwargs['num_classes']} classes "
                "(MODEL.SEM_SEG_HEAD.NUM_CLASSES)"
            )
        self.class_embed = TextClassifier(kwargs["hidden_dim"], class_embeddings, temperature)

    @classmethod
    def from_config(cls, cfg: CfgNode, in_channels: int, mask_classification: bool = True) -> dict[str, Any]:
        """The base decoder's arguments plus the class names of DATASETS.TRAIN[0], embedded with
        MODEL.TEXT_CLASSIFIER.EMBED_DIM dimensions, and MODEL.TEXT_CLASSIFIER.TEMPERATURE."""
        ret = super().from_config(cfg, in_channels, mask_classification)
        keys = text_classifier_config(cfg)
        ret["class_embeddings"] = encode_class_names(class_names(cfg), keys.EMBED_DIM)
        ret["temperature"] = keys.TEMPERATURE
        return ret


def class_names(cfg: CfgNode) -> list[str]:
    """The contiguous class names (`stuff_classes`) of DATASETS.TRAIN[0]."""
    if not cfg.DATASETS.TRAIN:
        raise ValueError("the text classifier needs DATASETS.TRAIN[0] for its class names")
    meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    names = getattr(meta, "stuff_classes", None)
    if names is None:
        raise ValueError(f"metadata of {cfg.DATASETS.TRAIN[0]!r} has no stuff_classes (class names)")
    return list(names)


@TRANSFORMER_DECODER_REGISTRY.register("TextClassifierTransformerDecoder")
def build_text_classifier_decoder(
    cfg: CfgNode, in_channels: int, mask_classification: bool = True
) -> TextClassifierTransformerDecoder:
    return TextClassifierTransformerDecoder(
        **TextClassifierTransformerDecoder.from_config(cfg, in_channels, mask_classification)
    )
