"""MSDeformAttn's query projection: the sampling offsets and attention-weight logits from one product
with the two layers' weights stacked. The same values as the two layers (float64 reference), the
gradients of both layers and of the query, and at inference stacked weights that follow a change."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mask2former.modeling.pixel_decoder.msdeformattn import MSDeformAttn


def _attention() -> MSDeformAttn:
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=2)
    for layer in (attn.sampling_offsets, attn.attention_weights):  # zero-initialised: make them distinct
        nn.init.normal_(layer.weight)
        nn.init.normal_(layer.bias)
    return attn


def _reference(attn: MSDeformAttn, query: torch.Tensor) -> torch.Tensor:
    layers = (attn.sampling_offsets, attn.attention_weights)
    return torch.cat([F.linear(query.double(), lay.weight.double(), lay.bias.double()) for lay in layers], -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_projection_matches_the_two_layers(dtype):
    attn = _attention()
    query = torch.randn(2, 7, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        got = attn._project_query(query)  # [B, Q, M*L*P*2 + M*L*P]
    assert got.dtype == dtype and got.shape == (2, 7, 4 * 2 * 2 * 3)
    tol = 1e-5 if dtype == torch.float32 else 0.1
    torch.testing.assert_close(got.double(), _reference(attn, query), rtol=tol, atol=tol)


def test_inference_projection_follows_a_changed_weight():
    attn = _attention()
    query = torch.randn(1, 5, 32)
    with torch.no_grad():
        attn._project_query(query)  # stacks and keeps the weights
        attn.attention_weights.weight.add_(1.0)
        got = attn._project_query(query)
    torch.testing.assert_close(got.double(), _reference(attn, query), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
def test_training_projection_gives_both_layers_and_the_query_their_gradients(autocast):
    attn = _attention()
    query = torch.randn(2, 7, 32, requires_grad=True)
    weights = torch.randn(2, 7, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        got = attn._project_query(query)
    inputs = [
        query,
        *(t for lay in (attn.sampling_offsets, attn.attention_weights) for t in lay.parameters()),
    ]
    grads = torch.autograd.grad((got.float() * weights).sum(), inputs)
    expected = torch.autograd.grad((_reference(attn, query) * weights.double()).sum(), inputs)
    rtol, atol = (1e-4, 1e-4) if not autocast else (0.02, 0.1)
    for g, e in zip(grads, expected):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, e, rtol=rtol, atol=atol)
