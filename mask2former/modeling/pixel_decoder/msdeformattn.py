"""Multi-scale deformable-attention pixel decoder (`MSDeformAttnPixelDecoder`).

A deformable Transformer encoder over the 1/32, 1/16, 1/8 backbone features, then FPN-style
lateral/output convs down to the 1/4 mask features.

Shape shorthand: B batch, C conv dim, S positions over all encoder levels, L levels,
M heads, P sampling points.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import CfgNode
from ...layers import (
    Conv2d,
    GroupNorm,
    Linear,
    PositionEmbeddingSine,
    ShapeSpec,
    c2_xavier_fill,
    get_norm,
    linear,
    ms_deform_attn,
)
from ...layers.weight_cache import inference_weights, preparing_weights_allowed
from ..registry import PIXEL_DECODER_REGISTRY


def _short_row_softmax(x: Tensor) -> Tensor:
    """Softmax over the last dim, written out: for rows of L*P (~12) values it runs ~4x faster
    on CPU than torch.softmax, whose kernel is tuned for long rows."""
    e = (x - x.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


class MSDeformAttn(nn.Module):
    """Deformable attention: each query attends to P learned points per head and level."""

    def __init__(self, d_model: int = 256, n_levels: int = 3, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = Linear(d_model, d_model)
        self.output_proj = Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Offsets start on a ring of directions per head, growing with the point index.
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([angles.cos(), angles.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]  # [M, 2]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _project_query(self, query: Tensor) -> Tensor:
        """query [B, Q, C] -> sampling offsets and attention-weight logits side by side
        [B, Q, M*L*P*2 + M*L*P]: both projections in one product (one pass over the query, one
        gradient for it) with the two layers' weights stacked; at inference stacked (and cast to the
        autocast dtype) once and kept."""
        layers = (self.sampling_offsets, self.attention_weights)
        sources = [t for layer in layers for t in (layer.weight, layer.bias)]

        def stack(dtype: torch.dtype) -> tuple[Tensor, Tensor]:
            weight = torch.cat([layer.weight for layer in layers]).to(dtype)
            return weight, torch.cat([layer.bias for layer in layers]).to(dtype)

        if not preparing_weights_allowed():  # training, tracing: stacked in the graph autograd records
            return linear(query, *stack(self.sampling_offsets.weight.dtype))
        dtype = self.sampling_offsets.weight.dtype
        if torch.is_autocast_enabled(query.device.type):
            dtype = torch.get_autocast_dtype(query.device.type)
            query = query.to(dtype)  # what autocast would do; lets `linear` take oneDNN's path
        return linear(query, *inference_weights(self, sources, dtype, lambda: stack(dtype)))

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value_in: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
    ) -> Tensor:
        """query [B, Q, C], reference_points [B, Q, L, 2] in [0, 1], value_in [B, S, C],
        spatial_shapes [L, 2] (H, W), level_start_index [L] -> [B, Q, C]"""
        b, q, _ = query.shape
        m, lv, p = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value_in).view(b, value_in.shape[1], m, self.d_model // m)  # [B, S, M, D]
        # Locations and weights at least in float32 (also under bfloat16 / float16 autocast): more exact,
        # and on the CPU far faster than bfloat16 element-wise ops over these small, broadcast shapes.
        offsets, logits = self._project_query(query).split([m * lv * p * 2, m * lv * p], -1)
        exact = torch.promote_types(offsets.dtype, torch.float32)
        offsets = offsets.to(exact).view(b, q, m, lv * p * 2)
        weights = _short_row_softmax(logits.to(exact).view(b, q, m, lv * p))
        # locations = reference + offset / (W_l, H_l), as one fused multiply-add over [B, Q, M, L*P*2]
        inv_size = 1.0 / spatial_shapes.flip(-1).to(offsets.device, exact, non_blocking=True)  # [L, 2]
        inv_size = inv_size[:, None, :].expand(lv, p, 2).reshape(lv * p * 2)
        reference = reference_points.to(exact)[:, :, None, :, None, :].expand(b, q, 1, lv, p, 2)
        locations = torch.addcmul(reference.reshape(b, q, 1, lv * p * 2), offsets, inv_size)
        locations = locations.view(b, q, m, lv, p, 2)
        weights = weights.view(b, q, m, lv, p)
        out = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)  # [B, Q, C]
        return self.output_proj(out)


class MSDeformAttnEncoderLayer(nn.Module):
    """Post-norm layer: deformable self-attention, then a ReLU feed-forward."""

    def __init__(
        self, d_model: int, dim_feedforward: int, dropout: float, n_levels: int, n_heads: int, n_points: int
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = Linear(d_model, dim_feedforward)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
    ) -> Tensor:
        """src, pos [B, S, C]; reference_points [B, S, L, 2] -> [B, S, C]"""
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index)
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout2(self.linear1(src, activation="relu")))
        return self.norm2(src + self.dropout3(ffn))


class _LayerStack(nn.Module):
    """The encoder layers as `layers.0`, `layers.1`, ... (under `encoder.`, the original's parameter names)."""

    def __init__(self, layers: Iterable[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)


class MSDeformAttnEncoder(nn.Module):
    """Stack of encoder layers over the flattened multi-scale features, with level embeddings."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        num_layers: int,
        dim_feedforward: int,
        dropout: float,
        n_levels: int,
        n_points: int,
    ):
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        nn.init.normal_(self.level_embed)
        self.encoder = _LayerStack(
            MSDeformAttnEncoderLayer(d_model, dim_feedforward, dropout, n_levels, n_heads, n_points)
            for _ in range(num_layers)
        )

    @staticmethod
    def reference_points(
        shapes: list[tuple[int, int]], batch: int, device: torch.device, dtype: torch.dtype
    ) -> Tensor:
        """Pixel centres of every level, normalised to [0, 1]: [B, S, L, 2] (x, y)."""
        points = []
        for h, w in shapes:
            ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
            xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
            ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), -1))
        ref = torch.cat(points, 0)  # [S, 2]
        return ref[None, :, None, :].expand(batch, -1, len(shapes), -1)

    def forward(self, srcs: list[Tensor], pos_embeds: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """srcs, pos_embeds: L x [B, C, H_l, W_l] -> memory [B, S, C], level shapes [(H_l, W_l)]"""
        shapes = [(int(s.shape[-2]), int(s.shape[-1])) for s in srcs]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)  # [B, S, C]
        pos = torch.cat(
            [
                p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1)
                for lvl, p in enumerate(pos_embeds)
            ],
            1,
        )  # [B, S, C]
        # On the CPU, where the op reads and checks them before launching (no device round trip).
        spatial_shapes = torch.tensor(shapes, dtype=torch.long)  # [L, 2]
        level_start_index = torch.tensor([0, *itertools.accumulate(h * w for h, w in shapes)][:-1])  # [L]
        exact = torch.promote_types(src.dtype, torch.float32)  # float32 also under bfloat16 autocast
        reference_points = self.reference_points(shapes, src.shape[0], src.device, exact)
        for layer in self.encoder.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index)
        return src, shapes


class MSDeformAttnPixelDecoder(nn.Module):
    """Backbone features -> (mask features [B, mask_dim, H/4, W/4], multi-scale features
    [B, C, H/32, W/32], [B, C, H/16, W/16], [B, C, H/8, W/8] for the Transformer decoder)."""

    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        conv_dim: int,
        mask_dim: int,
        norm: str = "GN",
        transformer_dropout: float = 0.0,
        transformer_nheads: int = 8,
        transformer_dim_feedforward: int = 1024,
        transformer_enc_layers: int = 6,
        transformer_in_features: list[str],
        transformer_n_points: int = 4,
        common_stride: int = 4,
        num_multi_scale_outputs: int = 3,
    ):
        super().__init__()
        by_stride = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in by_stride]  # fine to coarse
        for f in transformer_in_features:
            if f not in input_shape:
                raise ValueError(
                    f"deformable encoder input {f!r} is not a backbone output ({list(input_shape)})"
                )
        enc_shapes = sorted(
            ((f, input_shape[f]) for f in transformer_in_features), key=lambda kv: kv[1].stride
        )
        self.transformer_in_features = [f for f, _ in enc_shapes][::-1]  # coarse to fine: res5, res4, res3
        self.num_multi_scale_outputs = num_multi_scale_outputs
        self.input_proj = nn.ModuleList()
        for f in self.transformer_in_features:
            conv = Conv2d(input_shape[f].channels, conv_dim, kernel_size=1)  # parameters named as nn.Conv2d's
            nn.init.xavier_uniform_(conv.weight, gain=1)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
            self.input_proj.append(nn.Sequential(conv, GroupNorm(32, conv_dim)))
        self.transformer = MSDeformAttnEncoder(
            conv_dim,
            transformer_nheads,
            transformer_enc_layers,
            transformer_dim_feedforward,
            transformer_dropout,
            len(self.transformer_in_features),
            transformer_n_points,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        c2_xavier_fill(self.mask_features)
        # FPN levels below the encoder's finest input, down to common_stride.
        min_enc_stride = min(s.stride for _, s in enc_shapes)
        self.num_fpn_levels = int(math.log2(min_enc_stride) - math.log2(common_stride))
        self.fpn_features = self.in_features[: self.num_fpn_levels][::-1]
        use_bias = norm == ""
        self.lateral_convs, self.output_convs = [], []
        for idx, f in enumerate(self.fpn_features):
            lateral = Conv2d(
                input_shape[f].channels, conv_dim, kernel_size=1, bias=use_bias, norm=get_norm(norm, conv_dim)
            )
            output = Conv2d(
                conv_dim,
                conv_dim,
                kernel_size=3,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dim),
                activation=F.relu,
            )
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.add_module(f"adapter_{idx + 1}", lateral)  # checkpoint names of the original
            self.add_module(f"layer_{idx + 1}", output)
            self.lateral_convs.append(lateral)
            self.output_convs.append(output)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        """The constructor's keyword arguments from MODEL.SEM_SEG_HEAD.{IN_FEATURES, CONVS_DIM,
        MASK_DIM, NORM, TRANSFORMER_ENC_LAYERS, DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES,
        DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS, COMMON_STRIDE} and MODEL.MASK_FORMER.{DROPOUT, NHEADS}.
        As in the original, the encoder uses MASK_FORMER.NHEADS heads and a feed-forward width of 1024."""
        head = cfg.MODEL.SEM_SEG_HEAD
        missing = [f for f in head.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES {missing} are not backbone outputs ({list(input_shape)})"
            )
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            "transformer_nheads": cfg.MODEL.MASK_FORMER.NHEADS,
            "transformer_dim_feedforward": 1024,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_in_features": list(head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES),
            "transformer_n_points": head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
            "common_stride": head.COMMON_STRIDE,
        }

    def forward_features(self, features: dict[str, Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
        """features {name: [B, C_name, H, W]} -> (mask features, encoder output at the coarsest
        level, multi-scale features coarse to fine)"""
        srcs = [proj(features[f]) for proj, f in zip(self.input_proj, self.transformer_in_features)]
        pos = [self.pe_layer(s) for s in srcs]
        memory, shapes = self.transformer(srcs, pos)  # [B, S, C]
        b = memory.shape[0]
        levels = memory.split([h * w for h, w in shapes], dim=1)
        # [B, C, h, w] views in channels-last memory, with strides PyTorch recognises as channels-last
        # (N's the largest), so that the FPN's upsampling takes its channels-last kernel and returns
        # channels-last (bfloat16 [1, 256, 48, 48] to 96x96, forward and backward: 1.35 against 12.7 ms)
        out = [z.reshape(b, h, w, -1).permute(0, 3, 1, 2) for z, (h, w) in zip(levels, shapes)]
        for f, lateral, output in zip(self.fpn_features, self.lateral_convs, self.output_convs):
            cur = lateral(features[f])
            out.append(
                output(
                    cur + F.interpolate(out[-1], size=cur.shape[-2:], mode="bilinear", align_corners=False)
                )
            )
        return self.mask_features(out[-1]), out[0], out[: self.num_multi_scale_outputs]


@PIXEL_DECODER_REGISTRY.register("MSDeformAttnPixelDecoder")
def build_msdeformattn_pixel_decoder(
    cfg: CfgNode, input_shape: dict[str, ShapeSpec]
) -> MSDeformAttnPixelDecoder:
    """MSDeformAttnPixelDecoder from the config (see `MSDeformAttnPixelDecoder.from_config`)."""
    return MSDeformAttnPixelDecoder(**MSDeformAttnPixelDecoder.from_config(cfg, input_shape))
