"""`mask2former::attention` (the compiled CPU attention of the Transformer decoder) against
F.scaled_dot_product_attention in float64: gradcheck on small shapes, float32 and bfloat16 values and
gradients at the decoder's sizes, and the refusals."""

import pytest
import torch
import torch.nn.functional as F

from mask2former.layers.extension import compiled_op_available


@pytest.fixture(autouse=True)
def _compiled_op():
    assert compiled_op_available("cpu"), "mask2former._C is not built"


def _attention(q, k, v, allowed):
    return torch.ops.mask2former.attention(q, k, v, allowed, q.shape[-1] ** -0.5)[0]


def _decoder_layout(batch: int, length: int, heads: int, dim: int, generator, dtype) -> torch.Tensor:
    """[B, M, L, D] as the decoder passes it: a permuted view of a [L, B, M * D] projection."""
    x = torch.randn(length, batch, heads * dim, generator=generator, dtype=torch.float64).to(dtype)
    return x.view(length, batch, heads, dim).permute(1, 2, 0, 3)


def _mask(batch: int, lq: int, lk: int, generator) -> torch.Tensor:
    """allowed [B, 1, Lq, Lk]: about half the keys blocked; row 0 sees every key, rows 1-3 one key each,
    rows 4-5 two keys (nearly fully blocked rows)."""
    allowed = torch.rand(batch, 1, lq, lk, generator=generator) < 0.5
    allowed[:, :, 0] = True
    allowed[:, :, 1:6] = False
    allowed[:, :, 1, 0] = allowed[:, :, 2, lk - 1] = allowed[:, :, 3, lk // 2] = True
    allowed[:, :, 4:6, 3:5] = True
    return allowed


@pytest.mark.parametrize(
    "lq, lk, dim, masked",
    [(6, 7, 3, True), (9, 19, 5, True), (9, 19, 5, False), (6, 40, 17, True)],
    ids=["tiny-masked", "padded-masked", "padded", "wide-head"],
)
def test_gradcheck_float64(lq, lk, dim, masked):
    # sizes that are not whole tiles (8 query rows, 16 keys and channels in float64) on purpose
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, n, dim, generator=generator, dtype=torch.float64) for n in (lq, lk, lk))
    allowed = _mask(2, lq, lk, generator) if masked else None
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: _attention(q, k, v, allowed), inputs)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    torch.testing.assert_close(_attention(q, k, v, allowed), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "batch, lk, masked",
    [(1, 2304, True), (2, 2304, True), (1, 100, False), (2, 100, False), (2, 144, True)],
    ids=["cross-2304", "cross-2304-batch2", "self-100", "self-100-batch2", "cross-144-batch2"],
)
def test_matches_sdpa_at_decoder_sizes(dtype, batch, lk, masked):
    """Values and gradients against float64 SDPA on the same (dtype-rounded) inputs, as close as SDPA in
    `dtype` gets (bfloat16: within a few of its rounding steps of the result)."""
    generator = torch.Generator().manual_seed(1)
    heads, lq, dim = 8, 100, 32
    q = _decoder_layout(batch, lq, heads, dim, generator, dtype).requires_grad_()
    k, v = (_decoder_layout(batch, lk, heads, dim, generator, dtype).requires_grad_() for _ in range(2))
    allowed = _mask(batch, lq, lk, generator) if masked else None
    grad_out = torch.randn(batch, heads, lq, dim, generator=generator).to(dtype)

    out = _attention(q, k, v, allowed)
    assert out.dtype == dtype and out.shape == (batch, heads, lq, dim)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    exact = [t.detach().double().requires_grad_() for t in (q, k, v)]
    expected = F.scaled_dot_product_attention(*exact, attn_mask=allowed)
    expected_grads = torch.autograd.grad(expected, exact, grad_out.double())
    sdpa = F.scaled_dot_product_attention(q.detach(), k.detach(), v.detach(), attn_mask=allowed)

    tol = 2e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)
    for name, got, want in zip("qkv", grads, expected_grads):
        assert got.dtype == dtype, name
        scale = want.abs().max().item()  # dk sums over 100 queries: compare relative to its magnitude
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * scale, msg=f"d{name}")
    if dtype == torch.float32:  # and no further from float64 than SDPA's own float32 result (plus rounding)
        ours = (out.double() - expected).abs().max()
        theirs = (sdpa.double() - expected).abs().max()
        assert ours <= 4 * theirs + 1e-6


def test_without_gradient_and_in_inference_mode():
    generator = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 8, n, 32, generator=generator) for n in (100, 576, 576))
    allowed = _mask(1, 100, 576, generator)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=allowed)
    with torch.inference_mode():
        out = _attention(q, k, v, allowed)
    torch.testing.assert_close(out.double(), expected, rtol=2e-5, atol=2e-5)


def test_row_without_allowed_key_is_refused():
    # SDPA returns NaN for such a row; the decoder never passes one (it unmasks fully blocked rows)
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 20, 8), torch.randn(1, 2, 20, 8)
    allowed = torch.ones(1, 1, 4, 20, dtype=torch.bool)
    allowed[0, 0, 2] = False
    with pytest.raises(RuntimeError, match="no allowed key"):
        _attention(q, k, v, allowed)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda q, k, v, a: (q, k, v, a.float()), "allowed must be bool"),
        (lambda q, k, v, a: (q, k, v, a[:, :, :3]), r"allowed must be \[B or 1, 1, Lq, Lk\]"),
        (lambda q, k, v, a: (q, k.double(), v, a), "k and v must have q's dtype"),
        (lambda q, k, v, a: (q.half(), k.half(), v.half(), a), "q must be float32, bfloat16 or float64"),
        (lambda q, k, v, a: (q, k[..., :4], v[..., :4], a), r"k must be \[B, M, Lk, D\]"),
    ],
    ids=["mask-dtype", "mask-shape", "mixed-dtype", "half", "head-dim"],
)
def test_bad_arguments_are_named(change, message):
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 20, 8), torch.randn(1, 2, 20, 8)
    allowed = torch.ones(1, 1, 4, 20, dtype=torch.bool)
    with pytest.raises(RuntimeError, match=message):
        _attention(*change(q, k, v, allowed))


def test_registration_passes_opcheck():
    """Schema, fake (meta) kernel and autograd registration as torch.library checks them."""
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, n, 8, generator=generator, requires_grad=True) for n in (5, 21, 21))
    allowed = torch.rand(2, 1, 5, 21, generator=generator) < 0.5
    allowed[..., 0] = True
    torch.library.opcheck(torch.ops.mask2former.attention.default, (q, k, v, allowed, 8**-0.5))


def test_strided_inputs_and_one_mask_for_the_batch():
    """k and v with channels that are not contiguous (the element-by-element copy path) and an allowed
    mask [1, 1, Lq, Lk] shared by both images."""
    generator = torch.Generator().manual_seed(4)
    q = torch.randn(2, 1, 9, 5, generator=generator, dtype=torch.float64)
    k, v = (
        torch.randn(2, 1, 5, 19, generator=generator, dtype=torch.float64).transpose(2, 3) for _ in range(2)
    )
    assert k.stride(-1) != 1
    allowed = _mask(1, 9, 19, generator)
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: _attention(q, k, v, allowed), inputs)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    torch.testing.assert_close(_attention(q, k, v, allowed), expected, rtol=1e-12, atol=1e-12)
    out32 = _attention(q.detach().float(), k.detach().float(), v.detach().float(), allowed)
    torch.testing.assert_close(out32.double(), expected, rtol=2e-5, atol=2e-5)
