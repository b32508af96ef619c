"""Time multi-scale deformable attention: the compiled op against the PyTorch reference.

Prints forward and forward+backward milliseconds (median over --iters runs, after warm-up) per shape,
dtype and implementation. Shapes (8 heads x 32 channels, 4 points, 3 levels, queries = all positions):
    training   2 images, levels 128x128, 64x64, 32x32 (21,504 queries): 1024x1024 inputs
    inference  1 image, levels 100x152, 50x76, 25x38 (19,950 queries): an 800x1216 input
    cpu        1 image, levels 32x48, 16x24, 8x12 (2,016 queries): small enough for a 2-core CPU
    cpu_train  1 image, levels 48x48, 24x24, 12x12 (3,024 queries): CPU training at 384x384

    python tools/benchmark_msda.py --device cpu --shape cpu --iters 20
    python tools/benchmark_msda.py --device cuda --shape training inference --dtype float32 float16 bfloat16
Half-precision runs give the compiled op float32 locations and weights, as the pixel decoder produces them
under autocast; the reference (grid_sample) needs one dtype, so it gets them in the run's dtype.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from mask2former.layers.extension import compiled_op_available
from mask2former.layers.ms_deform_attn import ms_deform_attn

SHAPES = {
    "training": dict(batch=2, levels=((128, 128), (64, 64), (32, 32))),
    "inference": dict(batch=1, levels=((100, 152), (50, 76), (25, 38))),
    "cpu": dict(batch=1, levels=((32, 48), (16, 24), (8, 12))),
    "cpu_train": dict(batch=1, levels=((48, 48), (24, 24), (12, 12))),
}
HEADS, CHANNELS, POINTS = 8, 32, 4
DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def make_inputs(batch: int, levels: tuple[tuple[int, int], ...], dtype: torch.dtype, device: str) -> dict:
    """Random inputs with queries at every position: value [B,S,M,D], locations [B,S,M,L,P,2], weights."""
    gen = torch.Generator().manual_seed(0)
    shapes = torch.tensor(levels, dtype=torch.long)
    areas = shapes.prod(1)
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    S, L = int(areas.sum()), len(levels)
    value = torch.randn(batch, S, HEADS, CHANNELS, generator=gen)
    # Reference points plus offsets of a few pixels, some of them past the border, as in the pixel decoder.
    locations = torch.rand(batch, S, HEADS, L, POINTS, 2, generator=gen) * 1.1 - 0.05
    weights = (
        torch.rand(batch, S, HEADS, L * POINTS, generator=gen).softmax(-1).view(batch, S, HEADS, L, POINTS)
    )
    coord_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return dict(
        value=value.to(device, dtype),
        spatial_shapes=shapes.to(device),
        level_start_index=starts.to(device),
        sampling_locations=locations.to(device, coord_dtype),
        attention_weights=weights.to(device, coord_dtype),
    )


def time_once(fn: Callable[[], object], device: str) -> float:
    """Milliseconds of one call of fn()."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def benchmarks(inputs: dict, impl: str, device: str) -> dict[str, Callable[[], object]]:
    """{"fwd": forward under no_grad, "fwd+bwd": forward and backward} for one implementation."""
    if impl == "reference":  # grid_sample needs value, grid and weights in one dtype
        dtype = inputs["value"].dtype
        inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    leaves = {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in inputs.items()}
    value, locations = inputs["value"], inputs["sampling_locations"]
    grad = torch.randn(value.shape[0], locations.shape[1], HEADS * CHANNELS, device=device, dtype=value.dtype)

    def forward():
        with torch.no_grad():
            return ms_deform_attn(**inputs, impl=impl)

    def forward_backward():
        ms_deform_attn(**leaves, impl=impl).backward(grad)

    return {"fwd": forward, "fwd+bwd": forward_backward}


def median_ms(fns: dict[str, Callable[[], object]], iters: int, device: str) -> dict[str, float]:
    """Median milliseconds of each fn after 2 warm-up calls; the fns take turns, so that a machine
    shared with other work slows them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for step in range(iters + 2):
        for name, fn in fns.items():
            ms = time_once(fn, device)
            if step >= 2:
                times[name].append(ms)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device, choices=["cpu", "cuda"])
    parser.add_argument(
        "--shape", nargs="+", choices=sorted(SHAPES), help="default: cpu on CPU, else training inference"
    )
    parser.add_argument(
        "--dtype",
        nargs="+",
        choices=sorted(DTYPES),
        help="default: float32 on CPU, else float32 float16 bfloat16",
    )
    parser.add_argument(
        "--iters", type=int, default=10, help="timed runs per measurement (median is printed)"
    )
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for CPU runs")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = args.shape or (["cpu"] if args.device == "cpu" else ["training", "inference"])
    dtypes = args.dtype or (["float32"] if args.device == "cpu" else ["float32", "float16", "bfloat16"])
    impls = (["compiled"] if compiled_op_available(args.device) else []) + ["reference"]
    if "compiled" not in impls:
        print(f"compiled op not available on {args.device}: timing the reference only")
    name = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"device: {name}; torch {torch.__version__}; median of {args.iters} runs")
    print(
        f"{'shape':<10} {'dtype':<9} {'impl':<10} {'fwd ms':>9} {'fwd+bwd ms':>11} {'speed-up fwd / fwd+bwd':>24}"
    )
    for shape in shapes:
        for dtype_name in dtypes:
            inputs = make_inputs(**SHAPES[shape], dtype=DTYPES[dtype_name], device=args.device)
            fns = {
                (impl, kind): fn
                for impl in impls
                for kind, fn in benchmarks(inputs, impl, args.device).items()
            }
            ms = median_ms(fns, args.iters, args.device)
            ref_fwd, ref_both = ms["reference", "fwd"], ms["reference", "fwd+bwd"]
            for impl in impls:
                fwd, both = ms[impl, "fwd"], ms[impl, "fwd+bwd"]
                speedup = f"{ref_fwd / fwd:.1f}x / {ref_both / both:.1f}x"
                print(f"{shape:<10} {dtype_name:<9} {impl:<10} {fwd:>9.2f} {both:>11.2f} {speedup:>24}")


if __name__ == "__main__":
    main()
