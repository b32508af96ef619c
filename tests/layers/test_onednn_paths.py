"""The oneDNN paths taken at CPU inference (Linear in bfloat16 with a fused ReLU, Conv2d calling
oneDNN's convolution directly) against PyTorch's own F.linear / F.conv2d."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

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


class _AtenOps(TorchDispatchMode):
    """Records the names of the aten operators that run (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@needs_onednn
@pytest.mark.parametrize("channels_last", [True, False])
def test_conv2d_training_1x1_gradients_match_f_conv2d(channels_last):
    # in training oneDNN is called directly for channels-last inputs only (the ResNet's)
    torch.manual_seed(0)
    conv = Conv2d(16, 24, kernel_size=1)
    x = torch.randn(1, 16, 19, 23)
    if channels_last:
        conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _AtenOps() as ops:
            out = conv(x)
            out.square().sum().backward()
        grads = [x.grad, conv.weight.grad, conv.bias.grad]
        x_ref = x.detach().clone().requires_grad_()
        w_ref = conv.weight.detach().clone().requires_grad_()
        b_ref = conv.bias.detach().clone().requires_grad_()
        expected = F.conv2d(x_ref, w_ref, b_ref)
        expected.square().sum().backward()
    finally:
        torch.set_num_threads(threads)
    assert ("mkldnn_convolution" in ops.names) == channels_last
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, [x_ref.grad, w_ref.grad, b_ref.grad]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
