"""Time the Transformer decoder's attention on the CPU: the compiled `mask2former::attention` against the
SDPA path it replaces, at the decoder's sizes (1 image, 8 heads x 32 channels, 100 queries; 2304, 576 and
144 keys with about half of them masked, the cross-attention over the three feature scales of a 384x384
image; 100 keys without a mask, the self-attention).

Prints median milliseconds over --iters runs, the variants interleaved in every round (on a shared machine
only the ratios within one run mean much). "fwd" runs without gradients (inference); "fwd+bwd" runs the
forward and the backward of q, k and v. The SDPA path is what `multi_head_attention` runs without the
compiled op: in bfloat16 training it computes the attention in float32 (`sdpa`), `sdpa-bf16` is SDPA's own
bfloat16 kernel.

    python tools/benchmark_attention.py --threads 2 --iters 31
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mask2former.layers.extension import compiled_op_available

HEADS, CHANNELS, QUERIES = 8, 32, 100
KEYS = (2304, 576, 144, 100)  # masked cross-attention over three scales, then the unmasked self-attention
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]


def make_inputs(keys: int, dtype: torch.dtype) -> Inputs:
    """q [1, M, Q, D], k and v [1, M, K, D] as permuted views of [L, 1, M * D] projections (the decoder's
    layout), allowed [1, 1, Q, K] with about half the keys blocked (None for the self-attention)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(n, 1, HEADS * CHANNELS, generator=gen)
        .to(dtype)
        .view(n, 1, HEADS, CHANNELS)
        .permute(1, 2, 0, 3)
        for n in (QUERIES, keys, keys)
    )
    if keys == QUERIES:
        return q, k, v, None
    allowed = torch.rand(1, 1, QUERIES, keys, generator=gen) < 0.5
    allowed[..., 0] = True
    return q, k, v, allowed


def compiled(q, k, v, allowed):
    return torch.ops.mask2former.attention(q, k, v, allowed, CHANNELS**-0.5)[0]


def sdpa(q, k, v, allowed):
    """The SDPA path of `multi_head_attention`: float32 attention for bfloat16 inputs that record a gradient."""
    if q.dtype == torch.bfloat16 and q.requires_grad:
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=allowed)
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


def sdpa_bf16(q, k, v, allowed):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


def forward(fn: Callable, inputs: Inputs) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            fn(*inputs)

    return run


def forward_backward(fn: Callable, inputs: Inputs) -> Callable[[], None]:
    q, k, v, allowed = inputs

    def run() -> None:
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        out = fn(*leaves, allowed)
        torch.autograd.grad(out, leaves, torch.ones_like(out))

    return run


def median_ms(runs: dict[str, Callable[[], None]], iters: int) -> dict[str, float]:
    """Median milliseconds of each run, the runs interleaved in every round after one warm-up call each."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(iters):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=31)
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["float32", "bfloat16"])
    parser.add_argument("--keys", nargs="+", type=int, default=list(KEYS))
    args = parser.parse_args()
    if not compiled_op_available("cpu"):
        raise SystemExit("mask2former._C is not built: run `pip install --no-build-isolation -e .`")
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s), median of {args.iters} interleaved runs, ms (ratio: compiled / sdpa)")
    for dtype_name in args.dtype:
        dtype = DTYPES[dtype_name]
        for keys in args.keys:
            inputs = make_inputs(keys, dtype)
            kernels = {"compiled": compiled, "sdpa": sdpa}
            fwd = median_ms({name: forward(fn, inputs) for name, fn in kernels.items()}, args.iters)
            if dtype == torch.bfloat16:
                kernels["sdpa-bf16"] = sdpa_bf16
            train = median_ms(
                {name: forward_backward(fn, inputs) for name, fn in kernels.items()}, args.iters
            )
            print(
                f"{dtype_name:8s} keys {keys:4d}  fwd: "
                + "  ".join(f"{name} {ms:6.3f}" for name, ms in fwd.items())
                + f" ({fwd['compiled'] / fwd['sdpa']:.2f})  fwd+bwd: "
                + "  ".join(f"{name} {ms:6.3f}" for name, ms in train.items())
                + f" ({train['compiled'] / train['sdpa']:.2f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
