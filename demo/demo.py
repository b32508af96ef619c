#!/usr/bin/env python
"""Run a Mask2Former model on images, a video or a webcam and draw its predictions.

    python demo/demo.py --config-file configs/shapes/maskformer2_R18_shapes.yaml \
        --input datasets/shapes/val --output output/vis --opts MODEL.WEIGHTS output/shapes/model_final.pth
    python demo/demo.py --config-file <cfg> --input "photos/*.jpg" --output out/ --confidence-threshold 0.7 \
        --task instance --opts MODEL.WEIGHTS model.pkl MODEL.DEVICE cpu
    python demo/demo.py --config-file <cfg> --video-input clip.mp4 --output out.mp4 --opts MODEL.WEIGHTS model.pkl

What is drawn (`--task`): "auto" draws the panoptic result when the model produces one, else the
instances, else the semantic result. Instances are filtered by `--confidence-threshold` and drawn
with their mask, outline, box, class name and score; panoptic and semantic segments get their
class name.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
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

    from mask2former.inference import Predictor

logger = logging.getLogger("mask2former.demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
TASKS = ("auto", "panoptic", "instance", "semantic")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Mask2Former demo: draw predictions on images or video")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to the config file")
    parser.add_argument("--webcam", action="store_true", help="take frames from the webcam")
    parser.add_argument("--video-input", help="path to a video file")
    parser.add_argument("--input", nargs="+", help="image files, glob patterns (quoted) or folders")
    parser.add_argument(
        "--output",
        help="where to write the drawn results: a folder (created if needed), or a file name for a "
        "single input image or a video",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="minimum score of the instances to draw (instance results)",
    )
    parser.add_argument("--task", choices=TASKS, default="auto", help="which result to draw (default: auto)")
    parser.add_argument("--scale", type=float, default=1.0, help="size of the drawings relative to the input")
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


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Files, globs and folders (their image files, sorted) -> a list of image paths."""
    paths: list[str] = []
    for p in patterns:
        if os.path.isdir(p):
            found = sorted(os.path.join(p, f) for f in os.listdir(p) if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise FileNotFoundError(f"--input folder {p} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
            paths.extend(found)
        elif glob.has_magic(p):
            found = sorted(glob.glob(os.path.expanduser(p)))
            if not found:
                raise FileNotFoundError(f"--input pattern {p!r} matches no file")
            paths.extend(found)
        elif os.path.isfile(p):
            paths.append(p)
        else:
            raise FileNotFoundError(f"--input {p}: no such file or folder")
    return paths


def output_path(output: str, input_path: str, num_inputs: int) -> str:
    """A folder output gets the input's base name; a file output takes one input only."""
    is_file = not os.path.isdir(output) and os.path.splitext(output)[1].lower() in IMAGE_EXTENSIONS
    if not is_file:
        os.makedirs(output, exist_ok=True)
        return os.path.join(output, os.path.basename(input_path))
    if num_inputs != 1:
        raise ValueError(f"--output {output} is a file name but there are {num_inputs} inputs; give a folder")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    return output


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


def draw_predictions(
    image_rgb: np.ndarray, predictions: dict, metadata, task: str, confidence_threshold: float, scale: float
) -> tuple[np.ndarray, int]:
    """Draw one image's predictions. Returns (RGB image, number of instances drawn; for
    panoptic results the number of thing segments)."""
    from mask2former.utils.visualizer import Visualizer

    task = choose_task(task, predictions)
    vis = Visualizer(image_rgb, metadata, scale=scale)
    if task == "panoptic":
        pan, segments = predictions["panoptic_seg"]
        return vis.draw_panoptic_seg(pan, segments).get_image(), sum(bool(s["isthing"]) for s in segments)
    if task == "instance":
        inst = predictions["instances"].to("cpu")
        inst = inst[inst.scores >= confidence_threshold]
        return vis.draw_instance_predictions(inst).get_image(), len(inst)
    return vis.draw_sem_seg(predictions["sem_seg"]).get_image(), 0


def run_on_images(predictor: Predictor, args: argparse.Namespace) -> list[dict]:
    import cv2
    import tqdm

    from mask2former.data.detection_utils import read_image

    paths = expand_inputs(args.input)
    summary = []
    for path in tqdm.tqdm(paths, desc="demo", unit="image", disable=len(paths) < 2):
        rgb = read_image(path, "RGB")
        start = time.perf_counter()
        predictions = predictor(rgb, format="RGB")
        elapsed = time.perf_counter() - start
        drawn, count = draw_predictions(
            rgb, predictions, predictor.metadata, args.task, args.confidence_threshold, args.scale
        )
        logger.info("%s: %d instances drawn, inference %.2fs", path, count, elapsed)
        out = None
        if args.output:
            out = output_path(args.output, path, len(paths))
            if not cv2.imwrite(out, drawn[:, :, ::-1]):
                raise OSError(f"could not write {out}")
        else:
            show("Mask2Former", drawn)
            if cv2.waitKey(0) == 27:
                break
        summary.append({"input": path, "output": out, "num_instances": count})
    return summary


def show(window: str, image_rgb: np.ndarray) -> None:
    import cv2

    try:
        cv2.imshow(window, image_rgb[:, :, ::-1])
    except cv2.error as e:
        raise RuntimeError(
            "this OpenCV build cannot open a window (opencv-python-headless); write the results with --output"
        ) from e


def run_on_video(predictor: Predictor, args: argparse.Namespace) -> list[dict]:
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
            drawn, count = draw_predictions(
                rgb, predictor(frame, format="BGR"), predictor.metadata, args.task, args.confidence_threshold,
                args.scale,
            )  # fmt: skip
            summary.append({"frame": len(summary), "num_instances": count})
            if args.output:
                if writer is None:
                    writer = _video_writer(args, fps, drawn.shape[1], drawn.shape[0])
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


def _video_writer(args: argparse.Namespace, fps: float, width: int, height: int) -> cv2.VideoWriter:
    import cv2

    out = args.output
    if os.path.isdir(out) or not os.path.splitext(out)[1]:
        os.makedirs(out, exist_ok=True)
        name = "webcam" if args.webcam else os.path.splitext(os.path.basename(args.video_input))[0]
        out = os.path.join(out, name + ".mp4")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height), True)
    if not writer.isOpened():
        raise OSError(f"cannot write the video {out} (OpenCV has no mp4v encoder?)")
    logger.info("writing %s", out)
    return writer


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Run the demo; returns one summary dict per image or frame (input, output, num_instances)."""
    args = get_parser().parse_args(argv)
    if sum(bool(x) for x in (args.input, args.video_input, args.webcam)) != 1:
        raise SystemExit("demo.py: give exactly one of --input, --video-input, --webcam")
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S"
        )
    from mask2former.inference import Predictor

    cfg = setup_cfg(args)
    predictor = Predictor(cfg)
    if args.input:
        return run_on_images(predictor, args)
    return run_on_video(predictor, args)


if __name__ == "__main__":
    main()
