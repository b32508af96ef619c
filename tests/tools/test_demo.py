"""demo/demo.py on generated images and a video, with a tiny model saved to a file."""

import importlib.util
import logging
import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from mask2former.checkpoint import save_weights
from mask2former.inference import Predictor
from mask2former.utils.testing import REPO, TINY_CONFIG, shape_scenes, tiny_shapes_cfg


def _load_demo():
    spec = importlib.util.spec_from_file_location("demo_under_test", os.path.join(REPO, "demo", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    torch.manual_seed(0)
    predictor = Predictor(tiny_shapes_cfg())
    weights = str(root / "tiny.pth")
    save_weights(predictor.model, weights)
    images_dir = root / "images"
    images_dir.mkdir()
    images = shape_scenes(3, h=64, w=80, seed=5)
    for i, img in enumerate(images):
        Image.fromarray(img).save(images_dir / f"img{i}.png")
    predictor = Predictor(tiny_shapes_cfg("MODEL.WEIGHTS", weights))
    return {"root": root, "weights": weights, "images": images_dir, "predictor": predictor}


def _run(setup, *args, opts=()):
    argv = ["--config-file", str(TINY_CONFIG), *args, "--opts", "MODEL.WEIGHTS", setup["weights"], *opts]
    return demo.main(argv)


def test_instances_are_drawn_where_masks_were_predicted(setup, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mask2former.demo")
    out_dir = tmp_path / "out"
    summary = _run(setup, "--input", str(setup["images"]), "--output", str(out_dir), "--task", "instance",
                   "--confidence-threshold", "0.0")  # fmt: skip
    assert [os.path.basename(s["output"]) for s in summary] == ["img0.png", "img1.png", "img2.png"]
    assert "instances drawn" in caplog.text
    for s in summary:
        src = np.asarray(Image.open(s["input"]))
        drawn = cv2.imread(s["output"])[:, :, ::-1]
        assert drawn.shape == src.shape
        inst = setup["predictor"](src, format="RGB")["instances"]
        assert s["num_instances"] == len(inst) > 0
        masks = inst.pred_masks.any(0).numpy()
        assert (drawn[masks] != src[masks]).any(axis=1).mean() > 0.9


def test_confidence_threshold_filters_the_drawn_instances(setup, tmp_path):
    path = str(setup["images"] / "img0.png")
    scores = setup["predictor"](path)["instances"].scores
    middle = float(scores.median())
    counts, pictures = [], []
    for i, thr in enumerate((0.0, middle, 1.01)):
        out = str(tmp_path / f"out{i}.png")
        (s,) = _run(
            setup, "--input", path, "--output", out, "--task", "instance", "--confidence-threshold", str(thr)
        )
        counts.append(s["num_instances"])
        pictures.append(cv2.imread(out))
    assert counts[0] == len(scores) > counts[1] == int((scores >= middle).sum()) > counts[2] == 0
    assert not np.array_equal(pictures[0], pictures[1])
    src = cv2.imread(path)
    assert np.array_equal(pictures[2], src)  # nothing left to draw


def test_panoptic_and_semantic_drawings_and_globs(setup, tmp_path):
    pattern = str(setup["images"] / "img[01].png")
    for task in ("auto", "semantic"):
        out_dir = tmp_path / task
        # a random model is unsure of everything: keep every query in the panoptic result
        loose = [
            "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD",
            "0.0",
            "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD",
            "0.0",
        ]
        summary = _run(setup, "--input", pattern, "--output", str(out_dir), "--task", task, "--scale", "2",
                       "--confidence-threshold", "0", opts=loose)  # fmt: skip
        assert len(summary) == 2
        for s in summary:
            drawn = cv2.imread(s["output"])
            src = cv2.imread(s["input"])
            assert drawn.shape == (128, 160, 3)
            assert not np.array_equal(cv2.resize(src, (160, 128)), drawn)
    with pytest.raises(ValueError, match="INSTANCE_ON"):
        _run(setup, "--input", pattern, "--output", str(tmp_path / "x"), "--task", "instance",
             opts=["MODEL.MASK_FORMER.TEST.INSTANCE_ON", "False"])  # fmt: skip
    with pytest.raises(demo.DemoArgumentError, match="give a folder"):
        _run(setup, "--input", pattern, "--output", str(tmp_path / "one.png"))
    with pytest.raises(demo.DemoArgumentError, match="matches no file"):
        _run(setup, "--input", str(tmp_path / "*.jpg"), "--output", str(tmp_path))


def test_video_is_written_with_the_overlays(setup, tmp_path):
    video = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 5, (80, 64))
    assert writer.isOpened()
    frames = shape_scenes(3, h=64, w=80, seed=9)
    for f in frames:
        writer.write(f[:, :, ::-1])
    writer.release()
    out = str(tmp_path / "vis")
    summary = _run(
        setup, "--video-input", video, "--output", out, "--task", "instance", "--confidence-threshold", "0"
    )
    assert len(summary) == 3 and all(s["num_instances"] > 0 for s in summary)
    cap = cv2.VideoCapture(os.path.join(out, "clip.mp4"))
    read = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        read.append(frame)
    cap.release()
    assert len(read) == 3 and read[0].shape == (64, 80, 3)
    assert np.abs(read[0].astype(int) - frames[0][:, :, ::-1].astype(int)).mean() > 5
