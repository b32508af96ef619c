"""The oneDNN paths taken at CPU inference (Linear in bfloat16 with a fused ReLU, Conv2d calling
oneDNN's convolution directly) against PyTorch's own F.linear / F.conv2d."""

import pytest
import torch
import torch.nn.functional as F

from mask2former.layers import Conv2d, Linear

needs_onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN (mkldnn)"
)


@needs_onednn
@pytest.mark.parametrize("activation", ["none", "relu"])
def test_linear_under_bf16_autocast_matches_f_linear(activation):
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no oneDNN bfloat16 support")
    torch.manual_seed(0)
    layer = Linear(64, 48)
    x = torch.randn(2, 37, 64)  # float32 input: Linear casts it as autocast would
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x, activation=activation)
        expected = F.linear(x, layer.weight, layer.bias)  # autocast: bfloat16 GEMM
    if activation == "relu":
        expected = expected.relu()
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), rtol=1e-2, atol=2e-2)


@needs_onednn
@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 1},
        {"kernel_size": 3, "padding": 1, "stride": 2},
        {"kernel_size": 3, "padding": 2, "dilation": 2, "groups": 4, "bias": False},
    ],
)
def test_conv2d_direct_onednn_matches_f_conv2d_on_one_thread(kwargs):
    torch.manual_seed(0)
    conv = Conv2d(16, 24, **kwargs)
    x = torch.randn(1, 16, 19, 23)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # where PyTorch itself sends 1x1 kernels to im2col + GEMM
    try:
        with torch.inference_mode():
            out = conv(x)
            expected = F.conv2d(
                x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups
            )
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
