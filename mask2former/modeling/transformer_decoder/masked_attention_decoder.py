"""Masked-attention Transformer decoder (`MultiScaleMaskedTransformerDecoder`).

Learnable query features predict masks before the first layer; each layer then runs
cross-attention masked to the previous prediction's foreground (sigmoid >= 0.5), self-attention
and a feed-forward network, round-robin over the 1/32, 1/16, 1/8 feature scales. Every layer's
prediction is returned for deep supervision.

Shape shorthand: B batch, Q queries, C hidden dim, K classes, M heads, HW positions of a scale,
H, W mask-feature size (1/4 of the padded image).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import CfgNode
from ...layers import Linear, PositionEmbeddingSine, c2_xavier_fill, linear
from ...layers.extension import compiled_op_available
from ...layers.weight_cache import (
    cpu_autograd_records,
    graph_capture_active,
    inference_weights,
    preparing_weights_allowed,
)
from ..registry import TRANSFORMER_DECODER_REGISTRY


def multi_head_attention(
    mha: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None
) -> Tensor:
    """What `mha(query, key, value, attn_mask=attn_mask, need_weights=False)[0]` computes, with the
    projections through `linear` (oneDNN in float32 CPU inference) and one attention call (the compiled
    CPU op where `_compiled_attention_applies`, else SDPA).
    query [Lq, B, C], key/value [Lk, B, C], attn_mask bool [B, 1, Lq, Lk] (True = blocked; the same
    for every head, which SDPA on the CPU runs ~10x faster than a mask repeated per head) -> [Lq, B, C]"""
    lq, b, c = query.shape
    lk, m = key.shape[0], mha.num_heads
    self_attention = key is query  # q and k from one product
    in_w, in_b, out_w, out_b = _projection_weights(mha, query)
    if torch.is_autocast_enabled(query.device.type):  # in training: the in-projection cast once, not per part
        dtype = torch.get_autocast_dtype(query.device.type)
        in_w, in_b = in_w.to(dtype), in_b.to(dtype)
    if in_w.dtype != query.dtype:  # under autocast: inputs in its dtype, as F.linear would cast them
        query, value = query.to(in_w.dtype), value.to(in_w.dtype)
        key = query if self_attention else key.to(in_w.dtype)
    # one split of the in-projection (its backward is one concatenation, not a zero-filled copy per slice)
    parts = [2 * c, c] if self_attention else [c, c, c]
    *w_in, w_v = in_w.split(parts)
    *b_in, b_v = in_b.split(parts)
    if self_attention:
        q, k = linear(query, w_in[0], b_in[0]).chunk(2, -1)  # 2 x [Lq, B, C]
    else:
        q, k = linear(query, w_in[0], b_in[0]), linear(key, w_in[1], b_in[1])
    q = q.view(lq, b, m, c // m).permute(1, 2, 0, 3)  # [B, M, Lq, D]
    k = k.view(lk, b, m, c // m).permute(1, 2, 0, 3)  # [B, M, Lk, D]
    v = linear(value, w_v, b_v).view(lk, b, m, c // m).permute(1, 2, 0, 3)  # [B, M, Lk, D]
    allowed = None if attn_mask is None else ~attn_mask  # [B, 1, Lq, Lk]
    dropout = mha.dropout if mha.training else 0.0
    if _compiled_attention_applies(q, dropout):
        out = torch.ops.mask2former.attention(q, k, v, allowed, q.shape[-1] ** -0.5)[0]  # [B, M, Lq, D]
    elif _attention_backward_faster_in_float32(q):
        with torch.autocast("cpu", enabled=False):  # autocast would run it in bfloat16 again
            out = F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask=allowed, dropout_p=dropout
            ).to(q.dtype)  # [B, M, Lq, D]
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)  # [B, M, Lq, D]
    return linear(out.permute(2, 0, 1, 3).reshape(lq, b, c), out_w, out_b)


def _compiled_attention_applies(q: Tensor, dropout: float) -> bool:
    """Whether the attention runs in the compiled `mask2former::attention` (layers/csrc/cpu/attention_cpu.cpp):
    on the CPU, float32 or bfloat16, without dropout and when nothing traces or compiles the model (which
    keep SDPA, a portable operator). At this decoder's sizes (100 queries, 8 heads of 32, 100-2304 keys) it
    took 0.35-0.65x SDPA's time forward, 0.45-0.7x forward and backward in float32, and in bfloat16
    training 0.35-0.65x the float32 SDPA that the cast below falls back to (1 and 2 threads of this
    project's AMD development machine, tools/benchmark_attention.py)."""
    return (
        q.device.type == "cpu"
        and q.dtype in (torch.float32, torch.bfloat16)
        and dropout == 0.0
        and not graph_capture_active()
        and compiled_op_available("cpu")
    )


def _attention_backward_faster_in_float32(q: Tensor) -> bool:
    """Whether attention that autograd records (training) runs faster in float32 than in q's bfloat16:
    on a CPU without AMX tiles, PyTorch's bfloat16 attention backward took 1.2-3.3x as long as the
    float32 one at this decoder's sizes (100 queries, 8 heads of 32, 100-2304 keys; AVX-512 bf16
    CPU, one thread), more than the casts cost. Forward-only attention is no faster in float32."""
    return (
        q.dtype == torch.bfloat16
        and q.device.type == "cpu"
        and q.requires_grad
        and torch.is_grad_enabled()
        and not torch.cpu._is_amx_tile_supported()
    )


def _projection_weights(mha: nn.MultiheadAttention, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """in_proj weight and bias, out_proj weight and bias; at inference under autocast cast once to its
    dtype and kept (not cast on every call, as F.linear under autocast would)."""
    weights = (mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight, mha.out_proj.bias)
    if not (torch.is_autocast_enabled(x.device.type) and preparing_weights_allowed()):
        return weights
    dtype = torch.get_autocast_dtype(x.device.type)
    return inference_weights(mha, weights, dtype, lambda: tuple(w.to(dtype) for w in weights))


def _mask_product(embed: Tensor, features: Tensor) -> Tensor:
    """einsum("bqc,bchw->bqhw", embed, features) -> [B, Q, H, W]. On the CPU with no gradient recorded
    (and nothing tracing), each image is one `linear` that reads the features as an [HW, C] view
    (transposed for channel-first features, plain for channels-last ones): oneDNN's product, where
    einsum's batched one runs on MKL (1.1 against 3.0 ms for R50's masks at 384x384 in float32 on 2
    threads of this project's AMD development machine)."""
    if embed.device.type != "cpu" or not preparing_weights_allowed():
        return torch.einsum("bqc,bchw->bqhw", embed, features)
    b, _, h, w = features.shape
    per_image = [linear(e, f.flatten(1).t()) for e, f in zip(embed, features)]  # B x [Q, HW]
    stacked = per_image[0].unsqueeze(0) if b == 1 else torch.stack(per_image)  # [B, Q, HW]
    return stacked.view(b, -1, h, w)


class _MaskLogitsSparseBackward(torch.autograd.Function):
    """einsum("bqc,bchw->bqhw", embed, features) for the embeddings of several decoder layers, whose
    backward multiplies only the queries whose mask gradient is not all zero. In training only the
    matched queries' masks reach the loss (a few of 100 per layer), so the backward's products shrink
    to those rows, and all layers' rows go into one product per image for each gradient: the feature
    gradient is written once, not once per layer and then summed. The result is the same: an all-zero
    gradient row adds exactly nothing to either gradient (unless embed or features hold inf or NaN,
    where the dense product would give NaN). Reading the rows needs the gradient's values on the host:
    used on the CPU only."""

    @staticmethod
    def forward(
        ctx, computed: tuple[Tensor, ...] | None, features: Tensor, *embeds: Tensor
    ) -> tuple[Tensor, ...]:
        """features [B, C, H, W], embeds L x [B, Q, C] (the same dtype) -> L x [B, Q, H, W]; the
        products `computed` (made without gradient, from the same tensors) are returned as they are."""
        ctx.save_for_backward(features, *embeds)
        ctx.set_materialize_grads(False)  # a layer whose masks no loss reads gets None: nothing to do
        if computed is not None:
            return computed
        return tuple(_mask_product(embed, features) for embed in embeds)

    @staticmethod
    def backward(ctx, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        features, *embeds = ctx.saved_tensors
        if all(grad is None for grad in grads):
            return None, None, *(None for _ in embeds)
        b, channels, h, w = features.shape
        flat = features.flatten(2)  # [B, C, HW]
        # the feature gradient in the features' layout: [HW, C] per image for channels-last features
        channels_last = (
            features.is_contiguous(memory_format=torch.channels_last) and not features.is_contiguous()
        )
        wants_embed = ctx.needs_input_grad[2:]
        grad_embeds = [torch.zeros_like(e) if wanted else None for e, wanted in zip(embeds, wants_embed)]
        layers = [
            (grad.reshape(b, -1, h * w).to(features.dtype), embed, grad_embed)  # [B, Q, HW], ...
            for grad, embed, grad_embed in zip(grads, embeds, grad_embeds)
            if grad is not None
        ]
        active = [grad.any(-1) for grad, _, _ in layers]  # L x [B, Q]: rows with a gradient (not 0 or -0)
        grad_features = []  # per image [C, HW] or [HW, C], each written once by its product (no zero fill)
        for i in range(b):
            rows = [a[i].nonzero().squeeze(1) for a in active]  # L x [N_l]
            g = torch.cat([grad[i, r] for (grad, _, _), r in zip(layers, rows)])  # [N, HW]
            if any(grad_embed is not None for _, _, grad_embed in layers) and g.shape[0]:
                grad_rows = linear(g, flat[i]).split([r.numel() for r in rows])  # [N, HW] x [C, HW]^T
                for (_, _, grad_embed), r, grad_r in zip(layers, rows, grad_rows):
                    if grad_embed is not None:
                        grad_embed[i, r] = grad_r
            if ctx.needs_input_grad[1]:
                e = torch.cat([embed[i, r] for (_, embed, _), r in zip(layers, rows)])  # [N, C]
                grad_features.append(_feature_gradient(e, g, channels_last, (channels, h * w)))
        if not ctx.needs_input_grad[1]:
            return None, None, *grad_embeds
        stacked = grad_features[0].unsqueeze(0) if b == 1 else torch.stack(grad_features)
        if channels_last:  # [B, HW, C] -> [B, C, H, W] in channels-last memory
            return None, stacked.view(b, h, w, -1).permute(0, 3, 1, 2), *grad_embeds
        return None, stacked.view(features.shape), *grad_embeds  # [B, C, HW] -> [B, C, H, W]


def _feature_gradient(
    embed_rows: Tensor, grad_rows: Tensor, channels_last: bool, shape: tuple[int, int]
) -> Tensor:
    """One image's feature gradient from its active queries: embed_rows [N, C], grad_rows [N, HW] ->
    [HW, C] for channels-last features, else [C, HW]; zeros of that shape without active queries."""
    channels, positions = shape
    if not embed_rows.shape[0]:
        return grad_rows.new_zeros((positions, channels) if channels_last else (channels, positions))
    if channels_last:  # [HW, N] x [C, N]^T -> [HW, C]
        return linear(grad_rows.T.contiguous(), embed_rows.T.contiguous())
    return linear(embed_rows.T.contiguous(), grad_rows.T.contiguous())  # [C, N] x [HW, N]^T -> [C, HW]


def _sparse_backward_applies(embeds: list[Tensor], features: Tensor) -> bool:
    """Whether autograd records the mask products on the CPU, with nothing tracing or compiling: where
    `mask_logits` runs `_MaskLogitsSparseBackward`."""
    return cpu_autograd_records(features, *embeds)


def layer_mask_logits(embed: Tensor, features: Tensor) -> Tensor:
    """One decoder layer's mask logits, made in the decoder's loop (the next layer's attention mask needs
    them), for `mask_logits(..., computed=...)` after the loop: without gradient where its sparse backward
    takes them, else as `mask_logits` makes them (recorded by autograd where it records)."""
    if _sparse_backward_applies([embed], features):
        with torch.no_grad():
            return _mask_product(embed, features)
    return mask_logits([embed], features)[0]


def mask_logits(embeds: list[Tensor], features: Tensor, computed: list[Tensor] | None = None) -> list[Tensor]:
    """embeds L x [B, Q, C] (one per decoder layer), features [B, C, H, W] -> L x mask logits
    [B, Q, H, W] (in autocast's dtype under autocast); with the sparse backward of
    `_MaskLogitsSparseBackward` when autograd records it on the CPU.

    `computed`: these masks as `layer_mask_logits` made them. The sparse backward takes them as they
    are; elsewhere they are returned as they are (autograd, where it records, recorded them)."""
    if not _sparse_backward_applies(embeds, features):
        return computed if computed is not None else [_mask_product(embed, features) for embed in embeds]
    if torch.is_autocast_enabled("cpu"):  # the casts autocast would make, recorded for the backward
        dtype = torch.get_autocast_dtype("cpu")
        embeds, features = [e.to(dtype) for e in embeds], features.to(dtype)
    elif any(e.dtype != features.dtype for e in embeds):
        return [torch.einsum("bqc,bchw->bqhw", e, features) for e in embeds]  # einsum reports the mismatch
    with torch.autocast("cpu", enabled=False):
        return list(
            _MaskLogitsSparseBackward.apply(None if computed is None else tuple(computed), features, *embeds)
        )


def _resize_for_attention(masks: Tensor, size: tuple[int, ...]) -> Tensor:
    """F.interpolate(masks, size, mode="bilinear", align_corners=False) without gradient (it only feeds
    the next layer's detached attention mask): mask logits or mask features [B, Q or C, H, W] ->
    [B, Q or C, h, w].

    Where H / h and W / w are the same even integer f (the 1/4-scale masks against the 1/8, 1/16, 1/32
    scales of a padded image), the bilinear source point of each output pixel lies halfway between
    pixels f/2 - 1 and f/2 of its f x f block in each direction, so the result is a quarter of the sum
    of four strided slices. Summed in float32 (float64 for float64) like F.interpolate, it is the same
    in bfloat16 and within one rounding (a different summation order) in float32 and float64.
    PyTorch's CPU kernel for these channel-first maps took 0.6-2 ms per call; the slices are small."""
    h, w = size
    height, width = masks.shape[-2:]
    factor = height // h
    if height != factor * h or width != factor * w or factor % 2 or masks.device.type != "cpu":
        with torch.no_grad():
            return F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
    first, second = factor // 2 - 1, factor // 2
    exact = torch.promote_types(masks.dtype, torch.float32)

    def pixels(row: int, column: int) -> Tensor:  # [B, Q, h, w], cast after slicing: only what is read
        return masks.detach()[..., row::factor, column::factor].to(exact)

    rows_first = pixels(first, first) + pixels(first, second)
    rows_second = pixels(second, first) + pixels(second, second)
    return ((rows_first + rows_second) * 0.25).to(masks.dtype)


class _ResidualSublayer(nn.Module):
    """A decoder sublayer f with a residual and LayerNorm: norm(tgt + dropout(f(tgt))) (post-norm),
    or tgt + dropout(f(norm(tgt))) with `normalize_before` (pre-norm); sequences are [Q, B, C].

    A subclass registers its own modules, then calls `_add_norm_and_init` (the original's
    parameter order: the sublayer's, then `norm`)."""

    def _add_norm_and_init(self, d_model: int, dropout: float, normalize_before: bool) -> None:
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def _residual(self, tgt: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        x = self.norm(tgt) if self.normalize_before else tgt
        out = tgt + self.dropout(sublayer(x))
        return out if self.normalize_before else self.norm(out)


class SelfAttentionLayer(_ResidualSublayer):
    """Self-attention among queries."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self._add_norm_and_init(d_model, dropout, normalize_before)

    def forward(self, tgt: Tensor, query_pos: Tensor) -> Tensor:
        """tgt, query_pos [Q, B, C] -> [Q, B, C]"""

        def attend(x: Tensor) -> Tensor:
            q = k = x + query_pos
            return multi_head_attention(self.self_attn, q, k, x)

        return self._residual(tgt, attend)


class CrossAttentionLayer(_ResidualSublayer):
    """Queries attend to one feature scale, with an optional attention mask."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self._add_norm_and_init(d_model, dropout, normalize_before)

    def forward(
        self, tgt: Tensor, memory: Tensor, attn_mask: Tensor | None, pos: Tensor, query_pos: Tensor
    ) -> Tensor:
        """tgt [Q, B, C], memory/pos [HW, B, C], attn_mask bool [B, 1, Q, HW] (True = blocked) -> [Q, B, C]"""

        def attend(x: Tensor) -> Tensor:
            return multi_head_attention(self.multihead_attn, x + query_pos, memory + pos, memory, attn_mask)

        return self._residual(tgt, attend)


class FFNLayer(_ResidualSublayer):
    """Two-layer ReLU feed-forward."""

    def __init__(
        self, d_model: int, dim_feedforward: int = 2048, dropout: float = 0.0, normalize_before: bool = False
    ):
        super().__init__()
        self.linear1 = Linear(d_model, dim_feedforward)
        self.linear2 = Linear(dim_feedforward, d_model)
        self._add_norm_and_init(d_model, dropout, normalize_before)

    def forward(self, tgt: Tensor) -> Tensor:
        """tgt [Q, B, C] -> [Q, B, C]"""
        return self._residual(tgt, lambda x: self.linear2(self.dropout(self.linear1(x, activation="relu"))))


class MLP(nn.Module):
    """Linear layers with ReLU between them (`layers.0`, `layers.1`, ...)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, activation="relu" if i < len(self.layers) - 1 else "none")
        return x


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Multi-scale features + mask features -> class logits and masks for every layer."""

    def __init__(
        self,
        in_channels: int,
        mask_classification: bool = True,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool,
        num_feature_levels: int = 3,
        deep_supervision: bool = True,
    ):
        super().__init__()
        if not mask_classification:
            raise ValueError("MultiScaleMaskedTransformerDecoder only supports mask classification")
        if dec_layers < 1:
            raise ValueError(f"MODEL.MASK_FORMER.DEC_LAYERS must be >= 1, got {dec_layers}")
        self.num_heads = nheads
        self.deep_supervision = deep_supervision  # in training: every layer's prediction, for the aux losses
        self.num_layers = dec_layers - 1  # the first prediction comes from the learnable queries
        self.num_feature_levels = num_feature_levels
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, normalize_before=pre_norm) for _ in range(self.num_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, normalize_before=pre_norm) for _ in range(self.num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, normalize_before=pre_norm) for _ in range(self.num_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)  # learnable query features
        self.query_embed = nn.Embedding(num_queries, hidden_dim)  # learnable query positions
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
                c2_xavier_fill(proj)
                self.input_proj.append(proj)
            else:
                self.input_proj.append(nn.Identity())
        self.class_embed = Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(cls, cfg: CfgNode, in_channels: int, mask_classification: bool = True) -> dict[str, Any]:
        """The constructor's keyword arguments from MODEL.MASK_FORMER.{HIDDEN_DIM, NUM_OBJECT_QUERIES,
        NHEADS, DIM_FEEDFORWARD, DEC_LAYERS, PRE_NORM, ENFORCE_INPUT_PROJ, DEEP_SUPERVISION} and
        MODEL.SEM_SEG_HEAD.{NUM_CLASSES, MASK_DIM}."""
        mf = cfg.MODEL.MASK_FORMER
        return {
            "in_channels": in_channels,
            "mask_classification": mask_classification,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "nheads": mf.NHEADS,
            "dim_feedforward": mf.DIM_FEEDFORWARD,
            "dec_layers": mf.DEC_LAYERS,
            "pre_norm": mf.PRE_NORM,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
            "deep_supervision": mf.DEEP_SUPERVISION,
        }

    def forward(
        self, x: list[Tensor], mask_features: Tensor, *, deep_supervision: bool | None = None
    ) -> dict:
        """x: 3 x [B, C_in, H_l, W_l] (coarse to fine), mask_features [B, mask_dim, H, W] ->
        {"pred_logits": [B, Q, K+1], "pred_masks": [B, Q, H, W]} plus, with deep supervision
        (default: in training, when built with it), "aux_outputs": the earlier layers' predictions.

        With deep supervision each layer's masks are made at full resolution and resized for the
        next layer's attention mask (`layer_mask_logits`); on the CPU in training they reach autograd
        after the last layer in one `mask_logits` call (one sparse backward for all layers). Without it only the last layer's
        masks are made at full resolution: the attention masks of the layers before come from mask
        features resized once to each scale (resizing is linear, so resize(embed . features) =
        embed . resize(features))."""
        if len(x) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature scales, got {len(x)}")
        if deep_supervision is None:
            deep_supervision = self.training and self.deep_supervision
        sizes = [tuple(f.shape[-2:]) for f in x]
        srcs, pos = [], []
        for i, f in enumerate(x):
            pos.append(self.pe_layer(f).flatten(2).permute(2, 0, 1))  # [HW, B, C]
            src = self.input_proj[i](f).flatten(2) + self.level_embed.weight[i][None, :, None]
            srcs.append(src.permute(2, 0, 1))  # [HW, B, C]
        b = mask_features.shape[0]
        if mask_features.device.type != "cpu" or graph_capture_active():
            # In the channel-first layout the mask einsums read: one copy here when the features come
            # channels-last (from a channels-last backbone), not one in every einsum and its backward.
            # On the CPU the mask products read either layout as it is (`_mask_product`, the sparse backward).
            mask_features = mask_features.contiguous()
        query_pos = self.query_embed.weight.unsqueeze(1).expand(-1, b, -1)  # [Q, B, C]
        output = self.query_feat.weight.unsqueeze(1).expand(-1, b, -1)  # [Q, B, C]
        scaled_features: list[Tensor] | None = None  # without deep supervision: mask features at each scale
        if not deep_supervision:
            scaled_features = [
                _resize_for_attention(mask_features, s) for s in sizes
            ]  # 3 x [B, mask_dim, h_l, w_l]

        classes, embeds, computed = [], [], []  # of the layers whose predictions are returned
        attn_mask: Tensor | None = None  # set by each prediction for the next layer
        for i in range(self.num_layers + 1):
            if i > 0:
                level = (i - 1) % self.num_feature_levels
                output = self.transformer_cross_attention_layers[i - 1](
                    output, srcs[level], attn_mask, pos[level], query_pos
                )
                output = self.transformer_self_attention_layers[i - 1](output, query_pos)
                output = self.transformer_ffn_layers[i - 1](output)
            decoded = self.decoder_norm(output).transpose(0, 1)  # [B, Q, C]
            embed = self.mask_embed(decoded)  # [B, Q, mask_dim]
            if deep_supervision or i == self.num_layers:
                classes.append(self.class_embed(decoded))
                embeds.append(embed)
            if i == self.num_layers:
                break
            if scaled_features is None:  # deep supervision: this layer's masks, made here once
                computed.append(layer_mask_logits(embed, mask_features))  # [B, Q, H, W]
                low_res = _resize_for_attention(computed[-1], sizes[i % self.num_feature_levels])
            else:
                with torch.no_grad():  # the attention mask is not differentiated
                    low_res = _mask_product(embed, scaled_features[i % self.num_feature_levels])
            attn_mask = self.attention_mask(low_res)
        if deep_supervision:
            computed.append(layer_mask_logits(embed, mask_features))
        masks = mask_logits(embeds, mask_features, computed or None)  # L x [B, Q, H, W]
        out = {"pred_logits": classes[-1], "pred_masks": masks[-1]}
        if deep_supervision:
            out["aux_outputs"] = [
                {"pred_logits": c, "pred_masks": m} for c, m in zip(classes[:-1], masks[:-1])
            ]
        return out

    def attention_mask(self, mask_logits: Tensor) -> Tensor:
        """Mask logits [B, Q, h, w] at the next layer's scale -> bool [B, 1, Q, h*w], True where
        the query may not attend (mask probability < 0.5)."""
        blocked = (mask_logits.flatten(2).sigmoid() < 0.5).detach()  # [B, Q, hw]
        blocked &= ~blocked.all(-1, keepdim=True)  # a query that sees nothing sees everything
        return blocked[:, None]  # [B, 1, Q, hw]: one mask for all heads


@TRANSFORMER_DECODER_REGISTRY.register("MultiScaleMaskedTransformerDecoder")
def build_masked_transformer_decoder(
    cfg: CfgNode, in_channels: int, mask_classification: bool = True
) -> MultiScaleMaskedTransformerDecoder:
    """MultiScaleMaskedTransformerDecoder from the config (see its `from_config`)."""
    return MultiScaleMaskedTransformerDecoder(
        **MultiScaleMaskedTransformerDecoder.from_config(cfg, in_channels, mask_classification)
    )
