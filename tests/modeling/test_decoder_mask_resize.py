"""The Transformer decoder's resizing of mask logits for the next layer's attention mask
(`_resize_for_attention`) against F.interpolate (bilinear, align_corners=False)."""

import pytest
import torch
import torch.nn.functional as F

from mask2former.modeling.transformer_decoder.masked_attention_decoder import _resize_for_attention


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", [(48, 40), (24, 20), (12, 10), (96, 80), (32, 40), (50, 40)])
def test_resize_matches_bilinear_interpolation(dtype, size):
    """Even integer factors (2, 4, 8) take the strided sum; a factor of 1, an odd one (3) or a size that
    does not divide (96 / 50) take F.interpolate. The result carries no gradient."""
    generator = torch.Generator().manual_seed(0)
    masks = (5 * torch.randn(2, 7, 96, 80, generator=generator, dtype=torch.float64)).to(dtype)
    masks.requires_grad_()
    got = _resize_for_attention(masks, size)
    expected = F.interpolate(masks.detach(), size=size, mode="bilinear", align_corners=False)
    assert got.shape == expected.shape and got.dtype == dtype and not got.requires_grad
    if dtype == torch.bfloat16:  # summed in float32 like the kernel, then rounded: the same values
        assert torch.equal(got, expected)
    else:  # the kernel's own summation order: within one rounding
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(got, expected, rtol=eps, atol=16 * eps)


def test_resize_attention_masks_agree_with_interpolation():
    """The attention masks the decoder reads (sigmoid < 0.5) are the same from either resizing."""
    generator = torch.Generator().manual_seed(1)
    masks = 3 * torch.randn(1, 100, 96, 96, generator=generator)
    for size in [(48, 48), (24, 24), (12, 12)]:
        got = _resize_for_attention(masks, size).sigmoid() < 0.5
        expected = F.interpolate(masks, size=size, mode="bilinear", align_corners=False).sigmoid() < 0.5
        assert torch.equal(got, expected)
