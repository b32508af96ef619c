#!/usr/bin/env python
"""Run a Mask2Former model on images, a video or a webcam and draw its predictions.

    python demo/demo.py --config-file configs/shapes/maskformer2_R18_shapes.yaml \
        --input datasets/shapes/val --output output/vis --opts MODEL.WEIGHTS output/shapes/model_final.pth
    python demo/demo.py --config-file <cfg> --input "photos/*.jpg" --output out/ --confidence-threshold 0.7 \
        --task instance --opts MODEL.WEIGHTS model.pkl MODEL.DEVICE cpu
    python demo/demo.py --config-file <cfg> --video-input clip.mp4 --output out.mp4 --opts MODEL.WEIGHTS model.pkl

What is drawn (`--task`): "auto" draws the panoptic result when the model produces one, else the
instances, else the semantic result. Instances and panoptic segments are filtered by
`--confidence-threshold` (their score); instances are drawn with their mask, outline, box, class
name and score, panoptic and semantic segments with their class name. Class names come from the
weights file when it carries its training set's metadata (checkpoints this project writes do).

Before the model is loaded the arguments are checked: weights are required (random weights only
with `--allow-random-weights`), inputs must exist (a folder with no image, a missing video and a
named FIFO/device/socket are errors), a file `--output` takes one input, and no output may
overwrite an input. Outputs mirror the inputs' paths relative to their common folder, so
`a/x.png` and `b/x.png` give `<output>/a/x.png` and `<output>/b/x.png`. Special files found in a
folder or glob, and images that cannot be decoded, are skipped with a warning; the run finishes
the batch, prints a summary and exits with status 1 when something was skipped.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import stat
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# PyTorch, OpenCV and the model code are imported by the functions that use them, so that
# `--help` and argument errors answer at once.
if TYPE_CHECKING:
    import cv2
    import numpy as np
    import torch

    from mask2former.inference import Predictor

logger = logging.getLogger("mask2former.demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
TASKS = ("auto", "panoptic", "instance", "semantic")


class DemoArgumentError(ValueError):
    """Arguments that cannot work (found before the model is loaded); the message says why."""


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Mask2Former demo: draw predictions on images or video")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to the config file")
    parser.add_argument("--webcam", action="store_true", help="take frames from the webcam")
    parser.add_argument("--video-input", help="path to a video file")
    parser.add_argument("--input", nargs="+", help="image files, glob patterns (quoted) or folders")
    parser.add_argument(
        "--output",
        help="where to write the drawn results: a folder (created if needed; outputs mirror the inputs' "
        "relative paths), or a file name for a single input image or a video",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="minimum score of the instances and panoptic segments to draw (not used for semantic results)",
    )
    parser.add_argument("--task", choices=TASKS, default="auto", help="which result to draw (default: auto)")
    parser.add_argument("--scale", type=float, default=1.0, help="size of the drawings relative to the input")
    parser.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="run even when MODEL.WEIGHTS is empty (a model with random weights; for trying the tool out)",
    )
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs"
    )
    return parser


def setup_cfg(args: argparse.Namespace):
    from mask2former.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg


def special_file_kind(path: str) -> str | None:
    """None for a regular file, else what it is ("FIFO", "device", "socket", "folder", ...).
    Uses os.stat, which never opens the file (opening a FIFO would block)."""
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
        return None
    for test, kind in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "folder")):  # fmt: skip
        if test(mode):
            return kind
    return "special file"


def _listed_images(candidates: list[str], skipped: list[dict]) -> list[str]:
    """The regular files among `candidates` (from a folder or a glob); special files are
    skipped with a warning and recorded in `skipped`."""
    found = []
    for path in candidates:
        kind = special_file_kind(path)
        if kind is None:
            found.append(path)
        elif kind != "folder":
            logger.warning("skipping %s: a %s, not an image file", path, kind)
            skipped.append({"input": path, "output": None, "num_instances": 0, "skipped": f"a {kind}"})
    return found


def expand_inputs(patterns: Sequence[str], skipped: list[dict] | None = None) -> list[str]:
    """Files, globs and folders (their image files, sorted) -> a list of image paths, each once.
    Special files in folders and globs are skipped (warning; appended to `skipped`); a special
    file named directly is an error."""
    skipped = [] if skipped is None else skipped
    paths: list[str] = []
    for p in patterns:
        if os.path.isdir(p):
            names = sorted(f for f in os.listdir(p) if f.lower().endswith(IMAGE_EXTENSIONS))
            found = _listed_images([os.path.join(p, f) for f in names], skipped)
            if not names:
                raise DemoArgumentError(f"--input folder {p} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
        elif glob.has_magic(p):
            matches = sorted(glob.glob(os.path.expanduser(p)))
            if not matches:
                raise DemoArgumentError(f"--input pattern {p!r} matches no file")
            found = _listed_images(matches, skipped)
        elif os.path.lexists(p) and os.path.exists(p):
            kind = special_file_kind(p)
            if kind is not None:
                raise DemoArgumentError(f"--input {p} is a {kind}, not an image file")
            found = [p]
        else:
            raise DemoArgumentError(f"--input {p}: no such file or folder")
        paths.extend(found)
    unique = {os.path.realpath(p): p for p in reversed(paths)}
    return [p for p in paths if unique[os.path.realpath(p)] is p]


def is_file_output(output: str) -> bool:
    """A --output naming an image file (not an existing folder)."""
    return not os.path.isdir(output) and os.path.splitext(output)[1].lower() in IMAGE_EXTENSIONS


def plan_outputs(output: str, inputs: list[str]) -> list[str]:
    """One output path per input, checked before anything runs: a file --output takes one
    input; in a folder the outputs mirror the inputs' paths relative to their common folder (so
    equal base names stay apart); no output may be an input. Raises DemoArgumentError."""
    if is_file_output(output):
        if len(inputs) != 1:
            raise DemoArgumentError(
                f"--output {output} is a file name but there are {len(inputs)} inputs; give a folder"
            )
        planned = [output]
    elif len(inputs) == 1:
        planned = [os.path.join(output, os.path.basename(inputs[0]))]
    else:
        absolute = [os.path.abspath(p) for p in inputs]
        root = os.path.commonpath([os.path.dirname(p) for p in absolute])
        planned = [os.path.join(output, os.path.relpath(p, root)) for p in absolute]
    by_input = {os.path.realpath(p): p for p in inputs}
    for out in planned:
        clash = by_input.get(os.path.realpath(out))
        if clash is not None:
            raise DemoArgumentError(
                f"--output {output} would overwrite the input {clash}; write the drawings somewhere else"
            )
    return planned


def check_weights(cfg, args: argparse.Namespace) -> None:
    """Refuse to run a model with random weights unless asked."""
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        if not args.allow_random_weights:
            raise DemoArgumentError(
                "MODEL.WEIGHTS is empty: the model would have random weights and draw meaningless results; "
                "give --opts MODEL.WEIGHTS <file>, or --allow-random-weights to try the tool out"
            )
        logger.warning("MODEL.WEIGHTS is empty: drawing the predictions of a model with random weights")
    elif "://" not in weights and not os.path.isfile(weights):
        raise DemoArgumentError(f"MODEL.WEIGHTS {weights}: no such file")


def choose_task(task: str, predictions: dict) -> str:
    if task == "auto":
        for t, key in (("panoptic", "panoptic_seg"), ("instance", "instances"), ("semantic", "sem_seg")):
            if key in predictions:
                return t
        raise ValueError("the model returned no result to draw (all of MODEL.MASK_FORMER.TEST.*_ON are off)")
    key = {"panoptic": "panoptic_seg", "instance": "instances", "semantic": "sem_seg"}[task]
    if key not in predictions:
        raise ValueError(
            f"--task {task}: the model does not produce {key!r}; switch it on with "
            f"--opts MODEL.MASK_FORMER.TEST.{task.upper()}_ON True"
        )
    return task


def filter_panoptic(panoptic_seg: torch.Tensor, segments: list[dict], threshold: float):
    """Keep the segments scoring at least `threshold`; the pixels of the others become 0
    (unlabelled). Segments without a score are kept."""
    import torch

    kept = [s for s in segments if s.get("score", 1.0) >= threshold]
    if len(kept) == len(segments):
        return panoptic_seg, segments
    kept_ids = torch.tensor(
        [int(s["id"]) for s in kept], dtype=panoptic_seg.dtype, device=panoptic_seg.device
    )
    return torch.where(torch.isin(panoptic_seg, kept_ids), panoptic_seg, 0), kept


def draw_predictions(
    image_rgb: np.ndarray, predictions: dict, metadata, task: str, confidence_threshold: float, scale: float
) -> tuple[np.ndarray, int, str]:
    """Draw one image's predictions. Returns (RGB image, number of instances drawn (for panoptic
    results the number of thing segments, for semantic ones 0), what was drawn in words)."""
    from mask2former.utils.visualizer import Visualizer

    task = choose_task(task, predictions)
    vis = Visualizer(image_rgb, metadata, scale=scale)
    if task == "panoptic":
        pan, segments = filter_panoptic(*predictions["panoptic_seg"], confidence_threshold)
        things = sum(bool(s["isthing"]) for s in segments)
        return (
            vis.draw_panoptic_seg(pan, segments).get_image(),
            things,
            f"{len(segments)} segments ({things} things)",
        )
    if task == "instance":
        inst = predictions["instances"].to("cpu")
        inst = inst[inst.scores >= confidence_threshold]
        return vis.draw_instance_predictions(inst).get_image(), len(inst), f"{len(inst)} instances"
    labels = predictions["sem_seg"].argmax(0)  # [H, W], taken once for the drawing and the count
    classes = labels.unique().numel()
    return vis.draw_sem_seg(labels).get_image(), 0, f"a semantic map of {classes} classes"


def _read_input(path: str) -> np.ndarray | str:
    """The image (RGB), or why it is skipped. The file type is checked with os.stat first, so a
    file replaced by a FIFO since listing cannot block the run."""
    from mask2former.data.detection_utils import DatasetFormatError, read_image

    try:
        kind = special_file_kind(path)
        if kind is not None:
            return f"a {kind}"
        return read_image(path, "RGB")
    except (OSError, DatasetFormatError) as e:
        return str(e)


def run_on_images(predictor: Predictor, args: argparse.Namespace, paths: list[str], outputs: list[str]):
    import cv2
    import tqdm

    summary = []
    for path, out in tqdm.tqdm(list(zip(paths, outputs)), desc="demo", unit="image", disable=len(paths) < 2):
        rgb = _read_input(path)
        if isinstance(rgb, str):
            logger.warning("skipping %s: %s", path, rgb)
            summary.append({"input": path, "output": None, "num_instances": 0, "skipped": rgb})
            continue
        start = time.perf_counter()
        predictions = predictor(rgb, format="RGB")
        elapsed = time.perf_counter() - start
        drawn, count, what = draw_predictions(
            rgb, predictions, predictor.metadata, args.task, args.confidence_threshold, args.scale
        )
        logger.info("%s: %s drawn, inference %.2fs", path, what, elapsed)
        if args.output:
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            if not cv2.imwrite(out, drawn[:, :, ::-1]):
                raise OSError(f"could not write {out}")
        else:
            out = None
            show("Mask2Former", drawn)
            if cv2.waitKey(0) == 27:
                break
        summary.append({"input": path, "output": out, "num_instances": count, "skipped": None})
    return summary


def show(window: str, image_rgb: np.ndarray) -> None:
    import cv2

    try:
        cv2.imshow(window, image_rgb[:, :, ::-1])
    except cv2.error as e:
        raise RuntimeError(
            "this OpenCV build cannot open a window (opencv-python-headless); write the results with --output"
        ) from e


def video_output_path(args: argparse.Namespace) -> str | None:
    """Where the drawn video goes (None: shown in a window); never the input video."""
    out = args.output
    if not out:
        return None
    if os.path.isdir(out) or not os.path.splitext(out)[1]:
        name = "webcam" if args.webcam else os.path.splitext(os.path.basename(args.video_input))[0]
        out = os.path.join(out, name + ".mp4")
    if args.video_input and os.path.realpath(out) == os.path.realpath(args.video_input):
        raise DemoArgumentError(f"--output {args.output} would overwrite the input video {args.video_input}")
    return out


def check_video_input(args: argparse.Namespace) -> None:
    if args.webcam:
        return
    if not os.path.exists(args.video_input):
        raise DemoArgumentError(f"--video-input {args.video_input}: no such file")
    kind = special_file_kind(args.video_input)
    if kind is not None:
        raise DemoArgumentError(f"--video-input {args.video_input} is a {kind}, not a video file")


def run_on_video(predictor: Predictor, args: argparse.Namespace, out: str | None) -> list[dict]:
    import cv2
    import numpy as np
    import tqdm

    source = 0 if args.webcam else args.video_input
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        raise OSError(f"cannot open {'the webcam' if args.webcam else args.video_input}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if not args.webcam else None
    writer = None
    summary = []
    try:
        for frame in tqdm.tqdm(_frames(cap), total=total, desc="demo", unit="frame"):
            rgb = np.ascontiguousarray(frame[:, :, ::-1])
            drawn, count, _ = draw_predictions(
                rgb, predictor(frame, format="BGR"), predictor.metadata, args.task, args.confidence_threshold,
                args.scale,
            )  # fmt: skip
            summary.append({"frame": len(summary), "num_instances": count})
            if out:
                if writer is None:
                    writer = _video_writer(out, fps, drawn.shape[1], drawn.shape[0])
                writer.write(drawn[:, :, ::-1])
            else:
                show("Mask2Former", drawn)
                if cv2.waitKey(1) in (27, ord("q")):
                    break
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    if not summary:
        raise OSError(f"no frame could be read from {'the webcam' if args.webcam else args.video_input}")
    return summary


def _frames(cap: cv2.VideoCapture):
    while True:
        ok, frame = cap.read()
        if not ok:
            return
        yield frame


def _video_writer(out: str, fps: float, width: int, height: int) -> cv2.VideoWriter:
    import cv2

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height), True)
    if not writer.isOpened():
        raise OSError(f"cannot write the video {out} (OpenCV has no mp4v encoder?)")
    logger.info("writing %s", out)
    return writer


def log_summary(summary: list[dict]) -> None:
    drawn = [s for s in summary if not s.get("skipped")]
    skipped = [s for s in summary if s.get("skipped")]
    logger.info("done: %d image(s) drawn, %d skipped", len(drawn), len(skipped))
    for s in skipped:
        logger.warning("  skipped %s: %s", s["input"], s["skipped"])


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Run the demo; returns one summary dict per image (input, output, num_instances, skipped:
    None or why) or per video frame (frame, num_instances). Arguments are checked before the
    model is loaded (DemoArgumentError)."""
    args = get_parser().parse_args(argv)
    from mask2former.inference import Predictor

    if sum(bool(x) for x in (args.input, args.video_input, args.webcam)) != 1:
        raise SystemExit("demo.py: give exactly one of --input, --video-input, --webcam")
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S"
        )
    cfg = setup_cfg(args)
    check_weights(cfg, args)
    if args.input:
        skipped: list[dict] = []
        paths = expand_inputs(args.input, skipped)
        if not paths:
            raise DemoArgumentError(f"--input {' '.join(args.input)}: no image file to draw (all skipped)")
        outputs = plan_outputs(args.output, paths) if args.output else [None] * len(paths)
        summary = skipped + run_on_images(Predictor(cfg), args, paths, outputs)
        log_summary(summary)
        return summary
    check_video_input(args)
    out = video_output_path(args)
    return run_on_video(Predictor(cfg), args, out)


if __name__ == "__main__":
    try:
        results = main()
    except DemoArgumentError as e:
        raise SystemExit(f"demo.py: {e}") from None
    sys.exit(1 if any(r.get("skipped") for r in results) else 0)
