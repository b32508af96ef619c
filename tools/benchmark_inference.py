#!/usr/bin/env python
r"""Inference time per image, split into stages, for a config and image size, with seeded random weights.

One variant (the config as given, with overrides):
    python tools/benchmark_inference.py \
        --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \
        --height 512 --width 768 --device cpu [MODEL.INFERENCE_DTYPE bfloat16] [MODEL.COMPILE True]

Side by side (--compare): every variant runs in its own process, and the processes take turns, one
round after another (--rounds), so that all variants see the same load; the ratios between them are
taken round by round. `--baseline DIR` adds another checkout of the project (for example the last
release, with its own build) run in float32 with PYTHONPATH=DIR:
    python tools/benchmark_inference.py --compare --baseline ../release \
        --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \
        --height 512 --width 768 --device cpu --threads 2 --scaling

Variants (--variants): fp32, bf16 (MODEL.INFERENCE_DTYPE bfloat16), compile-fp32 and compile-bf16
(MODEL.COMPILE True: backbone and head compiled; only their sum is timed, as "head" includes the pixel
decoder and the Transformer decoder there). Stages: preprocess (normalise, pad), backbone, pixel decoder,
Transformer decoder, post-processing split into its shared part (crop, resize, sigmoid) and each task
(semantic, panoptic, instance). GFLOP/s divide the FLOPs fvcore counts for backbone and head at this
size (mask2former/utils/flop_count.py; one fused multiply-add is one FLOP) by the stage's time.
--scaling adds images/s at 1 and 2 threads, batch 1 and 4, for the variants of this checkout.
On a machine shared with other work, absolute times vary from run to run: read the ratios measured in
one run, not the times of separate runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

VARIANTS = {
    "fp32": [],
    "bf16": ["MODEL.INFERENCE_DTYPE", "bfloat16"],
    "compile-fp32": ["MODEL.COMPILE", "True"],
    "compile-bf16": ["MODEL.COMPILE", "True", "MODEL.INFERENCE_DTYPE", "bfloat16"],
}
BASELINE = "baseline-fp32"
TASK_FUNCTIONS = {
    "semantic_inference": "post: semantic",
    "panoptic_inference": "post: panoptic",
    "instance_inference": "post: instance",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--height", type=int, default=800, help="image height (default: 800)")
    p.add_argument("--width", type=int, default=1216, help="image width (default: 1216)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default: 1)")
    p.add_argument("--device", default="", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--iters", type=int, default=3, help="timed runs per variant and round (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before the first round (default: 1)")
    p.add_argument(
        "--threads", type=int, default=0, help="torch.set_num_threads (default 0: PyTorch's choice)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and images (default: 0)")
    p.add_argument("--compare", action="store_true", help="time several variants side by side (see above)")
    p.add_argument(
        "--variants",
        nargs="+",
        choices=sorted(VARIANTS),
        default=["fp32", "bf16", "compile-fp32"],
        help="variants of this checkout for --compare (default: fp32 bf16 compile-fp32)",
    )
    p.add_argument("--baseline", default="", help="another checkout timed in float32 with --compare")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of --compare (default: 3)")
    p.add_argument("--scaling", action="store_true", help="with --compare: 1 vs 2 threads, batch 1 vs 4")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (all variants)")
    args = p.parse_args(argv)
    if args.baseline and not (Path(args.baseline) / "mask2former").is_dir():
        p.error(f"--baseline {args.baseline}: no mask2former package there")
    if (args.baseline or args.scaling) and not args.compare:
        p.error("--baseline and --scaling need --compare")
    if min(args.height, args.width, args.batch_size, args.iters, args.rounds) < 1:
        p.error("--height, --width, --batch-size, --iters and --rounds must be positive")
    return args


# ---------------------------------------------------------------- one variant, in this process


class StageTimer:
    """Wall-clock time per stage and run; synchronises CUDA around each stage."""

    def __init__(self, device):
        self.device = device
        self.run_times: dict[str, float] = {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def time(self, name: str, fn: Callable, *args, **kwargs):
        self.sync()
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.sync()
        self.run_times[name] = self.run_times.get(name, 0.0) + time.perf_counter() - start
        return out


class Runner:
    """A model built from the config with seeded random weights, run stage by stage as MaskFormer.forward
    runs it. Uses only the interface the released versions share (preprocess_image, backbone,
    sem_seg_head.pixel_decoder / .predictor, postprocess), so a baseline checkout runs it too."""

    def __init__(self, args: argparse.Namespace):
        import torch

        from mask2former.config import get_cfg
        from mask2former.modeling import build_model

        cfg = get_cfg()
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
        if args.device:
            cfg.MODEL.DEVICE = args.device
        elif not torch.cuda.is_available():
            cfg.MODEL.DEVICE = "cpu"
        cfg.MODEL.WEIGHTS = ""
        self.compiled = bool(cfg.MODEL.COMPILE)
        torch.manual_seed(args.seed)
        self.model = build_model(cfg).eval()
        self.args = args
        self.timer = StageTimer(self.model.device)
        self._wrap_postprocess_tasks()

    def _wrap_postprocess_tasks(self) -> None:
        """Time each post-processing task: wrap the task functions where `postprocess` looks them up."""
        import inspect

        # unwrapped: `postprocess` is decorated (torch.no_grad), the wrapper's globals are torch's
        names = inspect.unwrap(type(self.model).postprocess).__globals__
        wrapped = [fn_name for fn_name in TASK_FUNCTIONS if fn_name in names]
        if not wrapped:
            raise RuntimeError(f"postprocess calls none of {sorted(TASK_FUNCTIONS)}: cannot time its tasks")
        for fn_name in wrapped:
            names[fn_name] = self._timed(TASK_FUNCTIONS[fn_name], names[fn_name])

    def _timed(self, stage: str, fn: Callable) -> Callable:
        def wrapper(*a, **k):
            return self.timer.time(stage, fn, *a, **k)

        return wrapper

    def images(self, batch: int) -> list[dict]:
        import torch

        gen = torch.Generator().manual_seed(self.args.seed)
        shape = (3, self.args.height, self.args.width)
        return [
            {"image": torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)} for _ in range(batch)
        ]

    def run_once(self, inputs: list[dict]) -> dict[str, float]:
        """One forward pass over `inputs`, returning seconds per stage (and "total") for the batch."""
        import torch

        model, t = self.model, self.timer
        t.run_times = {}
        low_precision = model.inference_dtype != torch.float32
        start = time.perf_counter()
        with torch.inference_mode():
            images = t.time("preprocess", model.preprocess_image, inputs)
            with torch.autocast(model.device.type, dtype=model.inference_dtype, enabled=low_precision):
                features = t.time("backbone", model.backbone, images.tensor)
                if self.compiled:
                    outputs = t.time("head", model.sem_seg_head, features)
                else:
                    head = model.sem_seg_head
                    mask_features, _, multi_scale = t.time(
                        "pixel decoder", head.pixel_decoder.forward_features, features
                    )
                    outputs = t.time("transformer decoder", head.predictor, multi_scale, mask_features)
            t.time("postprocess", model.postprocess, outputs, inputs, images)
        t.sync()
        times = dict(t.run_times)
        times["total"] = time.perf_counter() - start
        times["post: resize, sigmoid"] = times["postprocess"] - sum(
            times.get(s, 0.0) for s in TASK_FUNCTIONS.values()
        )
        return times

    def flops(self) -> dict[str, float]:
        """FLOPs per stage of one image (backbone, pixel decoder, Transformer decoder, their sum)."""
        from mask2former.utils.flop_count import model_flop_analysis

        by_module = model_flop_analysis(self.model, [x["image"] for x in self.images(1)]).by_module()
        return {
            "backbone": by_module["backbone"],
            "pixel decoder": by_module["sem_seg_head.pixel_decoder"],
            "transformer decoder": by_module["sem_seg_head.predictor"],
            "head": by_module["sem_seg_head"],
            "backbone + head": by_module[""],
        }


def worker(args: argparse.Namespace) -> None:
    """Reads one JSON request per line from stdin ({"threads", "batch", "iters", "warmup"} or
    {"flops": true}) and answers each with one JSON line on stdout."""
    import torch

    runner = Runner(args)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("flops"):
            print(json.dumps({"flops": runner.flops()}), flush=True)
            continue
        torch.set_num_threads(req["threads"])
        inputs = runner.images(req["batch"])
        for _ in range(req["warmup"]):
            runner.run_once(inputs)
        runs = [runner.run_once(inputs) for _ in range(req["iters"])]
        print(json.dumps({"runs": runs}), flush=True)


def single(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    runner = Runner(args)
    inputs = runner.images(args.batch_size)
    for _ in range(args.warmup):
        runner.run_once(inputs)
    runs = [runner.run_once(inputs) for _ in range(args.iters)]
    model = runner.model
    tasks = [
        t
        for t, on in (
            ("semantic", model.semantic_on),
            ("panoptic", model.panoptic_on),
            ("instance", model.instance_on),
        )
        if on
    ]
    print(
        f"{args.config_file}: {args.batch_size} x {args.height}x{args.width}, device {model.device}, threads "
        f"{torch.get_num_threads()}, {model.inference_dtype}, compiled {runner.compiled}, outputs "
        f"{'+'.join(tasks)}; median of {args.iters} runs, ms per image"
    )
    for stage in runs[0]:
        ms = statistics.median(r[stage] for r in runs) * 1000 / args.batch_size
        print(f"  {stage:<24} {ms:9.1f}")
    print(f"  {'images/s':<24} {args.batch_size / statistics.median(r['total'] for r in runs):9.2f}")


# ---------------------------------------------------------------- side by side


class Worker:
    """A benchmark process for one variant, answering requests in turn."""

    def __init__(self, name: str, args: argparse.Namespace, extra_opts: list[str], pythonpath: str):
        self.name = name
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            "--config-file",
            os.path.abspath(args.config_file),
        ]
        cmd += ["--height", str(args.height), "--width", str(args.width), "--seed", str(args.seed)]
        if args.device:
            cmd += ["--device", args.device]
        cmd += list(args.opts) + extra_opts
        env = dict(os.environ, PYTHONPATH=pythonpath)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.ready = False

    def request(self, **req) -> dict:
        if not self.ready:  # the first answer says the model is built
            self._read()
            self.ready = True
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(
                f"benchmark worker {self.name!r} exited with status {self.proc.wait()} (see its error above)"
            )
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def _commit(folder: str) -> str:
    out = subprocess.run(
        ["git", "-C", folder, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return out.stdout.strip() or "unknown commit"


def _rounds(workers: list[Worker], rounds: int, **req) -> dict[str, list[list[dict]]]:
    """{variant: [runs of round r]}: each round asks every worker in turn, starting one further along each time."""
    results: dict[str, list[list[dict]]] = {w.name: [] for w in workers}
    for r in range(rounds):
        for w in workers[r % len(workers) :] + workers[: r % len(workers)]:
            results[w.name].append(w.request(**req)["runs"])
    return results


def _median_stage(rounds_runs: list[list[dict]], stage: str, batch: int) -> float | None:
    values = [run[stage] for runs in rounds_runs for run in runs if stage in run]
    return statistics.median(values) / batch if values else None


def compare(args: argparse.Namespace) -> None:
    here = str(Path(__file__).resolve().parents[1])
    workers = []
    if args.baseline:
        baseline = os.path.abspath(args.baseline)
        workers.append(Worker(BASELINE, args, [], baseline))
    workers += [Worker(v, args, VARIANTS[v], here) for v in args.variants]
    threads = args.threads or None
    try:
        import torch

        threads = threads or torch.get_num_threads()
        flop_source = next((w for w in workers if w.name in ("fp32", "bf16")), None)
        flops = flop_source.request(flops=True)["flops"] if flop_source else {}
        for w in workers:  # build, warm up (and compile) before the first round
            w.request(threads=threads, batch=args.batch_size, iters=0, warmup=args.warmup)
        results = _rounds(
            workers, args.rounds, threads=threads, batch=args.batch_size, iters=args.iters, warmup=0
        )
        _print_compare(args, workers, results, flops, threads)
        if args.scaling:
            _scaling(args, [w for w in workers if w.name != BASELINE])
    finally:
        for w in workers:
            w.close()


def _print_compare(args, workers, results, flops, threads) -> None:
    names = [w.name for w in workers]
    b = args.batch_size
    print(
        f"{args.config_file}, {b} x {args.height}x{args.width}, {threads} threads, seeded random weights; "
        f"{args.rounds} interleaved rounds x {args.iters} runs per variant, medians in ms per image"
    )
    if args.baseline:
        print(
            f"{BASELINE}: {args.baseline} at {_commit(args.baseline)}; the other variants: this checkout at {_commit(str(Path(__file__).resolve().parents[1]))}"
        )
    print(
        "This machine may be shared: absolute times vary between runs; the ratios (same rounds) are what compares."
    )
    stages = [
        "preprocess",
        "backbone",
        "pixel decoder",
        "transformer decoder",
        "head",
        "post: resize, sigmoid",
        *TASK_FUNCTIONS.values(),
        "postprocess",
        "total",
    ]
    print(f"  {'stage':<24}" + "".join(f"{n:>15}" for n in names))
    for stage in stages:
        row = [_median_stage(results[n], stage, b) for n in names]
        if all(v is None for v in row):
            continue
        print(f"  {stage:<24}" + "".join(f"{v * 1000:15.1f}" if v is not None else f"{'-':>15}" for v in row))
    if flops:
        print(
            "GFLOP/s (counted FLOPs of the stage at this size / its median time; FLOPs: backbone "
            f"{flops['backbone'] / 1e9:.1f} G, pixel decoder {flops['pixel decoder'] / 1e9:.1f} G, "
            f"Transformer decoder {flops['transformer decoder'] / 1e9:.1f} G, total {flops['backbone + head'] / 1e9:.1f} G)"
        )
        for stage in ("backbone", "pixel decoder", "transformer decoder", "head", "backbone + head"):
            row = []
            for n in names:
                if stage == "backbone + head":
                    parts = [
                        _median_stage(results[n], s, b)
                        for s in ("backbone", "pixel decoder", "transformer decoder", "head")
                    ]
                    t = sum(p for p in parts if p is not None)
                else:
                    t = _median_stage(results[n], stage, b)
                row.append(flops[stage] / t / 1e9 if t else None)
            if any(v is not None for v in row):
                print(
                    f"  {stage:<24}" + "".join(f"{v:15.1f}" if v is not None else f"{'-':>15}" for v in row)
                )
    reference = BASELINE if args.baseline else names[0]
    print(f"Speed-up over {reference} (its total time / the variant's, per round: median [min, max])")
    for n in names:
        if n == reference:
            continue
        ratios = [
            statistics.median(r["total"] for r in ref_runs) / statistics.median(r["total"] for r in runs)
            for ref_runs, runs in zip(results[reference], results[n])
        ]
        print(f"  {n:<24} {statistics.median(ratios):6.2f}x  [{min(ratios):.2f}, {max(ratios):.2f}]")


def _scaling(args, workers: list[Worker]) -> None:
    """Images/s at 1 and 2 threads, batch 1 and 4, interleaved in rounds."""
    settings = [(t, bs) for bs in (1, 4) for t in (1, 2)]
    images_per_s: dict[tuple[str, int, int], list[float]] = {}
    for w in workers:  # warm up each batch size once
        w.request(threads=2, batch=4, iters=0, warmup=1)
    for _ in range(max(1, args.rounds - 1)):
        for t, bs in settings:
            for w in workers:
                runs = w.request(threads=t, batch=bs, iters=1, warmup=0)["runs"]
                images_per_s.setdefault((w.name, t, bs), []).append(bs / runs[0]["total"])
    print("Scaling: images/s (median over rounds), threads x batch size")
    print(f"  {'variant':<16}" + "".join(f"{f'{t} thr, batch {bs}':>18}" for t, bs in settings))
    for w in workers:
        print(
            f"  {w.name:<16}"
            + "".join(f"{statistics.median(images_per_s[(w.name, t, bs)]):18.3f}" for t, bs in settings)
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
    elif args.compare:
        compare(args)
    else:
        single(args)


if __name__ == "__main__":
    main()
