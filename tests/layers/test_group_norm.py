"""layers.GroupNorm: the compiled backward for channels-last CPU inputs against F.group_norm's autograd
(float64 gradcheck, float32 and bfloat16 against float64), and the paths that keep F.group_norm."""

import pytest
import torch
import torch.nn.functional as F

from mask2former.layers import GroupNorm
from mask2former.layers.extension import compiled_op_available
from mask2former.layers.group_norm import _GroupNormChannelsLast


def _norm(channels, groups=4, affine=True, seed=0):
    norm = GroupNorm(groups, channels, affine=affine)
    if affine:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            norm.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
            norm.bias.copy_(torch.randn(channels, generator=generator))
    return norm


def _channels_last(shape, dtype, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(shape, generator=generator, dtype=torch.float64) + 1  # not zero-mean
    return x.to(dtype).to(memory_format=torch.channels_last).requires_grad_()


def _grads(norm, x, grad, fn):
    x.grad = None
    params = list(norm.parameters())
    for p in params:
        p.grad = None
    fn(x).backward(grad)
    return [x.grad] + [p.grad for p in params]


@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck_float64(affine):
    """Gradients of input, weight and bias in float64 against finite differences."""
    assert compiled_op_available("cpu"), "mask2former._C is not built"
    x = _channels_last((2, 8, 3, 5), torch.float64)
    generator = torch.Generator().manual_seed(3)
    weight = (
        (torch.rand(8, generator=generator, dtype=torch.float64) + 0.5).requires_grad_() if affine else None
    )
    bias = torch.randn(8, generator=generator, dtype=torch.float64).requires_grad_() if affine else None
    inputs = (x, weight, bias) if affine else (x,)

    def fn(x, *affine_params):
        w, b = affine_params if affine else (None, None)
        return _GroupNormChannelsLast.apply(x, w, b, 4, 1e-5)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 256, 24, 24), (2, 64, 7, 9)])
def test_gradients_match_float64(dtype, shape):
    """Input, weight and bias gradients of a channels-last input, against F.group_norm in float64."""
    norm = _norm(shape[1], groups=32)
    x = _channels_last(shape, dtype)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    grad = grad.to(memory_format=torch.channels_last)
    got = _grads(norm, x, grad, norm)
    assert got[0].is_contiguous(memory_format=torch.channels_last) and got[0].dtype == dtype
    reference = _norm(shape[1], groups=32).double()
    x64 = x.detach().double().requires_grad_()
    expected = _grads(reference, x64, grad.double(), reference)
    input_tol = 1e-5 if dtype == torch.float32 else 1e-2  # bfloat16: the gradient's own rounding
    torch.testing.assert_close(got[0].double(), expected[0], rtol=input_tol, atol=input_tol)
    for g, e in zip(got[1:], expected[1:]):  # accumulated in float32 in both dtypes
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-4 * e.abs().max().item())


def test_the_compiled_backward_runs_where_it_applies(monkeypatch):
    """Channels-last CPU inputs with a gradient take the compiled backward; channel-first inputs, no
    gradient, or a contiguous tensor keep F.group_norm (same values)."""
    calls = []
    op = torch.ops.mask2former.group_norm_backward_channels_last

    def counting(*args):
        calls.append(args[1].shape)
        return op(*args)

    monkeypatch.setattr(torch.ops.mask2former, "group_norm_backward_channels_last", counting)
    norm = _norm(16)
    x = _channels_last((1, 16, 6, 6), torch.float32)
    norm(x).sum().backward()
    assert calls == [x.shape]
    first = x.detach().contiguous().requires_grad_()
    norm(first).sum().backward()
    with torch.no_grad():
        torch.testing.assert_close(norm(x), F.group_norm(x, 4, norm.weight, norm.bias))
    assert calls == [x.shape]


def test_op_checks_and_fake():
    x = _channels_last((1, 8, 4, 4), torch.float32).detach()
    mean, rstd = torch.zeros(1, 4), torch.ones(1, 4)
    with pytest.raises(RuntimeError, match="do not split into 3 groups"):
        torch.ops.mask2former.group_norm_backward_channels_last(x, x, mean, rstd, None, 3)
    with pytest.raises(RuntimeError, match="grad_output must match input"):
        torch.ops.mask2former.group_norm_backward_channels_last(x.double(), x, mean, rstd, None, 4)
    torch.library.opcheck(
        torch.ops.mask2former.group_norm_backward_channels_last, (x, x, mean, rstd, torch.ones(8), 4)
    )
