"""The decoder's `multi_head_attention` against nn.MultiheadAttention, in float32 and in bfloat16
training, through the compiled CPU attention and through SDPA (where on a CPU without AMX the
attention itself runs in float32); `mask_logits` (sparse backward) against einsum."""

import importlib

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mask2former.layers.extension import compiled_op_available
from mask2former.modeling.transformer_decoder.masked_attention_decoder import (
    layer_mask_logits,
    mask_logits,
    multi_head_attention,
)

weight_cache = importlib.import_module("mask2former.layers.weight_cache")
decoder_module = importlib.import_module("mask2former.modeling.transformer_decoder.masked_attention_decoder")


@pytest.fixture(params=["compiled", "sdpa"])
def attention_kernel(request, monkeypatch) -> str:
    """Runs the test through the compiled CPU attention, then through SDPA (the path without the extension)."""
    if request.param == "compiled":
        assert compiled_op_available("cpu"), "mask2former._C is not built"
    else:
        monkeypatch.setattr(decoder_module, "compiled_op_available", lambda device: False)
    return request.param


def _inputs(lk: int):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(64, 4)
    query, key = torch.randn(10, 2, 64), torch.randn(lk, 2, 64)
    blocked = torch.rand(2, 1, 10, lk) < 0.3  # [B, 1, Q, HW], True = may not attend
    blocked[:, :, 0] = False  # a query that sees everything
    return mha, query, key, blocked


class _AttentionDtypes(TorchDispatchMode):
    """Records the kernel and query dtype of every attention kernel that runs (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.kernels: set[tuple[str, torch.dtype]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if "scaled_dot_product" in name:
            self.kernels.add(("sdpa", args[0].dtype))
        elif func.namespace == "mask2former" and name.startswith("attention"):
            self.kernels.add(("compiled", args[1 if name == "attention_backward" else 0].dtype))
        return func(*args, **(kwargs or {}))


def _reference(mha, query, key, blocked):
    per_head = blocked.expand(-1, mha.num_heads, -1, -1).flatten(0, 1)  # [B*M, Q, HW]
    return mha(query, key, key, attn_mask=per_head, need_weights=False)[0]


@pytest.mark.parametrize("lk", [7, 33])
def test_float32_training_matches_multihead_attention(lk, attention_kernel):
    mha, query, key, blocked = _inputs(lk)
    query.requires_grad_()
    out = multi_head_attention(mha, query, key, key, blocked)
    (grad,) = torch.autograd.grad(out.square().sum(), query)
    query_ref = query.detach().clone().requires_grad_()
    expected = _reference(mha, query_ref, key, blocked)
    (grad_ref,) = torch.autograd.grad(expected.square().sum(), query_ref)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-4)


def test_bfloat16_autocast_training_close_to_float32(attention_kernel):
    # bfloat16 projections (8-bit mantissa): values and gradients within bfloat16 rounding of float32
    mha, query, key, blocked = _inputs(33)
    query.requires_grad_()
    with _AttentionDtypes() as attention:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = multi_head_attention(mha, query, key, key, blocked)
        assert out.dtype == torch.bfloat16
        (grad,) = torch.autograd.grad(out.float().square().sum(), query)
    if attention_kernel == "compiled":  # reads and writes bfloat16 (computes in float32)
        assert attention.kernels == {("compiled", torch.bfloat16)}
    else:  # float32 where the bfloat16 SDPA backward is the slower one (a CPU without AMX tiles)
        expected_dtype = torch.bfloat16 if torch.cpu._is_amx_tile_supported() else torch.float32
        assert attention.kernels == {("sdpa", expected_dtype)}
    query_ref = query.detach().clone().requires_grad_()
    expected = _reference(mha, query_ref, key, blocked)
    (grad_ref,) = torch.autograd.grad(expected.square().sum(), query_ref)
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.05)
    torch.testing.assert_close(grad, grad_ref, rtol=0.1, atol=0.1)


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
def test_self_attention_matches_multihead_attention(autocast, attention_kernel):
    """Self-attention (the same tensor as query and key: q and k from one product) against float32
    nn.MultiheadAttention: the output and the gradients of the input and the in-projection."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(64, 4)
    x, pos = torch.randn(10, 2, 64, requires_grad=True), torch.randn(10, 2, 64)
    inputs = (x, mha.in_proj_weight, mha.in_proj_bias)

    def run(attend, enabled):
        q = x + pos
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            out = attend(q)
        return out.float(), torch.autograd.grad(out.float().square().sum(), inputs)

    out, grads = run(lambda q: multi_head_attention(mha, q, q, x), autocast)
    expected, expected_grads = run(lambda q: mha(q, q, x, need_weights=False)[0], False)
    tol = 0.05 if autocast else 1e-5
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=2 * tol, atol=2 * tol * e.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mask_logits_sparse_backward_matches_einsum(dtype):
    # the loss reaches only a few queries' masks: their rows of the gradient are not zero
    torch.manual_seed(0)
    embed = torch.randn(2, 10, 16, requires_grad=True)
    features = torch.randn(2, 16, 7, 9, requires_grad=True)
    picked = (torch.tensor([0, 0, 1]), torch.tensor([3, 8, 5]))  # (image, query) of matched masks

    def loss(masks):
        return (masks.float()[picked] * torch.linspace(-1, 1, 63).view(7, 9)).sum()

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        (got,) = mask_logits([embed], features)
        expected = torch.einsum("bqc,bchw->bqhw", embed, features)
    assert got.dtype == expected.dtype == dtype
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    grads = torch.autograd.grad(loss(got), (embed, features))
    expected_grads = torch.autograd.grad(loss(expected), (embed, features))
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=tol, atol=tol)
    assert grads[0][1, 0].abs().sum() == 0 and grads[0][0, 3].abs().sum() > 0


@pytest.mark.parametrize(
    "batch, picked",
    [(1, ([0], [4])), (3, ([0, 2, 2], [1, 0, 9]))],  # one image; three images, the middle one unmatched
    ids=["one-image", "unmatched-image"],
)
@pytest.mark.parametrize("trainable", ["embed", "features", "both"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_mask_logits_sparse_backward_gives_the_gradients_asked_for(batch, picked, trainable, channels_last):
    """The gradients asked for, against float64 einsum; channels-last features get a channels-last
    gradient (their own layout, no conversion in the convolution's backward)."""
    torch.manual_seed(1)
    embed = torch.randn(batch, 10, 16, requires_grad=trainable in ("embed", "both"))
    features = torch.randn(batch, 16, 5, 6)
    if channels_last:
        features = features.to(memory_format=torch.channels_last)
    features.requires_grad_(trainable in ("features", "both"))
    weights = torch.randn(len(picked[0]), 5, 6)
    inputs = [t for t in (embed, features) if t.requires_grad]
    got = torch.autograd.grad((mask_logits([embed], features)[0][picked] * weights).sum(), inputs)
    expected = torch.einsum("bqc,bchw->bqhw", embed.double(), features.double())
    expected_grads = torch.autograd.grad((expected[picked] * weights.double()).sum(), inputs)
    for g, e in zip(got, expected_grads):
        torch.testing.assert_close(g, e.float(), rtol=1e-5, atol=1e-5)
    if features.requires_grad:
        layout = torch.channels_last if channels_last else torch.contiguous_format
        assert got[-1].is_contiguous(memory_format=layout)


@pytest.mark.parametrize("given", ["made", "given", "recorded"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_mask_logits_of_several_layers_sum_their_feature_gradients(channels_last, given, monkeypatch):
    """Three decoder layers' masks from one call: each layer's embedding gradient and the features'
    gradient summed over the layers, against float64 einsum; a layer whose masks no loss reads
    (the second) gets a zero embedding gradient, an image no layer matched a zero feature gradient.
    Masks the decoder made before with `layer_mask_logits` are returned as they are: without
    gradient for the sparse backward ("given"), or recorded by autograd where the sparse backward
    does not apply ("recorded": as while tracing, or on another device)."""
    if given == "recorded":
        monkeypatch.setattr(weight_cache, "graph_capture_active", lambda: True)
    torch.manual_seed(3)
    embeds = [torch.randn(2, 10, 16, requires_grad=True) for _ in range(3)]
    features = torch.randn(2, 16, 5, 6)
    if channels_last:
        features = features.to(memory_format=torch.channels_last)
    features.requires_grad_(True)
    picked = {0: ([0, 0], [1, 7]), 2: ([0], [7])}  # layer -> (image, query) of its matched masks
    weights = {layer: torch.randn(len(rows[0]), 5, 6) for layer, rows in picked.items()}

    def loss(masks):
        return sum(
            (masks[layer][rows] * weights[layer].to(masks[layer].dtype)).sum()
            for layer, rows in picked.items()
        )

    inputs = [*embeds, features]
    computed = [layer_mask_logits(e, features) for e in embeds] if given != "made" else None
    if computed is not None:
        assert all(c.requires_grad == (given == "recorded") for c in computed)
    masks = mask_logits(embeds, features, computed)
    if computed is not None:
        assert all(m is c for m, c in zip(masks, computed))
    got = torch.autograd.grad(loss(masks), inputs, materialize_grads=True)
    expected = [torch.einsum("bqc,bchw->bqhw", e.double(), features.double()) for e in embeds]
    expected_grads = torch.autograd.grad(loss(expected), inputs, materialize_grads=True)
    for g, e in zip(got, expected_grads):
        torch.testing.assert_close(g, e.float(), rtol=1e-5, atol=1e-5)
    assert got[1].abs().sum() == 0 and got[-1][1].abs().sum() == 0 and got[-1][0].abs().sum() > 0


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_mask_logits_without_gradient_match_einsum(batch, dtype, channels_last):
    """Inference: one oneDNN product per image on the CPU, the same values as einsum's batched product."""
    torch.manual_seed(2)
    embed = torch.randn(batch, 10, 16, dtype=dtype)
    features = torch.randn(batch, 16, 7, 9, dtype=dtype)
    if channels_last:
        features = features.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        (got,) = mask_logits([embed], features)
    expected = torch.einsum("bqc,bchw->bqhw", embed.double(), features.double())
    assert got.dtype == dtype and got.shape == (batch, 10, 7, 9)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert mask_logits([embed.float()], features.float())[0].dtype == torch.bfloat16
