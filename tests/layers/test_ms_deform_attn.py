"""Multi-scale deformable attention: the compiled op (CPU, CUDA) against the PyTorch reference and the fixture."""

import importlib
import sys
import warnings

import pytest
import torch

from mask2former.layers import extension
from mask2former.layers.extension import compiled_op_available
from mask2former.layers.ms_deform_attn import ms_deform_attn, ms_deform_attn_reference
from mask2former.utils.testing import load_fixture

# The module, not the function of the same name that mask2former.layers re-exports.
msda_module = importlib.import_module("mask2former.layers.ms_deform_attn")
requires_op = pytest.mark.skipif(
    not compiled_op_available("cpu"),
    reason="mask2former._C is not built: run `pip install --no-build-isolation -e .`",
)
requires_cuda_op = pytest.mark.skipif(
    not (torch.cuda.is_available() and compiled_op_available("cuda")),
    reason="needs a GPU and mask2former._C built with CUDA kernels",
)


def random_inputs(
    batch: int = 2,
    levels: tuple[tuple[int, int], ...] = ((6, 7), (3, 4), (2, 1)),
    queries: int = 9,
    heads: int = 2,
    channels: int = 5,
    points: int = 3,
    dtype: torch.dtype = torch.float64,
    device: str = "cpu",
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    """(value [B,S,M,D], spatial_shapes [L,2], level_start_index [L], locations [B,Q,M,L,P,2], weights [B,Q,M,L,P]).

    Locations span [-0.3, 1.3], so some samples fall partly or wholly outside the maps.
    """
    gen = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(levels, dtype=torch.long)
    areas = shapes.prod(1)
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    L = len(levels)
    value = torch.randn(batch, int(areas.sum()), heads, channels, generator=gen, dtype=torch.float64)
    locations = (
        torch.rand(batch, queries, heads, L, points, 2, generator=gen, dtype=torch.float64) * 1.6 - 0.3
    )
    weights = torch.rand(batch, queries, heads, L, points, generator=gen, dtype=torch.float64)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return (
        value.to(device, dtype),
        shapes.to(device),
        starts.to(device),
        locations.to(device, dtype),
        weights.to(device, dtype),
    )


def run_with_grads(fn, inputs: tuple[torch.Tensor, ...], grad_output: torch.Tensor | None = None):
    """Output and the gradients of (value, locations, weights) for sum(output * grad_output)."""
    value, shapes, starts, locations, weights = (
        t.detach().requires_grad_(t.is_floating_point()) for t in inputs
    )
    out = fn(value, shapes, starts, locations, weights)
    if grad_output is None:
        grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out.backward(grad_output.to(out.device, out.dtype))
    return out.detach(), value.grad, locations.grad, weights.grad


def compiled(value, shapes, starts, locations, weights):
    return ms_deform_attn(value, shapes, starts, locations, weights, impl="compiled")


def reference(value, shapes, starts, locations, weights):
    return ms_deform_attn_reference(value, shapes, locations, weights)


@requires_op
def test_fixture_case_float64():
    case = load_fixture("reference_tiny_r18.pt")["msda"]
    inputs = tuple(
        case[k]
        for k in ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
    )
    got = run_with_grads(compiled, inputs, case["grad_output"])
    expected = (
        case["output"],
        case["grad_value"],
        case["grad_sampling_locations"],
        case["grad_attention_weights"],
    )
    for name, g, e in zip(("output", "grad_value", "grad_locations", "grad_weights"), got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-9, msg=lambda m, name=name: f"{name}: {m}")


@requires_op
@pytest.mark.parametrize(
    "case",
    [
        dict(),
        dict(batch=3, channels=7, heads=3, points=1),
        dict(batch=1, levels=((13, 5), (1, 1)), channels=1, queries=17),
        dict(levels=((8, 12), (4, 6), (2, 3), (1, 2)), channels=32, heads=4, points=4),
    ],
)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_cpu_op_matches_reference(case, dtype, tol):
    inputs = random_inputs(dtype=dtype, **case)
    for name, g, e in zip(
        ("output", "grad_value", "grad_locations", "grad_weights"),
        run_with_grads(compiled, inputs),
        run_with_grads(reference, inputs),
    ):
        assert g.dtype == dtype, name
        torch.testing.assert_close(g, e, rtol=tol, atol=tol, msg=lambda m, name=name: f"{name}: {m}")


@requires_op
def test_gradcheck_float64():
    value, shapes, starts, locations, weights = random_inputs(
        batch=2, levels=((4, 3), (2, 2)), queries=3, heads=2, channels=3, points=2
    )
    args = [t.requires_grad_() for t in (value, locations, weights)]

    def fn(v, loc, w):
        return torch.ops.mask2former.ms_deform_attn(v, shapes, starts, loc, w)

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7)


@requires_op
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
def test_cpu_reduced_precision_with_float32_locations(dtype, tol):
    """Half-precision values with float32 locations and weights, as under autocast."""
    value, shapes, starts, locations, weights = random_inputs(channels=8)
    value_low = value.to(dtype)
    grad_output = torch.randn(2, 9, 2 * 8, dtype=torch.float64).to(dtype).double()  # exact in dtype
    got = run_with_grads(
        compiled, (value_low, shapes, starts, locations.float(), weights.float()), grad_output
    )
    expected = run_with_grads(compiled, (value_low.double(), shapes, starts, locations, weights), grad_output)
    assert [t.dtype for t in got] == [dtype, dtype, torch.float32, torch.float32]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.double(), e, rtol=tol, atol=tol * max(1.0, e.abs().max().item()))


@requires_op
@pytest.mark.parametrize("channels", [16, 32, 48, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_forward_vector_widths_match_float64(dtype, channels):
    """D a multiple of 16 takes the AVX-512 forward where the CPU has it (1-4 registers per head): the
    result equals the float64 op on the same (rounded) values, rounded once to the value's dtype."""
    value, shapes, starts, locations, weights = random_inputs(
        levels=((9, 13), (5, 7), (3, 4)), queries=37, heads=3, channels=channels, points=4
    )
    value_low = value.to(dtype)
    got = compiled(value_low, shapes, starts, locations.float(), weights.float())
    expected = compiled(
        value_low.double(), shapes, starts, locations.float().double(), weights.float().double()
    )
    assert got.dtype == dtype
    # float32 accumulation, then one rounding to the output dtype (bfloat16: 8 bits of mantissa)
    tol = 1e-5 if dtype == torch.float32 else 2**-8
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol * expected.abs().max().item())


def check_backward_matches_float64(dtype, channels, levels, points):
    """The gradients for values in dtype equal the float64 op's on the same (rounded) values and output
    gradient, to float32 accumulation (grad_value then rounded once to the value's dtype)."""
    value, shapes, starts, locations, weights = random_inputs(
        levels=levels, queries=37, heads=3, channels=channels, points=points
    )
    value_low, locations, weights = value.to(dtype), locations.float(), weights.float()
    grad_output = torch.randn(2, 37, 3 * channels, dtype=torch.float64).to(dtype).double()  # exact in dtype
    got = run_with_grads(compiled, (value_low, shapes, starts, locations, weights), grad_output)
    expected = run_with_grads(
        compiled, (value_low.double(), shapes, starts, locations.double(), weights.double()), grad_output
    )
    assert [t.dtype for t in got] == [dtype, dtype, torch.float32, torch.float32]
    names = ("output", "grad_value", "grad_locations", "grad_weights")
    for name, g, e, rounded in zip(names, got, expected, (True, True, False, False)):
        tol = 2**-8 if rounded and dtype == torch.bfloat16 else 1e-5
        torch.testing.assert_close(
            g.double(), e, rtol=tol, atol=tol * e.abs().max().item(), msg=lambda m, name=name: f"{name}: {m}"
        )


@requires_op
@pytest.mark.parametrize("channels", [16, 32, 48, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_backward_vector_widths_match_float64(dtype, channels):
    """D a multiple of 16 takes the AVX-512 backward where the CPU has it (1-4 registers per head)."""
    check_backward_matches_float64(dtype, channels, levels=((9, 13), (5, 7), (3, 4)), points=4)


@requires_op
@pytest.mark.parametrize(
    "levels,points",
    [
        (((9, 13),), 1),  # 1 sample per (query, head)
        (((9, 13), (5, 7), (3, 4), (2, 2)), 4),  # 16: one full block of 16 lanes
        (((9, 13), (5, 7), (3, 4)), 7),  # 21: a full block and a block of 5
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_backward_sample_blocks_match_float64(dtype, levels, points):
    """The AVX-512 kernels set up the L * P samples of a (query, head) 16 at a time: counts below, at and
    above 16 give the gradients of the float64 op."""
    check_backward_matches_float64(dtype, 32, levels=levels, points=points)


@requires_op
def test_opcheck():
    inputs = list(random_inputs(batch=1, queries=4, channels=3))
    for i in (0, 3, 4):
        inputs[i].requires_grad_()
    torch.library.opcheck(torch.ops.mask2former.ms_deform_attn.default, tuple(inputs))
    grad_output = torch.randn(1, 4, 2 * 3, dtype=torch.float64)
    detached = tuple(t.detach() for t in inputs)
    for mask in ([True, True, True], [False, True, False]):
        torch.library.opcheck(
            torch.ops.mask2former.ms_deform_attn_backward.default, (grad_output, *detached, mask)
        )


@requires_op
def test_export_keeps_the_op():
    value, shapes, starts, locations, weights = random_inputs(dtype=torch.float32)

    class Attn(torch.nn.Module):
        def forward(self, value, locations, weights):
            return ms_deform_attn(value, shapes, starts, locations, weights)

    exported = torch.export.export(Attn(), (value, locations, weights))
    targets = {str(node.target) for node in exported.graph.nodes}
    assert "mask2former.ms_deform_attn.default" in targets
    torch.testing.assert_close(
        exported.module()(value, locations, weights), reference(value, shapes, starts, locations, weights)
    )


@requires_op
def test_input_errors_name_the_argument():
    value, shapes, starts, locations, weights = random_inputs()
    with pytest.raises(RuntimeError, match="attention_weights"):
        compiled(value, shapes, starts, locations, weights[..., :1])
    with pytest.raises(RuntimeError, match="level_start_index"):
        compiled(value, shapes, starts + 1, locations, weights)
    with pytest.raises(RuntimeError, match="spatial_shapes cover"):
        compiled(value[:, :-1], shapes, starts, locations, weights)
    with pytest.raises(ValueError, match="impl"):
        ms_deform_attn(value, shapes, starts, locations, weights, impl="cuda")


@requires_op
@pytest.mark.parametrize(
    "spoil,message",
    [
        (
            lambda a: a.__setitem__(1, a[1].flip(0)),
            "level_start_index\\[1\\] = .* but the levels before it hold",
        ),
        (
            lambda a: a.__setitem__(1, a[1] * torch.tensor([[1, -1], [1, 1], [1, 1]])),
            "spatial_shapes\\[0\\] must be positive",
        ),
        (lambda a: a.__setitem__(1, a[1][:2]), "spatial_shapes must be \\[L, 2\\] with L = 3"),
        (lambda a: a.__setitem__(2, a[2].int()), "must be int64"),
        (lambda a: a.__setitem__(0, a[0][:, 1:]), "spatial_shapes cover 56 positions but value has S = 55"),
    ],
)
def test_inconsistent_levels_are_refused_before_any_kernel(spoil, message):
    """The levels are checked against value on the host, in the forward and in the backward."""
    args = list(random_inputs())
    spoil(args)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.mask2former.ms_deform_attn(*args)
    grad_output = torch.zeros(2, 9, 10, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.mask2former.ms_deform_attn_backward(grad_output, *args, [True, True, True])


@requires_op
def test_only_the_needed_gradients_are_returned():
    value, shapes, starts, locations, weights = random_inputs()
    grad_output = torch.randn(2, 9, 10, dtype=torch.float64)
    full = torch.ops.mask2former.ms_deform_attn_backward(
        grad_output, value, shapes, starts, locations, weights, [True, True, True]
    )
    part = torch.ops.mask2former.ms_deform_attn_backward(
        grad_output, value, shapes, starts, locations, weights, [False, True, False]
    )
    assert part[0].shape == (0,) and part[2].shape == (0,)
    torch.testing.assert_close(part[1], full[1], rtol=0, atol=0)
    # Through autograd: only the inputs that require grad get one.
    locations.requires_grad_()
    compiled(value, shapes, starts, locations, weights).backward(grad_output)
    assert value.grad is None and weights.grad is None
    torch.testing.assert_close(locations.grad, full[1], rtol=0, atol=0)


@requires_op
def test_cpu_backward_is_deterministic_and_allowed_in_deterministic_mode():
    """The CPU backward writes each gradient from one thread in a fixed order: bit-identical runs, and
    no alert under torch.use_deterministic_algorithms(True) (the CUDA backward raises there: its
    value gradient uses atomics; tools/gpu_check.py checks that on a GPU)."""
    inputs = random_inputs(dtype=torch.float32, queries=64, channels=16)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = run_with_grads(compiled, inputs)
        second = run_with_grads(compiled, inputs)
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_fallback_warns_once_when_the_op_is_missing(monkeypatch):
    monkeypatch.setattr(extension, "_loaded", {"module": None})
    monkeypatch.setattr(msda_module, "_fallback_warned", set())
    inputs = random_inputs()
    with pytest.warns(RuntimeWarning, match="pip install --no-build-isolation -e ."):
        first = ms_deform_attn(*inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = ms_deform_attn(*inputs)
    expected = reference(*inputs)
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    torch.testing.assert_close(second, expected, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="impl='compiled'"):
        ms_deform_attn(*inputs, impl="compiled")


@requires_op
@pytest.mark.skipif(sys.platform != "linux", reason="setup.py compiles with OpenMP on Linux")
def test_cpu_kernels_run_on_torchs_openmp_threads():
    """ATen's parallel_for runs on one thread in an extension compiled without OpenMP; compiled with it, the
    extension shares the libgomp that torch loaded (one OpenMP runtime, one thread pool, in the process)."""
    assert "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()
    assert extension.load_extension().WITH_OPENMP
    with open("/proc/self/maps") as maps:
        runtimes = {line.split()[-1] for line in maps if "libgomp" in line}
    assert len(runtimes) == 1, runtimes


@requires_cuda_op
@pytest.mark.parametrize(
    "dtype,tol",
    [(torch.float32, 1e-5), (torch.float16, 3e-3), (torch.bfloat16, 2e-2), (torch.float64, 1e-10)],
)
@pytest.mark.parametrize("channels", [32, 5])
def test_cuda_op_matches_float64_cpu_op(dtype, tol, channels):
    value, shapes, starts, locations, weights = random_inputs(
        batch=2, levels=((13, 17), (7, 9), (4, 5)), queries=40, heads=4, channels=channels, points=4
    )
    # The reference sees the same rounded values and output gradient, so only the kernel's arithmetic is tested.
    value = value.to(dtype).double()
    grad_output = torch.randn(2, 40, 4 * channels, dtype=torch.float64).to(dtype).double()
    expected = run_with_grads(compiled, (value, shapes, starts, locations, weights), grad_output)
    # Half-precision values with float32 locations and weights, as the pixel decoder gives them under autocast.
    loc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    cuda_inputs = (
        value.cuda().to(dtype),
        shapes,
        starts,
        locations.cuda().to(loc_dtype),
        weights.cuda().to(loc_dtype),
    )
    got = run_with_grads(compiled, cuda_inputs, grad_output)
    assert [t.dtype for t in got] == [dtype, dtype, loc_dtype, loc_dtype]
    for name, g, e in zip(("output", "grad_value", "grad_locations", "grad_weights"), got, expected):
        scale = max(1.0, e.abs().max().item())
        torch.testing.assert_close(
            g.double().cpu(), e, rtol=tol, atol=tol * scale, msg=lambda m, name=name: f"{name}: {m}"
        )


@requires_cuda_op
def test_cuda_gradcheck_and_opcheck():
    value, _, _, locations, weights = random_inputs(device="cuda", channels=3)
    _, shapes, starts, _, _ = random_inputs()  # the levels stay on the CPU, as the pixel decoder passes them
    args = [t.requires_grad_() for t in (value, locations, weights)]

    def fn(v, loc, w):
        return torch.ops.mask2former.ms_deform_attn(v, shapes, starts, loc, w)

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7)
    torch.library.opcheck(
        torch.ops.mask2former.ms_deform_attn.default, (args[0], shapes, starts, args[1], args[2])
    )


@requires_cuda_op
def test_cuda_backward_alerts_in_deterministic_mode():
    value, shapes, starts, locations, weights = random_inputs(dtype=torch.float32)
    cuda_value = value.cuda().requires_grad_()
    out = compiled(cuda_value, shapes, starts, locations.cuda(), weights.cuda())
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="ms_deform_attn_backward_cuda"):
            out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous)


@requires_op
def test_torch_compile_fullgraph_forward_backward():
    inputs = random_inputs(dtype=torch.float32)
    expected = run_with_grads(reference, inputs)
    fn = torch.compile(ms_deform_attn, backend="aot_eager", fullgraph=True)
    got = run_with_grads(fn, inputs)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
