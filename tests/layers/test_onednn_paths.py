"""The oneDNN paths taken at CPU inference (Linear in bfloat16 with a fused ReLU, Conv2d calling
oneDNN's convolution directly) against PyTorch's own F.linear / F.conv2d."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mask2former.layers import Conv2d, Linear, linear

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
@pytest.mark.parametrize(
    ("kernel_size", "channels_last", "onednn_op"),
    [(1, True, "_linear_pointwise"), (3, True, "mkldnn_convolution"), (1, False, None)],
)
def test_conv2d_training_gradients_match_f_conv2d(kernel_size, channels_last, onednn_op):
    # in training oneDNN is called directly for channels-last inputs only (the ResNet's): a 1x1
    # convolution as a linear layer over the channels (forward and backward), others as a convolution
    torch.manual_seed(0)
    conv = Conv2d(16, 24, kernel_size=kernel_size, padding=kernel_size // 2)
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
        expected = F.conv2d(x_ref, w_ref, b_ref, padding=kernel_size // 2)
        expected.square().sum().backward()
    finally:
        torch.set_num_threads(threads)
    called = ops.names & {"_linear_pointwise", "mkldnn_convolution"}
    assert called == ({onednn_op} if onednn_op else set()), ops.names
    if onednn_op == "_linear_pointwise":
        assert "convolution_backward" not in ops.names
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, [x_ref.grad, w_ref.grad, b_ref.grad]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("in_channels", "channels_last", "as_linear"),
    [(128, True, True), (128, False, False), (64, True, False)],
    ids=["channels-last", "channel-first", "64-channels"],
)
def test_conv2d_pointwise_under_autocast_training_as_a_linear_layer(in_channels, channels_last, as_linear):
    """In training under CPU autocast a channels-last 1x1 convolution with at least 128 input and
    output channels runs as a linear layer over the channels (bfloat16 products, no convolution
    operator, a channels-last result); others stay convolutions. Values and gradients within
    bfloat16 rounding of float64 F.conv2d."""
    torch.manual_seed(0)
    conv = Conv2d(in_channels, 160, kernel_size=1)
    x = torch.randn(1, in_channels, 7, 9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    weights = torch.randn(1, 160, 7, 9)
    with _AtenOps() as ops:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(x)
        grads = torch.autograd.grad((out.float() * weights).sum(), (x, conv.weight, conv.bias))
    assert out.dtype == torch.bfloat16
    if as_linear:
        assert not ops.names & {"convolution", "convolution_backward"}, ops.names
        assert out.is_contiguous(memory_format=torch.channels_last)
    else:
        assert "convolution" in ops.names, ops.names
    inputs = (x.double(), conv.weight.double(), conv.bias.double())
    expected = F.conv2d(*inputs)
    expected_grads = torch.autograd.grad((expected * weights.double()).sum(), (x, conv.weight, conv.bias))
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=2e-2)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


@needs_onednn
@pytest.mark.parametrize("activation", ["none", "relu"])
@pytest.mark.parametrize("shape", [(5, 7, 16), (33, 16)])
def test_linear_training_on_onednn_matches_float64(activation, shape):
    """float32 training: forward and the three backward products on oneDNN, against float64 F.linear."""
    torch.manual_seed(0)
    x64 = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    w64 = torch.randn(12, 16, dtype=torch.float64, requires_grad=True)
    b64 = torch.randn(12, dtype=torch.float64, requires_grad=True)
    x, w, b = (t.detach().float().requires_grad_() for t in (x64, w64, b64))
    with _AtenOps() as ops:
        out = linear(x, w, b, activation)
        grad = torch.randn_like(out)
        out.backward(grad)
    assert "_linear_pointwise" in ops.names and not ops.names & {"mm", "addmm"}, ops.names
    expected = F.linear(x64, w64, b64)
    expected = expected.relu() if activation == "relu" else expected
    expected.backward(grad.double())
    torch.testing.assert_close(out, expected.float(), rtol=1e-5, atol=1e-5)
    for got, want in zip((x.grad, w.grad, b.grad), (x64.grad, w64.grad, b64.grad)):
        torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.parametrize(
    "trainable, with_bias",
    [
        (("x", "weight"), True),
        (("x", "weight"), False),
        (("weight",), False),
        (("x",), True),
        (("x", "bias"), True),
    ],
)
def test_linear_training_on_onednn_gives_exactly_the_gradients_asked_for(trainable, with_bias):
    """Frozen weights, frozen inputs, no bias: each gradient autograd asks for matches float64, the others stay None."""
    torch.manual_seed(1)
    x64 = torch.randn(40, 16, dtype=torch.float64, requires_grad="x" in trainable)
    w64 = torch.randn(12, 16, dtype=torch.float64, requires_grad="weight" in trainable)
    b64 = torch.randn(12, dtype=torch.float64, requires_grad="bias" in trainable) if with_bias else None
    tensors64 = {"x": x64, "weight": w64, "bias": b64}
    tensors = {
        k: None if t is None else t.detach().float().requires_grad_(t.requires_grad)
        for k, t in tensors64.items()
    }
    grad = torch.randn(40, 12, dtype=torch.float64)
    with _AtenOps() as ops:
        linear(tensors["x"], tensors["weight"], tensors["bias"]).backward(grad.float())
    assert "_linear_pointwise" in ops.names, ops.names
    F.linear(x64, w64, b64).backward(grad)
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if name in trainable:
            torch.testing.assert_close(tensor.grad, tensors64[name].grad.float(), rtol=1e-5, atol=1e-5)
        else:
            assert tensor.grad is None, name


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_linear_and_conv_compile_without_graph_breaks(grad):
    """Under torch.compile the oneDNN paths step aside before any check Dynamo cannot trace (a graph break
    there made Dynamo recompile `linear` for every weight shape up to its limit, then run it eagerly)."""
    torch.manual_seed(0)
    layer, conv = Linear(16, 8), Conv2d(8, 4, kernel_size=3, padding=1)

    def model(x):
        return conv(layer(x, "relu").permute(0, 3, 1, 2))

    x = torch.randn(2, 5, 6, 16)
    with torch.set_grad_enabled(grad):
        compiled = torch.compile(model, backend="eager", fullgraph=True)  # raises at a graph break
        torch.testing.assert_close(compiled(x), model(x))
