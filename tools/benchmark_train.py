#!/usr/bin/env python
"""Training-step benchmark: per-phase times (forward, loss with matching, backward, optimizer) of
`Trainer.run_step` for a config, batch size and image size, with synthetic inputs (random images,
a few random rectangular instances per image), for several precisions side by side, and
optionally against another checkout of the project (e.g. a release) in the same run.

    python tools/benchmark_train.py --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \
        --batch-size 1 --image-size 384 384 --amp off,bfloat16 --baseline ../release MODEL.DEVICE cpu
    python tools/benchmark_train.py --config-file configs/shapes/maskformer2_R18_shapes.yaml \
        --batch-size 1 --image-size 256 256 --amp off --rounds 2 MODEL.DEVICE cpu

Each variant (this checkout at each `--amp` precision; with `--baseline DIR`, DIR's code at each
`--baseline-amp` precision) runs in its own process, which builds the trainer and takes
`--warmup` untimed steps. The variants then take turns: in each of `--rounds` rounds every
variant runs `--iters` timed steps, in an order that rotates from round to round, so a load that
other processes put on the machine falls on all variants alike. On a shared machine the absolute
times move from run to run; the ratios between variants of one run are the figures to compare.

`--threads N` sets the number of PyTorch threads in every worker (default: one per core). Each
worker imports its checkout's package before PyTorch, so it runs with that checkout's OpenMP wait
policy (this project sets GOMP_SPINCOUNT=2000 unless the environment sets a wait variable; the table
header shows each variant's); set GOMP_SPINCOUNT in the environment to give all variants the same.

Phases of one step, from hooks that exist in every version: `forward` from the model's forward
call to the criterion's, `loss` the criterion (Hungarian matching and the losses), `backward`
from the criterion's return to the last gradient accumulated into a parameter (includes the
trainer's loss reduction), `optimizer` from there to the end of the step (gradient clipping,
optimizer step, logging). Peak memory is CUDA's max allocated on GPU and the worker's peak
resident set size on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = ("forward", "loss", "backward", "optimizer")
REPO_ROOT = Path(__file__).resolve().parent.parent


def synthetic_batch(batch_size: int, height: int, width: int, num_classes: int, generator):
    """Random uint8 images [3, H, W] with 1-4 rectangular instances of random classes each."""
    import torch

    from mask2former.structures import Instances

    batch = []
    for _ in range(batch_size):
        n = int(torch.randint(1, 5, (1,), generator=generator))
        masks = torch.zeros(n, height, width, dtype=torch.bool)
        for i in range(n):
            y0 = int(torch.randint(0, height // 2, (1,), generator=generator))
            x0 = int(torch.randint(0, width // 2, (1,), generator=generator))
            masks[i, y0 : y0 + height // 3, x0 : x0 + width // 3] = True
        classes = torch.randint(0, num_classes, (n,), generator=generator)
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
        instances = Instances((height, width), gt_classes=classes, gt_masks=masks)
        batch.append({"image": image, "height": height, "width": width, "instances": instances})
    return batch


# --------------------------------------------------------------------------------------------
# Worker: one variant in its own process, driven over stdin/stdout
# --------------------------------------------------------------------------------------------
class _PhaseClock:
    """Time stamps of one step's phase boundaries, taken by hooks on the model, the criterion
    and every parameter's gradient accumulation."""

    def __init__(self, device):
        import torch

        self.device = device
        self._sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
        self.stamps: dict[str, float] = {}

    def mark(self, name: str) -> None:
        self._sync(self.device)
        self.stamps[name] = time.perf_counter()
        if name in ("start", "end"):
            self.stamps[name + "_cpu"] = time.process_time()

    def attach(self, model) -> None:
        model.register_forward_pre_hook(lambda *_: self.mark("start"))
        model.criterion.register_forward_pre_hook(lambda *_: self.mark("loss_start"))
        model.criterion.register_forward_hook(lambda *_: self.mark("loss_end"))
        for p in model.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(lambda _: self.mark("backward_end"))

    def phases(self) -> dict[str, float]:
        s = self.stamps
        return {
            "forward": s["loss_start"] - s["start"],
            "loss": s["loss_end"] - s["loss_start"],
            "backward": s["backward_end"] - s["loss_end"],
            "optimizer": s["end"] - s["backward_end"],
            "step": s["end"] - s["start"],
            "cpu": s["end_cpu"] - s["start_cpu"],
        }


_channel = sys.stdout  # the worker's messages to the driver; anything else it prints goes to stderr


def _send(message: dict) -> None:
    _channel.write(json.dumps(message) + "\n")
    _channel.flush()


def _openmp_wait_setting() -> str:
    """How this process's OpenMP threads wait, from the variables that choose it (named here, not
    imported from mask2former.utils.env: the worker may run a checkout that predates it)."""
    chosen = [
        f"{name}={os.environ[name]}"
        for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
        if name in os.environ
    ]
    return ", ".join(chosen) or "default (GNU: spin 300000, then sleep)"


def run_worker(args: argparse.Namespace) -> None:
    """Build the trainer, take the warm-up steps, then one round of `--iters` timed steps per
    "round" line on stdin; answer each round with a JSON line of per-step phase times."""
    global _channel
    _channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import mask2former  # isort: skip  (first: this checkout's OpenMP wait policy, see mask2former/utils/env.py)
    import torch

    from mask2former.config import get_cfg
    from mask2former.engine.defaults import seed_all_rng
    from mask2former.engine.hooks import HookBase
    from mask2former.engine.trainer import Trainer

    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    amp = ["SOLVER.AMP.ENABLED", args.amp != "off"]
    if args.amp != "off":
        amp += ["SOLVER.AMP.PRECISION", args.amp]
    cfg.merge_from_list(
        [
            *amp,
            "SOLVER.IMS_PER_BATCH", args.batch_size,
            "SOLVER.MAX_ITER", args.warmup + args.rounds * args.iters,
            "OUTPUT_DIR", tempfile.mkdtemp(prefix="benchmark_train_"),
            # inference switches do not change the training step; panoptic/instance need dataset metadata
            "MODEL.MASK_FORMER.TEST.PANOPTIC_ON", False,
            "MODEL.MASK_FORMER.TEST.INSTANCE_ON", False,
            "MODEL.MASK_FORMER.TEST.SEMANTIC_ON", True,
        ]
    )  # fmt: skip
    cfg.freeze()
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_all_rng(0)
    device = torch.device(cfg.MODEL.DEVICE)
    h, w = args.image_size
    g = torch.Generator().manual_seed(0)
    batches = [
        synthetic_batch(args.batch_size, h, w, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, g) for _ in range(2)
    ]
    clock = _PhaseClock(device)
    step_times: list[dict[str, float]] = []

    class StepEnd(HookBase):
        def after_step(self) -> None:
            clock.mark("end")
            step_times.append(clock.phases())

    def batches_on_request():
        """Yields the warm-up batches, then waits for a "round" command before each round."""
        for i in range(args.warmup):
            yield batches[i % len(batches)]
        _send(
            {
                "ready": True,
                "package": os.path.dirname(mask2former.__file__),
                "threads": torch.get_num_threads(),
                "omp_wait_policy": _openmp_wait_setting(),
            }
        )
        for _ in range(args.rounds):
            if sys.stdin.readline().strip() != "round":
                return
            del step_times[:]
            for i in range(args.iters):
                yield batches[i % len(batches)]
            # resumed by the next step's data fetch, so this round's steps have all ended; the
            # last round is never resumed: it reports once training has finished
            _send({"steps": list(step_times)})

    class BenchmarkTrainer(Trainer):
        @classmethod
        def build_train_loader(cls, cfg):
            return batches_on_request()

        def build_hooks(self):
            return [StepEnd()]

    trainer = BenchmarkTrainer(cfg)
    clock.attach(trainer.model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer.train()
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated(device) / 1024**2
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _send({"steps": step_times, "peak_mib": peak_mib})


# --------------------------------------------------------------------------------------------
# Driver: start the workers, interleave their rounds, print the table
# --------------------------------------------------------------------------------------------
class _Variant:
    def __init__(self, label: str, root: Path, amp: str, args: argparse.Namespace):
        self.label, self.amp = label, amp
        self.steps: list[dict[str, float]] = []
        self.peak_mib = float("nan")
        self.threads, self.omp_wait_policy = 0, ""  # reported by the worker when ready
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
        command = [
            sys.executable, str(Path(__file__).resolve()), "--worker",
            "--config-file", args.config_file,
            "--batch-size", str(args.batch_size),
            "--image-size", *map(str, args.image_size),
            "--amp", amp,
            "--warmup", str(args.warmup), "--iters", str(args.iters), "--rounds", str(args.rounds),
            *(["--threads", str(args.threads)] if args.threads else []),
            *args.opts,
        ]  # fmt: skip
        # the worker's own logs go to stderr (inherited); stdout carries the JSON messages
        self.process = subprocess.Popen(
            command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def receive(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker {self.label} exited with code {self.process.wait()}")
        return json.loads(line)

    def run_round(self) -> None:
        self.process.stdin.write("round\n")
        self.process.stdin.flush()
        message = self.receive()
        self.steps += message["steps"]
        if "peak_mib" in message:  # the last round: training has finished
            self.peak_mib = message["peak_mib"]
            self.process.wait()

    def summary(self, statistic) -> dict[str, float]:
        return {key: statistic([s[key] for s in self.steps]) * 1000 for key in (*PHASES, "step", "cpu")}


def _print_table(variants: list[_Variant], reference: _Variant, args: argparse.Namespace) -> None:
    h, w = args.image_size
    print(
        f"\n{args.config_file}: batch {args.batch_size} x {h}x{w}, {args.rounds} interleaved rounds of "
        f"{args.iters} steps per variant (after {args.warmup} warm-up steps)"
    )
    for v in variants:
        print(f"{v.label}: {v.threads} threads, OpenMP wait: {v.omp_wait_policy}")
    columns = (*PHASES, "step", "cpu")
    header = f"{'variant':<28}" + "".join(f"{c:>11}" for c in columns)
    header += f"{'speed-up':>10}{'cpu speed-up':>14}{'peak MiB':>10}"
    for name, statistic in (("median", statistics.median), ("best", min)):
        print(f"\n{name} over steps, ms")
        print(header)
        ref = reference.summary(statistic)
        for v in variants:
            row = v.summary(statistic)
            cells = "".join(f"{row[c]:>11.0f}" for c in columns)
            ratios = f"{ref['step'] / row['step']:>9.2f}x{ref['cpu'] / row['cpu']:>13.2f}x"
            print(f"{v.label:<28}{cells}{ratios}{v.peak_mib:>10.0f}")
    print(
        "\nstep: wall time of the step (the sum of the phases); cpu: CPU time the worker process used in "
        f"it (all threads). speed-up: {reference.label}'s time / the variant's. On a shared machine "
        "absolute times vary between runs; compare the ratios within one run (interleaved rounds), "
        "and CPU time, which other processes disturb less than wall time."
    )


def run_driver(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    specs = [(f"this checkout {amp}", REPO_ROOT, amp) for amp in args.amp]
    if args.baseline:
        base = Path(args.baseline).resolve()
        if not (base / "mask2former" / "__init__.py").is_file():
            raise SystemExit(f"--baseline {args.baseline}: no mask2former package there")
        specs += [(f"baseline {amp}", base, amp) for amp in args.baseline_amp]
    variants = []
    for label, root, amp in specs:  # one at a time: building and warming up is not timed
        v = _Variant(label, root, amp, args)
        ready = v.receive()
        v.threads, v.omp_wait_policy = ready["threads"], ready["omp_wait_policy"]
        print(f"{label}: ready ({ready['package']})", file=sys.stderr, flush=True)
        variants.append(v)
    for r in range(args.rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for v in order:
            v.run_round()
            last = v.steps[-args.iters :]
            times = ", ".join(f"{s['step'] * 1000:.0f} ms (cpu {s['cpu'] * 1000:.0f} ms)" for s in last)
            print(f"round {r + 1}/{args.rounds}, {v.label}: {times}", file=sys.stderr, flush=True)
    reference = next((v for v in variants if v.label == "baseline off"), variants[0])
    _print_table(variants, reference, args)
    return {v.label: {**v.summary(statistics.median), "peak_mib": v.peak_mib} for v in variants}


def _precisions(text: str) -> list[str]:
    values = text.split(",")
    unknown = [v for v in values if v not in ("off", "float16", "bfloat16")]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown precision(s) {unknown}: use off, float16, bfloat16")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--batch-size", type=int, default=2, help="images per step")
    parser.add_argument("--image-size", type=int, nargs=2, default=(1024, 1024), metavar=("H", "W"))
    parser.add_argument(
        "--amp",
        type=_precisions,
        default=["off", "bfloat16"],
        help="comma-separated precisions of this checkout, from off, float16, bfloat16 (default: off,bfloat16)",
    )
    parser.add_argument(
        "--baseline", metavar="DIR", help="another checkout (with its compiled op) to compare with"
    )
    parser.add_argument(
        "--baseline-amp", type=_precisions, default=["off"], help="its precisions (default: off)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first, per variant")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--iters", type=int, default=2, help="timed steps per variant and round")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch.set_num_threads in every worker (default: PyTorch's choice, one per core)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    args = parser.parse_args(argv)
    if args.worker and len(args.amp) != 1:
        parser.error("a worker runs one precision")
    if args.threads < 0:
        parser.error("--threads must be positive (or 0: PyTorch's default)")
    if min(args.warmup, args.rounds, args.iters) < 1:
        parser.error("--warmup, --rounds and --iters must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]] | None:
    args = parse_args(argv)
    if args.worker:
        args.amp = args.amp[0]
        run_worker(args)
        return None
    return run_driver(args)


if __name__ == "__main__":
    main(sys.argv[1:])
