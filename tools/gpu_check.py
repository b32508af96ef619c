#!/usr/bin/env python
"""The GPU check: build the CUDA kernels, prove them correct, and time the targets, in one run.

    python tools/gpu_check.py --out DIR [--fixtures DIR]     # on a machine with a CUDA GPU
    python tools/gpu_check.py --dry-run --out DIR            # the same code paths on the CPU, tiny shapes

(`make gpu-check` and `make gpu-check-dry` run these.) Stages, each reported on its own so that one
failure does not hide the rest:
  build       `setup.py build_ext --inplace` with FORCE_CUDA=1 for the visible GPU's architecture, then
              a check that the loaded `mask2former._C` holds CUDA kernels (fatal when not)
  op          the op against the float64 CPU op: forward and the three gradients, float32 / float16 /
              bfloat16, on random and edge-case shapes (1x1 and non-square levels, points outside the
              maps, heads x channels 8x32, 1x8 and 2x5); inconsistent levels refused; levels on the GPU
  determinism the CUDA backward raises under torch.use_deterministic_algorithms(True) when it scatters
              the value gradient, and is bit-identical and allowed without it (the CPU backward always)
  opcheck / compile / export   torch.library.opcheck, torch.compile (fullgraph, forward and backward)
              and torch.export of the op
  pytest      the CUDA tests of tests/test_ms_deform_attn.py
  parity      the tiny R18 model of the reference fixture: device outputs against the fixture's (and the
              CPU's); host synchronisations of the post-processing (one per image) and of the whole model
  train       one training step with AMP on a small model: finite losses and gradients, weights updated
  timings     op at the training shape (batch 2 of 1024x1024) forward and forward+backward in fp32 and
              bf16, at the inference shape (800x1216) forward in bf16; R50 COCO panoptic inference at
              800x1216 with all three outputs in fp32 and bf16; a training step at batch 2 of 1024x1024
              with AMP (time, peak memory per image); last, inference with MODEL.COMPILE True (skipped,
              and said so, when the remaining time budget is short)
Times come from torch.cuda.Event after warm-up (the training step: synchronised wall clock, as
tools/benchmark_train.py measures it) and are printed next to their targets; targets are reported,
not asserted. Writes DIR/gpu_check.json and DIR/gpu_check.txt (a readable table). Exit status: 0 when
every correctness check passed, 1 when one failed or a stage broke, 2 when the CUDA kernels were not built.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's package and the extension built into it win

import torch  # noqa: E402

INFERENCE_CONFIG = "configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml"
SMALL_CONFIG = "configs/shapes/maskformer2_R18_tiny_test.yaml"
FIXTURE_NAME = "reference_tiny_r18.pt"
# Largest error of a result relative to the float64 CPU op's largest magnitude (at least 1).
OP_TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


@dataclass(frozen=True)
class OpShape:
    batch: int
    levels: tuple[tuple[int, int], ...]
    queries: int  # 0: one per position (the encoder's self-attention)
    heads: int
    channels: int
    points: int


@dataclass(frozen=True)
class Profile:
    """Sizes of one mode: the full GPU run or the dry run on the CPU."""

    device: str
    op_cases: dict[str, OpShape]
    train_op: OpShape
    inference_op: OpShape
    inference_config: str
    inference_size: tuple[int, int]
    train_config: str
    train_batch: int
    train_size: tuple[int, int]
    warmup: int
    iters: int
    model_warmup: int
    model_iters: int
    train_iters: int
    compile_backend: str  # for the op's torch.compile
    compile_min_remaining_s: float  # the model's compile stage runs only with this much budget left


EDGE_CASES = {
    "random levels, 8 heads x 32 channels": OpShape(2, ((13, 17), (7, 9), (4, 5)), 50, 8, 32, 4),
    "1x1 and non-square levels, 1 head x 8 channels": OpShape(1, ((1, 1), (3, 7), (9, 2)), 30, 1, 8, 3),
    "channels not a multiple of the vector width (2 x 5)": OpShape(2, ((6, 7), (3, 4), (2, 1)), 9, 2, 5, 3),
}
GPU = Profile(
    device="cuda",
    op_cases=EDGE_CASES,
    train_op=OpShape(2, ((128, 128), (64, 64), (32, 32)), 0, 8, 32, 4),
    inference_op=OpShape(1, ((100, 152), (50, 76), (25, 38)), 0, 8, 32, 4),
    inference_config=INFERENCE_CONFIG,
    inference_size=(800, 1216),
    train_config=INFERENCE_CONFIG,
    train_batch=2,
    train_size=(1024, 1024),
    warmup=5,
    iters=20,
    model_warmup=2,
    model_iters=10,
    train_iters=5,
    compile_backend="inductor",
    compile_min_remaining_s=100.0,
)
DRY = Profile(
    device="cpu",
    op_cases=EDGE_CASES,
    train_op=OpShape(2, ((8, 8), (4, 4), (2, 2)), 0, 8, 32, 4),
    inference_op=OpShape(1, ((5, 8), (3, 4), (2, 2)), 0, 8, 32, 4),
    inference_config=SMALL_CONFIG,
    inference_size=(64, 96),
    train_config=SMALL_CONFIG,
    train_batch=2,
    train_size=(64, 64),
    warmup=1,
    iters=2,
    model_warmup=0,
    model_iters=1,
    train_iters=1,
    compile_backend="aot_eager",
    compile_min_remaining_s=0.0,
)
# Figures to report: name -> (unit, target, what the original / others measured).
TARGETS = {
    "op train shape fwd fp32": ("ms", None, "original's compiled op 0.75 ms"),
    "op train shape fwd+bwd fp32": ("ms", 2.0, "original's compiled op 2.5 ms; PyTorch path 13.3 ms"),
    "op train shape fwd bf16": ("ms", None, ""),
    "op train shape fwd+bwd bf16": ("ms", 1.2, ""),
    "reference (PyTorch path) train shape fwd+bwd fp32": ("ms", None, "original's PyTorch path 13.3 ms"),
    "op inference shape fwd bf16": ("ms", 0.2, "original 0.34 ms"),
    "R50 panoptic inference 800x1216 fp32": (
        "ms/image",
        35.0,
        "original 168-184 ms; HF transformers 48-60 ms",
    ),
    "R50 panoptic inference 800x1216 bf16": (
        "ms/image",
        20.0,
        "original 168-184 ms; HF transformers 48-60 ms",
    ),
    "R50 panoptic inference 800x1216 bf16 MODEL.COMPILE": ("ms/image", 20.0, ""),
    "training step batch 2 of 1024x1024 AMP": ("ms/step", 150.0, "original 207 ms"),
    "training peak memory per image": ("GiB", 3.7, "original 3.7 GiB"),
}


class Report:
    """Stages, correctness checks and timings of one run; written as JSON and as a table."""

    def __init__(self, profile: Profile, dry_run: bool, budget_s: float):
        self.profile, self.dry_run, self.budget_s = profile, dry_run, budget_s
        self.started = time.perf_counter()
        self.stages: list[dict] = []
        self.checks: list[dict] = []
        self.timings: list[dict] = []
        self.info: dict[str, object] = {}

    def remaining_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail})
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)
        return bool(ok)

    def timing(self, name: str, value: float) -> None:
        unit, target, original = TARGETS[name]
        met = None if target is None or self.dry_run else value <= target
        self.timings.append(
            {
                "name": name,
                "value": round(value, 4),
                "unit": unit,
                "target": target,
                "met": met,
                "original": original,
            }
        )
        print(f"  {name}: {value:.3f} {unit}" + (f" (target <= {target})" if target else ""), flush=True)

    def stage(
        self, name: str, fn: Callable[[], None], *, skip_reason: str | None = None, timing: bool = False
    ) -> bool:
        """Run one stage; an exception is recorded (with its traceback) and the run goes on. A timing
        stage is skipped once the budget is spent."""
        print(f"== {name} (budget left {self.remaining_s():.0f} s)", flush=True)
        if timing and skip_reason is None and self.remaining_s() <= 0:
            skip_reason = "the wall-clock budget (--budget-s) is spent"
        if skip_reason:
            print(f"  skipped: {skip_reason}", flush=True)
            self.stages.append({"name": name, "status": "skipped", "seconds": 0.0, "detail": skip_reason})
            return True
        start, failed_before = time.perf_counter(), self.failed_checks()
        try:
            fn()
            status = "failed" if self.failed_checks() > failed_before else "ok"
            detail = ""
        except Exception as err:  # one broken stage must not hide the others
            status, detail = "error", "".join(traceback.format_exception(err)[-6:])
            print(f"  ERROR: {detail}", flush=True)
        seconds = time.perf_counter() - start
        self.stages.append({"name": name, "status": status, "seconds": round(seconds, 1), "detail": detail})
        print(f"  -> {status} in {seconds:.1f} s", flush=True)
        return status == "ok"

    def failed_checks(self) -> int:
        return sum(not c["ok"] for c in self.checks)

    def ok(self) -> bool:
        return self.failed_checks() == 0 and all(s["status"] in ("ok", "skipped") for s in self.stages)

    def table(self) -> str:
        lines = [
            f"gpu_check {'DRY RUN (CPU, tiny shapes: figures mean nothing)' if self.dry_run else ''}".strip(),
            *(f"{k}: {v}" for k, v in self.info.items()),
            "",
            f"{'stage':<34} {'status':<8} {'seconds':>8}",
            *(f"{s['name']:<34} {s['status']:<8} {s['seconds']:>8.1f}" for s in self.stages),
            "",
            f"checks: {len(self.checks) - self.failed_checks()} of {len(self.checks)} passed",
            *(f"  FAIL {c['name']}: {c['detail']}" for c in self.checks if not c["ok"]),
            "",
            f"{'figure':<52} {'measured':>12} {'target':>10}  met  original / others",
        ]
        for t in self.timings:
            target = f"<= {t['target']}" if t["target"] is not None else "-"
            met = {True: "yes", False: "NO", None: "-"}[t["met"]]
            lines.append(
                f"{t['name']:<52} {t['value']:>8.3f} {t['unit']:<3} {target:>10}  {met:<4} {t['original']}"
            )
        lines.append(
            f"\nresult: {'PASS' if self.ok() else 'FAIL'} in {time.perf_counter() - self.started:.0f} s"
        )
        return "\n".join(lines)

    def write(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        payload = {
            "dry_run": self.dry_run,
            "ok": self.ok(),
            "seconds": round(time.perf_counter() - self.started, 1),
            "info": self.info,
            "stages": self.stages,
            "checks": self.checks,
            "timings": self.timings,
        }
        for name, text in (
            ("gpu_check.json", json.dumps(payload, indent=2)),
            ("gpu_check.txt", self.table()),
        ):
            tmp = out_dir / f".{name}.tmp"
            tmp.write_text(text + "\n")
            tmp.replace(out_dir / name)


# ---------------------------------------------------------------- build


def build_extension(report: Report, jobs: int, log_path: Path) -> None:
    """setup.py build_ext --inplace with the CUDA kernels for the visible GPU (dry run: only said)."""
    env = {**os.environ, "FORCE_CUDA": "1", "MAX_JOBS": str(jobs)}
    if not report.dry_run:
        major, minor = torch.cuda.get_device_capability()
        env["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    command = [sys.executable, "setup.py", "build_ext", "--inplace"]
    shown = " ".join(f"{k}={env[k]}" for k in ("FORCE_CUDA", "TORCH_CUDA_ARCH_LIST", "MAX_JOBS") if k in env)
    report.info["build command"] = f"{shown} {' '.join(command)}"
    if report.dry_run:
        print(f"  dry run: not building; would run `{report.info['build command']}`", flush=True)
        return
    with open(log_path, "w") as log:
        result = subprocess.run(
            command,
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=max(60, report.remaining_s()),
        )
    tail = "".join(log_path.read_text().splitlines(keepends=True)[-25:])
    print(tail if result.returncode != 0 else f"  built; log: {log_path}", flush=True)
    if result.returncode != 0:
        raise RuntimeError(f"setup.py build_ext failed with status {result.returncode}; log: {log_path}")


def check_extension(report: Report) -> bool:
    """Whether the loaded mask2former._C is this checkout's and has kernels for the profile's device."""
    from mask2former.layers.extension import compiled_op_available, load_extension

    module = load_extension()
    if not report.check(
        "extension loads", module is not None, "mask2former._C is not built" if module is None else ""
    ):
        return False
    path = Path(module.__file__).resolve()
    report.info["extension"] = str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
    report.info["extension has CUDA kernels"] = bool(module.WITH_CUDA)
    in_repo = report.check("extension is this checkout's", path.is_relative_to(REPO), str(path))
    device = report.profile.device
    has_kernels = report.check(
        f"extension has {device} kernels",
        compiled_op_available(device),
        f"WITH_CUDA={module.WITH_CUDA}" + ("" if compiled_op_available(device) else ": CUDA KERNELS MISSING"),
    )
    return in_repo and has_kernels


# ---------------------------------------------------------------- the op


def levels_of(shape: OpShape) -> tuple[torch.Tensor, torch.Tensor, int]:
    """spatial_shapes [L, 2] and level_start_index [L] on the CPU, and S."""
    spatial_shapes = torch.tensor(shape.levels, dtype=torch.long)
    areas = [h * w for h, w in shape.levels]
    starts = torch.tensor([sum(areas[:i]) for i in range(len(areas))], dtype=torch.long)
    return spatial_shapes, starts, sum(areas)


def op_inputs(shape: OpShape, device: str, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs: value [B, S, M, D] in `dtype`, locations [B, Q, M, L, P, 2] in [-0.3, 1.3] (some
    outside the maps) and weights [B, Q, M, L, P] in float32 (float64 for float64) as under autocast,
    grad_output [B, Q, M * D]; levels on the CPU."""
    spatial_shapes, starts, positions = levels_of(shape)
    queries = shape.queries or positions
    gen = torch.Generator(device=device).manual_seed(seed)
    loc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    b, m, d, lv, p = shape.batch, shape.heads, shape.channels, len(shape.levels), shape.points
    weights = torch.rand(b, queries, m, lv, p, generator=gen, device=device, dtype=loc_dtype)
    return {
        "value": torch.randn(b, positions, m, d, generator=gen, device=device).to(dtype),
        "spatial_shapes": spatial_shapes,
        "level_start_index": starts,
        "sampling_locations": torch.rand(
            b, queries, m, lv, p, 2, generator=gen, device=device, dtype=loc_dtype
        )
        * 1.6
        - 0.3,
        "attention_weights": weights / weights.sum((-1, -2), keepdim=True),
        "grad_output": torch.randn(b, queries, m * d, generator=gen, device=device).to(dtype),
    }


def op_with_grads(x: dict[str, torch.Tensor], wanted: tuple[bool, bool, bool] = (True, True, True)):
    """(output, grad_value, grad_locations, grad_weights) of the compiled op; None for unwanted gradients."""
    leaves = [x["value"], x["sampling_locations"], x["attention_weights"]]
    leaves = [t.detach().requires_grad_(w) for t, w in zip(leaves, wanted)]
    out = torch.ops.mask2former.ms_deform_attn(
        leaves[0], x["spatial_shapes"], x["level_start_index"], leaves[1], leaves[2]
    )
    needed = [t for t, w in zip(leaves, wanted) if w]
    grads = iter(torch.autograd.grad(out, needed, x["grad_output"])) if needed else iter(())
    return (out.detach(), *(next(grads) if w else None for w in wanted))


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double().cpu() - expected).abs().max() / max(1.0, float(expected.abs().max()))).item()


def check_op(report: Report) -> None:
    device = report.profile.device
    names = ("output", "grad_value", "grad_locations", "grad_weights")
    for case, shape in report.profile.op_cases.items():
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            x = op_inputs(shape, device, dtype)
            # The float64 CPU op sees the same rounded inputs: only the kernel's arithmetic is compared.
            x64 = {k: v.cpu().double() if v.is_floating_point() else v for k, v in x.items()}
            expected = op_with_grads(x64)
            got = op_with_grads(x)
            errors = [relative_error(g, e) for g, e in zip(got, expected)]
            dtypes_ok = got[1].dtype == dtype and got[2].dtype == x["sampling_locations"].dtype
            detail = (
                ", ".join(f"{n} {e:.1e}" for n, e in zip(names, errors))
                + f" (tolerance {OP_TOLERANCE[dtype]})"
            )
            report.check(
                f"op vs float64 CPU op, {case}, {str(dtype)[6:]}",
                dtypes_ok and max(errors) <= OP_TOLERANCE[dtype],
                detail if dtypes_ok else f"gradient dtypes {got[1].dtype}, {got[2].dtype}",
            )
    x = op_inputs(EDGE_CASES["random levels, 8 heads x 32 channels"], device, torch.float32)
    spoiled = dict(x, level_start_index=x["level_start_index"].flip(0))
    try:
        op_with_grads(spoiled)
        report.check("inconsistent levels refused", False, "no error")
    except RuntimeError as err:
        report.check("inconsistent levels refused", "level_start_index" in str(err), str(err).splitlines()[0])
    after = op_with_grads(x)  # the device still works after the refusal
    if device == "cuda":
        on_device = dict(
            x, spatial_shapes=x["spatial_shapes"].cuda(), level_start_index=x["level_start_index"].cuda()
        )
        moved = op_with_grads(on_device)
        report.check(
            "levels on the GPU give the same result",
            all(torch.equal(a, b) for a, b in zip(after[:1], moved[:1])),
            "forward bit-identical with spatial_shapes/level_start_index on the GPU (one host copy per call)",
        )


def check_determinism(report: Report) -> None:
    device = report.profile.device
    x = op_inputs(EDGE_CASES["random levels, 8 heads x 32 channels"], device, torch.float32)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        try:
            op_with_grads(x)
            raised = ""
        except RuntimeError as err:
            raised = str(err).splitlines()[0]
        if device == "cuda":
            report.check(
                "CUDA backward raises under use_deterministic_algorithms(True)",
                "ms_deform_attn_backward_cuda" in raised,
                raised or "no error",
            )
        else:
            report.check(
                "CPU backward allowed under use_deterministic_algorithms(True)", not raised, raised or ""
            )
        # Without the value gradient nothing is scattered: deterministic on both devices.
        first = op_with_grads(x, (False, True, True))
        second = op_with_grads(x, (False, True, True))
        report.check(
            "location and weight gradients without the value gradient: allowed and bit-identical",
            first[1] is None and all(torch.equal(a, b) for a, b in zip(first[2:], second[2:])),
            "two runs compared",
        )
    finally:
        torch.use_deterministic_algorithms(previous)


def check_opcheck(report: Report) -> None:
    device = report.profile.device
    x = op_inputs(EDGE_CASES["1x1 and non-square levels, 1 head x 8 channels"], device, torch.float64)
    args = [
        x["value"],
        x["spatial_shapes"],
        x["level_start_index"],
        x["sampling_locations"],
        x["attention_weights"],
    ]
    for i in (0, 3, 4):
        args[i] = args[i].requires_grad_()
    torch.library.opcheck(torch.ops.mask2former.ms_deform_attn.default, tuple(args))
    detached = tuple(t.detach() for t in args)
    for mask in ([True, True, True], [False, True, True]):
        torch.library.opcheck(
            torch.ops.mask2former.ms_deform_attn_backward.default, (x["grad_output"], *detached, mask)
        )
    report.check("torch.library.opcheck", True, "forward and backward (two output masks) on " + device)


def check_compile_and_export(report: Report) -> None:
    from mask2former.layers.ms_deform_attn import ms_deform_attn

    device, backend = report.profile.device, report.profile.compile_backend
    x = op_inputs(EDGE_CASES["random levels, 8 heads x 32 channels"], device, torch.float32)
    shapes, starts = x["spatial_shapes"], x["level_start_index"]

    def attention(value, locations, weights):
        return ms_deform_attn(value, shapes, starts, locations, weights)

    def with_grads(fn):
        leaves = [
            x[k].detach().requires_grad_() for k in ("value", "sampling_locations", "attention_weights")
        ]
        out = fn(*leaves)
        return (out.detach(), *torch.autograd.grad(out, leaves, x["grad_output"]))

    eager = with_grads(attention)
    compiled = with_grads(torch.compile(attention, backend=backend, fullgraph=True))
    error = max((a - b).abs().max().item() for a, b in zip(eager, compiled))
    report.check(
        f"torch.compile ({backend}, fullgraph) forward+backward", error <= 1e-5, f"max difference {error:.1e}"
    )

    class Attention(torch.nn.Module):
        def forward(self, value, locations, weights):
            return attention(value, locations, weights)

    inputs = (x["value"], x["sampling_locations"], x["attention_weights"])
    exported = torch.export.export(Attention(), inputs)
    targets = {str(node.target) for node in exported.graph.nodes}
    error = (exported.module()(*inputs) - eager[0]).abs().max().item()
    report.check(
        "torch.export keeps the op",
        "mask2former.ms_deform_attn.default" in targets and error <= 1e-6,
        f"op in graph: {'mask2former.ms_deform_attn.default' in targets}, max difference {error:.1e}",
    )


def run_pytest(report: Report) -> None:
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/test_ms_deform_attn.py",
        "-k",
        "cuda",
    ]
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=max(30, report.remaining_s())
    )
    summary = (result.stdout.strip().splitlines() or ["no output"])[-1]
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-2000:], flush=True)
    report.check("pytest tests/test_ms_deform_attn.py -k cuda", result.returncode == 0, summary)


# ---------------------------------------------------------------- the model


def fixture_path(fixtures: str | None) -> Path:
    """Where the tests look: --fixtures, else MASK2FORMER_FIXTURES, else <repo>/../shared/fixtures."""
    folder = fixtures or os.environ.get("MASK2FORMER_FIXTURES") or REPO.parent / "shared" / "fixtures"
    return Path(folder) / FIXTURE_NAME


@contextlib.contextmanager
def exact_float32():
    """No TF32 matrix products or convolutions inside the block (for comparing float32 results)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def excess(got: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> float:
    """Largest |got - expected| - rtol * |expected| (torch.testing.assert_close's rule: <= atol passes)."""
    got, expected = got.detach().cpu().double(), expected.detach().cpu().double()
    if got.shape != expected.shape:
        return float("inf")
    return ((got - expected).abs() - rtol * expected.abs()).max().item() if got.numel() else 0.0


def compare_results(
    report: Report, label: str, ours: list[dict], reference: list[dict], pixel_tolerance: float = 0.0
) -> None:
    """Semantic scores within 1e-4 (relative), panoptic segments equal with at most `pixel_tolerance`
    of the pixels assigned differently (near-ties of the argmax between devices), instances: the same
    classes and scores within 1e-4 (compared sorted: near-equal scores may swap places)."""
    sem = max(excess(a["sem_seg"], b["sem_seg"]) for a, b in zip(ours, reference))
    report.check(
        f"{label}: semantic scores", sem <= 1e-4, f"|difference| - 1e-4 |expected|: {sem:.1e} (<= 1e-4)"
    )
    mismatched, segments_equal = 0.0, True
    for a, b in zip(ours, reference):
        seg_a, info_a = a["panoptic_seg"]
        # the fixture records ids and segments apart; the model returns them as a pair
        seg_b, info_b = (
            b["panoptic_seg"]
            if isinstance(b["panoptic_seg"], tuple)
            else (b["panoptic_seg"], b["segments_info"])
        )
        segments_equal &= _without_scores(info_a) == _without_scores(info_b)  # the fixture records no scores
        mismatched = max(mismatched, (seg_a.cpu() != seg_b.cpu().to(seg_a.dtype)).float().mean().item())
    report.check(
        f"{label}: panoptic segments",
        segments_equal and mismatched <= pixel_tolerance,
        f"segments equal: {segments_equal}, pixels assigned differently: {mismatched:.3%} (<= {pixel_tolerance:.3%})",
    )
    score_error, classes_equal = 0.0, True
    for a, b in zip(ours, reference):
        inst_a, inst_b = a["instances"], b["instances"]
        scores_b, classes_b = (
            (inst_b["scores"], inst_b["pred_classes"])
            if isinstance(inst_b, dict)
            else (
                inst_b.scores,
                inst_b.pred_classes,
            )
        )
        classes_equal &= sorted(inst_a.pred_classes.tolist()) == sorted(classes_b.tolist())
        score_error = max(score_error, excess(inst_a.scores.sort().values, scores_b.sort().values))
    report.check(
        f"{label}: instances",
        classes_equal and score_error <= 1e-4,
        f"classes equal: {classes_equal}, scores: |difference| - 1e-4 |expected| {score_error:.1e} (<= 1e-4)",
    )


def _without_scores(segments_info: list[dict]) -> list[dict]:
    """segments_info without the segment scores this project adds (the original records none)."""
    return [{k: v for k, v in s.items() if k != "score"} for s in segments_info]


def count_syncs(
    model: torch.nn.Module, inputs: list[dict], device: str
) -> tuple[int, dict[str, list[int]], list[str]]:
    """Host synchronisations of one inference: total, per post-processing call, and the events."""
    from mask2former.utils.host_sync import HostSyncCounter

    module = sys.modules[type(model).__module__]
    per_call: dict[str, list[int]] = {"panoptic_inference": [], "instance_inference": []}
    originals = {name: getattr(module, name) for name in per_call}
    as_on_device = dict(originals)
    if device == "cpu":  # the dry run counts what a GPU runs, not the CPU's kept-queries-first panoptic path
        as_on_device["panoptic_inference"] = functools.partial(
            originals["panoptic_inference"], select_kept_first=False
        )

    def counted(name, fn):
        def call(*args, **kwargs):
            with HostSyncCounter(device) as counter:
                if kwargs.get("is_thing") is not None:
                    counter.host(kwargs["is_thing"])
                result = fn(*args, **kwargs)
            per_call[name].append(counter.count)
            return result

        return call

    with torch.inference_mode():
        model(inputs)  # warm: first-call allocations and lazy initialisation are not counted
        try:
            for name, fn in as_on_device.items():
                setattr(module, name, counted(name, fn))
            model(inputs)
            for name, fn in as_on_device.items():
                setattr(module, name, fn)
            with HostSyncCounter(device) as whole:
                whole.host(model.thing_classes_mask)  # the model keeps it on the CPU
                model(inputs)
        finally:
            for name, fn in originals.items():
                setattr(module, name, fn)
    return whole.count, per_call, whole.events


def check_model_parity(report: Report, fixtures: str | None) -> None:
    from mask2former.checkpoint import load_weights
    from mask2former.config import get_cfg
    from mask2former.data.catalog import MetadataCatalog
    from mask2former.modeling import build_model

    path = fixture_path(fixtures)
    if not path.is_file():
        if report.dry_run:
            report.info["parity"] = f"fixture {path} not found: parity not checked in this dry run"
            print(f"  {report.info['parity']}", flush=True)
            return
        raise FileNotFoundError(
            f"reference fixture {path} not found (pass --fixtures DIR or set MASK2FORMER_FIXTURES)"
        )
    fixture = torch.load(path, weights_only=True)
    with tempfile.TemporaryDirectory() as folder:
        cfg_path = Path(folder) / "config.yaml"
        cfg_path.write_text(fixture["config_yaml"])
        cfg = get_cfg()
        cfg.merge_from_file(str(cfg_path))
    cfg.MODEL.DEVICE = "cpu"
    MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).set(**fixture["metadata"])
    model = build_model(cfg).eval()
    packed = {k: v["int8"].float() * 2.0 ** v["exp"] for k, v in fixture["state_dict_packed"].items()}
    load_report = load_weights(model, {**fixture["state_dict_float"], **packed})
    report.check(
        "fixture weights load", not (load_report.missing or load_report.unexpected), str(load_report)[:200]
    )
    inputs = [dict(x) for x in fixture["inputs"]]
    with torch.inference_mode():
        cpu_results = model(inputs)
    compare_results(report, "CPU vs fixture", cpu_results, fixture["results"])
    device = report.profile.device
    if device != "cpu":
        model.to(device)
        with exact_float32(), torch.inference_mode():
            device_results = model(inputs)
        compare_results(
            report, f"{device} vs fixture", device_results, fixture["results"], pixel_tolerance=5e-4
        )
        compare_results(report, f"{device} vs CPU", device_results, cpu_results, pixel_tolerance=5e-4)
    total, per_call, events = count_syncs(model, inputs, device)
    for name, counts in per_call.items():
        report.check(
            f"host synchronisations of {name} on {device}",
            counts == [1] * len(inputs),
            f"per image: {counts}",
        )
    allowed = sum(sum(c) for c in per_call.values())
    report.check(
        f"host synchronisations of one inference on {device}",
        total <= allowed,
        f"{total} for {len(inputs)} images (the post-processing's: {allowed}); events: {events[:6]}",
    )


def load_tool(name: str):
    """A script of tools/ as a module (tools/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def check_train_step(report: Report) -> None:
    """One AMP step of the small model: finite losses and gradients, and the weights move."""
    from mask2former.config import get_cfg
    from mask2former.modeling import build_model

    device = report.profile.device
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / SMALL_CONFIG))
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = load_tool("benchmark_train").synthetic_batch(
        2, 64, 64, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, torch.Generator().manual_seed(0)
    )
    amp_dtype = torch.float16 if device == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device, enabled=amp_dtype == torch.float16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.autocast(device, dtype=amp_dtype):
        losses = model(batch)
    total = sum(losses.values())
    scaler.scale(total).backward()
    scaler.unscale_(optimizer)
    grads_finite = all(torch.isfinite(p.grad).all().item() for p in model.parameters() if p.grad is not None)
    scaler.step(optimizer)
    scaler.update()
    moved = sum(not torch.equal(a, p.detach()) for a, p in zip(before, model.parameters()))
    report.check(
        f"training step with AMP ({str(amp_dtype)[6:]})",
        all(torch.isfinite(v).item() for v in losses.values()) and grads_finite and moved > 0,
        f"loss {total.item():.3f} over {len(losses)} terms, gradients finite: {grads_finite}, "
        f"{moved} of {len(before)} parameter tensors updated",
    )


# ---------------------------------------------------------------- timings


def time_ms(fn: Callable[[], object], warmup: int, iters: int, device: str) -> float:
    """Median milliseconds of `fn` after warm-up: CUDA events on a GPU, the wall clock on the CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def time_op(report: Report) -> None:
    from mask2former.layers.ms_deform_attn import ms_deform_attn_reference

    p = report.profile
    report.info["op training shape"] = f"{p.train_op} (queries 0: one per position)"
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        x = op_inputs(p.train_op, p.device, dtype)
        args = (
            x["value"],
            x["spatial_shapes"],
            x["level_start_index"],
            x["sampling_locations"],
            x["attention_weights"],
        )
        with torch.no_grad():
            report.timing(
                f"op train shape fwd {label}",
                time_ms(lambda a=args: torch.ops.mask2former.ms_deform_attn(*a), p.warmup, p.iters, p.device),
            )
        report.timing(
            f"op train shape fwd+bwd {label}",
            time_ms(lambda x=x: op_with_grads(x), p.warmup, p.iters, p.device),
        )
        if dtype == torch.float32:

            def reference(x=x):
                leaves = [
                    x[k].detach().requires_grad_()
                    for k in ("value", "sampling_locations", "attention_weights")
                ]
                out = ms_deform_attn_reference(leaves[0], x["spatial_shapes"], leaves[1], leaves[2])
                torch.autograd.grad(out, leaves, x["grad_output"])

            report.timing(
                "reference (PyTorch path) train shape fwd+bwd fp32",
                time_ms(reference, 2, max(2, p.iters // 4), p.device),
            )
        del x, args
    x = op_inputs(p.inference_op, p.device, torch.bfloat16)
    args = (
        x["value"],
        x["spatial_shapes"],
        x["level_start_index"],
        x["sampling_locations"],
        x["attention_weights"],
    )
    with torch.no_grad():
        report.timing(
            "op inference shape fwd bf16",
            time_ms(lambda: torch.ops.mask2former.ms_deform_attn(*args), p.warmup, p.iters, p.device),
        )


def build_inference_model(report: Report, *options: object) -> torch.nn.Module:
    from mask2former.config import get_cfg
    from mask2former.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / report.profile.inference_config))
    cfg.merge_from_list(["MODEL.DEVICE", report.profile.device, "MODEL.WEIGHTS", "", *options])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if not (model.panoptic_on and model.instance_on and model.semantic_on):
        raise ValueError(f"{report.profile.inference_config} does not switch on all three outputs")
    return model


def time_inference(report: Report, name: str, *options: object) -> None:
    p = report.profile
    model = build_inference_model(report, *options)
    h, w = p.inference_size
    gen = torch.Generator().manual_seed(0)
    inputs = [{"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)}]

    def infer():
        with torch.inference_mode():
            return model(inputs)

    start = time.perf_counter()
    infer()  # the first call (and compilation, with MODEL.COMPILE)
    report.info[f"{name}: first call"] = f"{time.perf_counter() - start:.1f} s"
    report.timing(name, time_ms(infer, p.model_warmup, p.model_iters, p.device))
    if "MODEL.COMPILE" not in options:
        total, per_call, _ = count_syncs(model, inputs, p.device)
        report.info[f"{name}: host synchronisations per image"] = f"{total} ({per_call})"


def time_train_step(report: Report) -> None:
    p = report.profile
    h, w = p.train_size
    amp = "float16" if p.device == "cuda" else "bfloat16"
    argv = [
        "--config-file", str(REPO / p.train_config),
        "--batch-size", str(p.train_batch),
        "--image-size", str(h), str(w),
        "--amp", amp,
        "--warmup", "2",
        "--iters", str(p.train_iters),
        "MODEL.DEVICE", p.device,
        "MODEL.WEIGHTS", "",
    ]  # fmt: skip
    gc.collect()  # earlier stages' models must not count towards the peak memory
    if p.device == "cuda":
        torch.cuda.empty_cache()
    (result,) = load_tool("benchmark_train").main(argv).values()  # one variant: {phase: ms, "peak_mib"}
    report.info["training step"] = f"{p.train_batch} x {h}x{w}, AMP {amp}, median of {p.train_iters} steps"
    report.timing("training step batch 2 of 1024x1024 AMP", result["step"])
    if p.device == "cuda":
        report.timing("training peak memory per image", result["peak_mib"] / p.train_batch / 1024)


# ---------------------------------------------------------------- main


def describe_machine(report: Report) -> None:
    report.info.update(
        {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch CUDA": torch.version.cuda,
            "device": torch.cuda.get_device_name()
            if report.profile.device == "cuda"
            else platform.processor() or "CPU",
            "TF32 (matmul, cudnn)": f"{torch.backends.cuda.matmul.allow_tf32}, {torch.backends.cudnn.allow_tf32}",
        }
    )
    if report.profile.device == "cuda":
        report.info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="the same code paths on the CPU with tiny shapes"
    )
    parser.add_argument(
        "--out", default="output/gpu_check", help="folder for gpu_check.json and gpu_check.txt"
    )
    parser.add_argument(
        "--fixtures", help="folder holding reference_tiny_r18.pt (default: as the tests find it)"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=340.0,
        help="wall-clock budget: compile and the re-run of the CUDA tests are skipped when too little of it "
        "is left, the timings once it is spent",
    )
    parser.add_argument(
        "--skip-build", action="store_true", help="use the extension as built (no setup.py run)"
    )
    parser.add_argument("--jobs", type=int, default=16, help="MAX_JOBS for the build")
    args = parser.parse_args(argv)

    profile = DRY if args.dry_run else GPU
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA GPU is visible (torch.cuda.is_available() is False); use --dry-run on the CPU")
    report = Report(profile, args.dry_run, args.budget_s)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    describe_machine(report)
    try:
        build_skip = "--skip-build given" if args.skip_build else None
        report.stage(
            "build", lambda: build_extension(report, args.jobs, out_dir / "build.log"), skip_reason=build_skip
        )
        report.stage("extension", lambda: check_extension(report))
        if report.stages[-1]["status"] != "ok":
            print("FATAL: the op has no kernels for the device; nothing else is checked", flush=True)
            return 2
        p = profile
        report.stage("op vs float64 CPU op", lambda: check_op(report))
        report.stage("determinism", lambda: check_determinism(report))
        report.stage("opcheck", lambda: check_opcheck(report))
        report.stage("compile and export of the op", lambda: check_compile_and_export(report))
        report.stage("model parity on the fixture", lambda: check_model_parity(report, args.fixtures))
        report.stage("training step with AMP", lambda: check_train_step(report))
        report.stage("timing: op", lambda: time_op(report), timing=True)
        size = "x".join(map(str, p.inference_size))
        report.info["inference"] = (
            f"{p.inference_config}, 1 image of {size}, all three outputs, random weights"
        )
        report.stage(
            "timing: inference fp32",
            lambda: time_inference(report, "R50 panoptic inference 800x1216 fp32"),
            timing=True,
        )
        report.stage(
            "timing: inference bf16",
            lambda: time_inference(
                report, "R50 panoptic inference 800x1216 bf16", "MODEL.INFERENCE_DTYPE", "bfloat16"
            ),
            timing=True,
        )
        report.stage("timing: training step", lambda: time_train_step(report), timing=True)
        short = report.remaining_s() < p.compile_min_remaining_s
        report.stage(
            "timing: inference bf16 compiled",
            lambda: compiled_inference(report),
            skip_reason=f"only {report.remaining_s():.0f} s of the budget left (needs {p.compile_min_remaining_s:.0f})"
            if short
            else None,
        )
        report.stage(
            "pytest (CUDA tests)",
            lambda: run_pytest(report),
            skip_reason="dry run: the CUDA tests skip on the CPU"
            if args.dry_run
            else f"only {report.remaining_s():.0f} s of the budget left"
            if report.remaining_s() < 30
            else None,
        )
    finally:
        report.write(out_dir)
        print("\n" + report.table(), flush=True)
        print(f"written: {out_dir / 'gpu_check.json'}, {out_dir / 'gpu_check.txt'}", flush=True)
    return 0 if report.ok() else 1


def compiled_inference(report: Report) -> None:
    """MODEL.COMPILE True (bf16). In the dry run torch.compile's backend is aot_eager (no C++ compile)."""
    options = ("MODEL.INFERENCE_DTYPE", "bfloat16", "MODEL.COMPILE", True)
    name = "R50 panoptic inference 800x1216 bf16 MODEL.COMPILE"
    if report.profile.compile_backend == "inductor":
        time_inference(report, name, *options)
        return
    original = torch.nn.Module.compile

    def compile_with_backend(module, *args, **kwargs):
        return original(module, *args, **{**kwargs, "backend": report.profile.compile_backend})

    torch.nn.Module.compile = compile_with_backend
    try:
        time_inference(report, name, *options)
    finally:
        torch.nn.Module.compile = original


if __name__ == "__main__":
    sys.exit(main())
