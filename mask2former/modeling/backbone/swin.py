"""Swin Transformer backbone (Liu et al., ICCV 2021, arXiv 2103.14030) for dense prediction.

Registered as `D2SwinTransformer` in `BACKBONE_REGISTRY` (the name the original Mask2Former
configs use) and configured by `MODEL.SWIN.*`. Parameter and buffer names are those of the
original's D2SwinTransformer, so its published checkpoints (`backbone.layers.0.blocks.0.attn.qkv.weight`,
`backbone.norm0.weight`, ...) load unchanged:

    patch_embed.proj, patch_embed.norm, [absolute_pos_embed]
    layers.{i}.blocks.{j}.{norm1, attn.relative_position_bias_table, attn.relative_position_index,
                           attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}
    layers.{i}.downsample.{reduction, norm}          (stages 0..2)
    norm{i}                                          (one LayerNorm per returned stage)

Any input size works: the patch embedding pads to a multiple of the patch size, every block
pads to a multiple of the window size and patch merging pads odd sizes, so stage i returns
ceil(H / stride_i) x ceil(W / stride_i) maps.

Shape shorthand: B batch, H/W token grid of the current stage, C channels of the stage,
w window size, N = w*w tokens per window, nW windows per image, h attention heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from ...layers import ShapeSpec
from ..registry import BACKBONE_REGISTRY
from .backbone import Backbone

__all__ = ["SwinTransformer", "D2SwinTransformer"]

_STAGE_NAMES = ("res2", "res3", "res4", "res5")
_SHIFT_MASK_VALUE = -100.0  # the original's additive mask between tokens of different shifted regions


def _timm_layers():
    """`timm.layers` (DropPath, Mlp, trunc_normal_), imported when a Swin backbone is built:
    importing timm takes long, and configs with a ResNet never need it."""
    import timm.layers

    return timm.layers


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """x [B, H, W, C] with H, W multiples of w -> windows [B*nW, w, w, C] (batch-major order)."""
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, C)


def window_reverse(windows: Tensor, window_size: int, H: int, W: int) -> Tensor:
    """windows [B*nW, w, w, C] -> x [B, H, W, C]; the inverse of `window_partition`."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window_size, W // window_size, window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def relative_position_index(window_size: int) -> Tensor:
    """Index into the (2w-1)^2 relative-position table for every pair of tokens of a window:
    int64 [N, N] with N = w*w (row: query token, column: key token)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)  # [2, N]
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # [N, N, 2], each in [-(w-1), w-1]
    rel = rel + (window_size - 1)
    return rel[:, :, 0] * (2 * window_size - 1) + rel[:, :, 1]


def shifted_window_mask(H: int, W: int, window_size: int, shift_size: int, device: torch.device) -> Tensor:
    """Additive attention mask for shifted windows on a padded H x W grid (multiples of w):
    float [nW, N, N], 0 between tokens of the same region before the cyclic shift, -100 otherwise."""
    img_mask = torch.zeros((1, H, W, 1), device=device)
    regions = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    label = 0
    for hs in regions:
        for ws in regions:
            img_mask[:, hs, ws, :] = label
            label += 1
    mask_windows = window_partition(img_mask, window_size).flatten(1)  # [nW, N]
    mask = mask_windows[:, None, :] - mask_windows[:, :, None]  # [nW, N, N]
    return mask.masked_fill(mask != 0, _SHIFT_MASK_VALUE).masked_fill(mask == 0, 0.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative-position bias.

    Args:
        dim: channels C.
        window_size: w.
        num_heads: h.
        qkv_bias: add a bias to the query/key/value projection.
        qk_scale: attention scale; None means head_dim ** -0.5.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
    """

    relative_position_index: Tensor  # buffer int64 [N, N]

    def __init__(
        self,
        dim: int,
        window_size: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Swin: channels {dim} are not divisible by the number of heads {num_heads}")
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale if qk_scale is not None else (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        _timm_layers().trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> Tensor:
        """The bias added to the attention logits: [h, N, N]."""
        n = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # [N*N, h]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x [B*nW, N, C], mask [nW, N, N] additive (or None) -> [B*nW, N, C]."""
        Bw, N, C = x.shape
        qkv = self.qkv(x).reshape(Bw, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B*nW, h, N, C/h]
        bias = self.relative_position_bias().unsqueeze(0)  # [1, h, N, N]
        if mask is not None:
            nW = mask.shape[0]
            bias = bias + mask.unsqueeze(1)  # [nW, h, N, N]
            bias = bias.unsqueeze(0).expand(Bw // nW, -1, -1, -1, -1).reshape(Bw, self.num_heads, N, N)
        x = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=bias.to(q.dtype),
            dropout_p=self.attn_drop if self.training else 0.0,
            scale=self.scale,
        )  # [B*nW, h, N, C/h]
        x = x.transpose(1, 2).reshape(Bw, N, C)
        return self.proj_drop(self.proj(x))


@dataclass(frozen=True)
class BlockSettings:
    """What every block of a `SwinTransformer` shares (the arguments of the same names there;
    `drop` is its `drop_rate`, `attn_drop` its `attn_drop_rate`)."""

    window_size: int  # w
    mlp_ratio: float  # hidden width of the MLP over C
    qkv_bias: bool
    qk_scale: float | None
    drop: float  # after the attention's output projection and in the MLP
    attn_drop: float  # on the attention weights


class SwinTransformerBlock(nn.Module):
    """Pre-norm block: (shifted) window attention then MLP, each with a residual connection.

    Args:
        dim: channels C.
        num_heads: h.
        settings: window size, MLP ratio, attention options and dropouts.
        shift_size: cyclic shift before partitioning (0 or w // 2).
        drop_path: stochastic-depth rate of this block.
    """

    def __init__(
        self, dim: int, num_heads: int, settings: BlockSettings, *, shift_size: int, drop_path: float
    ):
        super().__init__()
        w = settings.window_size
        if not 0 <= shift_size < w:
            raise ValueError(f"Swin: shift_size {shift_size} must be in [0, window_size={w})")
        self.window_size = w
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim,
            w,
            num_heads,
            qkv_bias=settings.qkv_bias,
            qk_scale=settings.qk_scale,
            attn_drop=settings.attn_drop,
            proj_drop=settings.drop,
        )
        timm_layers = _timm_layers()
        self.drop_path = timm_layers.DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = timm_layers.Mlp(
            in_features=dim,
            hidden_features=int(dim * settings.mlp_ratio),
            act_layer=nn.GELU,
            drop=settings.drop,
        )

    def forward(self, x: Tensor, H: int, W: int, shift_mask: Tensor | None) -> Tensor:
        """x [B, H*W, C]; shift_mask [nW, N, N] for the padded grid (used when shifted) -> [B, H*W, C]."""
        B, L, C = x.shape
        w = self.window_size
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        pad_b, pad_r = (-H) % w, (-W) % w
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))  # [B, Hp, Wp, C]
        Hp, Wp = H + pad_b, W + pad_r
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        windows = window_partition(x, w).view(-1, w * w, C)  # [B*nW, N, C]
        windows = self.attn(windows, mask=shift_mask if self.shift_size > 0 else None)
        x = window_reverse(windows.view(-1, w, w, C), w, Hp, Wp)  # [B, Hp, Wp, C]
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = x[:, :H, :W, :].reshape(B, L, C)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Halve the grid and double the channels: concatenate each 2x2 neighbourhood (4C), LayerNorm,
    then a linear map to 2C. Odd sizes are zero-padded first."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        """x [B, H*W, C] -> [B, ceil(H/2)*ceil(W/2), 2C]."""
        B, _, C = x.shape
        x = x.view(B, H, W, C)
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        # The original's order of the four neighbours: (even, even), (odd, even), (even, odd), (odd, odd) in (row, col).
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))


class BasicLayer(nn.Module):
    """One stage: `depth` blocks alternating regular and shifted windows, then optional PatchMerging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        settings: BlockSettings,
        *,
        drop_path: list[float],
        downsample: bool,
        use_checkpoint: bool,
    ):
        super().__init__()
        self.window_size = settings.window_size
        self.shift_size = settings.window_size // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim,
                num_heads,
                settings,
                shift_size=0 if j % 2 == 0 else self.shift_size,
                drop_path=drop_path[j],
            )
            for j in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor, H: int, W: int) -> tuple[Tensor, Tensor | None, int, int]:
        """x [B, H*W, C] -> (stage output [B, H*W, C], next-stage input [B, H'*W', 2C] or None, H', W')."""
        w = self.window_size
        Hp, Wp = math.ceil(H / w) * w, math.ceil(W / w) * w
        shift_mask = (
            shifted_window_mask(Hp, Wp, w, self.shift_size, x.device) if self.shift_size > 0 else None
        )
        for blk in self.blocks:
            if self.use_checkpoint and self.training:
                x = torch.utils.checkpoint.checkpoint(blk, x, H, W, shift_mask, use_reentrant=False)
            else:
                x = blk(x, H, W, shift_mask)
        if self.downsample is None:
            return x, None, H, W
        return x, self.downsample(x, H, W), (H + 1) // 2, (W + 1) // 2


class PatchEmbed(nn.Module):
    """Non-overlapping patch_size x patch_size patches -> embed_dim channels (+ LayerNorm)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, norm: bool):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        """x [B, in_chans, H, W] -> [B, embed_dim, ceil(H/p), ceil(W/p)] (zero-padded right/bottom)."""
        p = self.patch_size
        x = F.pad(x, (0, (-x.shape[-1]) % p, 0, (-x.shape[-2]) % p))
        x = self.proj(x)
        if self.norm is not None:
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x


class SwinTransformer(Backbone):
    """Swin Transformer returning the normalised stage outputs `res2..res5` named in `out_features`.

    Stage i (res{i+2}) has stride patch_size * 2^i and embed_dim * 2^i channels. Only the stages up
    to the deepest requested output are built, and `norm{i}` exists for each requested stage.

    Args:
        pretrain_img_size: image size of the pretraining, sizes the absolute position embedding (ape).
        patch_size, in_chans, embed_dim, depths, num_heads, window_size, mlp_ratio: the architecture.
        qkv_bias, qk_scale: attention projections and scale (None: head_dim ** -0.5).
        drop_rate, attn_drop_rate, drop_path_rate: dropouts; stochastic depth grows linearly to drop_path_rate.
        ape: add an absolute position embedding (interpolated to the input's grid).
        patch_norm: LayerNorm after the patch embedding.
        out_features: subset of ("res2", "res3", "res4", "res5").
        use_checkpoint: activation checkpointing of every block while training.
    """

    def __init__(
        self,
        *,
        pretrain_img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: tuple[int, ...] | list[int] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] | list[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        ape: bool = False,
        patch_norm: bool = True,
        out_features: tuple[str, ...] | list[str] = _STAGE_NAMES,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        if len(depths) != len(_STAGE_NAMES) or len(num_heads) != len(_STAGE_NAMES):
            raise ValueError(
                f"Swin: DEPTHS {list(depths)} and NUM_HEADS {list(num_heads)} need 4 entries each"
            )
        unknown = [f for f in out_features if f not in _STAGE_NAMES]
        if unknown or not out_features:
            raise ValueError(
                f"Swin: OUT_FEATURES {list(out_features)} must be a non-empty subset of {_STAGE_NAMES}"
            )
        self._out_features = [f for f in _STAGE_NAMES if f in out_features]
        num_stages = max(_STAGE_NAMES.index(f) for f in out_features) + 1
        dims = [embed_dim * 2**i for i in range(num_stages)]
        self._out_feature_channels = {_STAGE_NAMES[i]: dims[i] for i in range(num_stages)}
        self._out_feature_strides = {_STAGE_NAMES[i]: patch_size * 2**i for i in range(num_stages)}

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm)
        self.absolute_pos_embed = None
        if ape:
            grid = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
            _timm_layers().trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(p=drop_rate)

        # stochastic depth grows linearly over the blocks (as torch.linspace; also on meta)
        n_blocks = sum(depths)
        dpr = [drop_path_rate * j / max(n_blocks - 1, 1) for j in range(n_blocks)]
        settings = BlockSettings(
            window_size=window_size,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            drop=drop_rate,
            attn_drop=attn_drop_rate,
        )
        self.layers = nn.ModuleList(
            BasicLayer(
                dims[i],
                depths[i],
                num_heads[i],
                settings,
                drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                downsample=i < num_stages - 1,
                use_checkpoint=use_checkpoint,
            )
            for i in range(num_stages)
        )
        for i in range(num_stages):
            if _STAGE_NAMES[i] in self._out_features:
                self.add_module(f"norm{i}", nn.LayerNorm(dims[i]))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            _timm_layers().trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def size_divisibility(self) -> int:
        """32 as in the original: any size runs, but multiples of 32 keep the four scales aligned."""
        return 32

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x [B, in_chans, H, W] -> {res{i+2}: [B, embed_dim * 2^i, ceil(H / s_i), ceil(W / s_i)]},
        s_i = patch_size * 2^i, for the requested outputs."""
        if x.dim() != 4:
            raise ValueError(f"SwinTransformer takes [B, C, H, W] images, got shape {tuple(x.shape)}")
        x = self.patch_embed(x)  # [B, C, Wh, Ww]
        H, W = x.shape[-2:]
        if self.absolute_pos_embed is not None:
            x = x + F.interpolate(self.absolute_pos_embed, size=(H, W), mode="bicubic")
        x = self.pos_drop(x.flatten(2).transpose(1, 2))  # [B, H*W, C]
        outs = {}
        for i, layer in enumerate(self.layers):
            x_out, x, H_next, W_next = layer(x, H, W)
            name = _STAGE_NAMES[i]
            if name in self._out_features:
                x_out = getattr(self, f"norm{i}")(x_out)
                outs[name] = x_out.view(-1, H, W, x_out.shape[-1]).permute(0, 3, 1, 2).contiguous()
            H, W = H_next, W_next
        return outs


@BACKBONE_REGISTRY.register()
def D2SwinTransformer(cfg, input_shape: ShapeSpec) -> SwinTransformer:
    """Build the Swin backbone from `MODEL.SWIN.*`; `input_shape.channels` is the image's channels."""
    c = cfg.MODEL.SWIN
    return SwinTransformer(
        pretrain_img_size=c.PRETRAIN_IMG_SIZE,
        patch_size=c.PATCH_SIZE,
        in_chans=input_shape.channels,
        embed_dim=c.EMBED_DIM,
        depths=list(c.DEPTHS),
        num_heads=list(c.NUM_HEADS),
        window_size=c.WINDOW_SIZE,
        mlp_ratio=c.MLP_RATIO,
        qkv_bias=c.QKV_BIAS,
        qk_scale=c.QK_SCALE,
        drop_rate=c.DROP_RATE,
        attn_drop_rate=c.ATTN_DROP_RATE,
        drop_path_rate=c.DROP_PATH_RATE,
        ape=c.APE,
        patch_norm=c.PATCH_NORM,
        out_features=list(c.OUT_FEATURES),
        use_checkpoint=c.USE_CHECKPOINT,
    )
