"""demo/demo.py on generated images and a video, with a tiny model saved to a file."""

import importlib.util
import logging
import os
import re
import subprocess
import sys

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


def test_panoptic_and_semantic_drawings_and_globs(setup, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mask2former.demo")
    pattern = str(setup["images"] / "img[01].png")
    for task, logged in (
        ("auto", r"img0.png: \d+ segments \(\d+ things\) drawn"),
        ("semantic", r"img0.png: a semantic map of [1-9]\d* classes drawn"),
    ):
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
        assert re.search(logged, caplog.text), caplog.text
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


# ---- faults: lost inputs, missing weights, special and undecodable files (docs/FAULTS.md) ----
@pytest.fixture()
def no_model(monkeypatch):
    """Any attempt to build the model fails: argument errors must come before it."""

    def refuse(cfg):
        raise AssertionError("the model was loaded before the arguments were checked")

    import mask2former.inference

    monkeypatch.setattr(mask2former.inference, "Predictor", refuse)  # demo imports it when it builds one


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_refuses_random_weights_unless_asked(setup, tmp_path, no_model):
    image = str(setup["images"] / "img0.png")
    argv = ["--config-file", str(TINY_CONFIG), "--input", image, "--output", str(tmp_path / "o")]
    with pytest.raises(demo.DemoArgumentError, match="random weights.*--allow-random-weights"):
        demo.main(argv)
    with pytest.raises(demo.DemoArgumentError, match="random weights"):
        demo.main([*argv, "--opts", "MODEL.WEIGHTS", ""])
    with pytest.raises(demo.DemoArgumentError, match="no such file"):
        demo.main([*argv, "--opts", "MODEL.WEIGHTS", str(tmp_path / "missing.pth")])
    with pytest.raises(AssertionError, match="model was loaded"):  # allowed: it goes on to the model
        demo.main([*argv, "--allow-random-weights"])


def test_bad_arguments_are_refused_before_the_model_loads(setup, tmp_path, no_model):
    images = setup["images"]
    before = _snapshot(images)
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--input", str(empty), "--output", str(tmp_path / "o")], "holds no image"),
        (["--input", str(images), "--output", str(tmp_path / "one.png")], "file name but there are 3 inputs"),
        (["--video-input", str(tmp_path / "missing.mp4"), "--output", str(tmp_path / "o")], "no such file"),
        (["--input", str(images), "--output", str(images)], "would overwrite the input"),
        (["--input", str(images / "img0.png"), "--output", str(images / "img0.png")], "would overwrite"),
        (["--input", str(images / "img0.png"), "--output", str(images)], "would overwrite the input"),
        (["--input", f"{images}/*.png", "--output", str(images / ".." / images.name)], "would overwrite"),
        (["--input", str(tmp_path / "nope.png"), "--output", str(tmp_path / "o")], "no such file or folder"),
    ]
    for args, message in cases:
        with pytest.raises(demo.DemoArgumentError, match=message):
            _run(setup, *args)
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not really a video")
    for out in (str(video), str(tmp_path)):  # the folder form would name clip.mp4 too
        with pytest.raises(demo.DemoArgumentError, match="overwrite the input video"):
            _run(setup, "--video-input", str(video), "--output", out)
    assert _snapshot(images) == before
    assert not (tmp_path / "o").exists()


def test_output_inside_the_input_folder_keeps_the_inputs(setup, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes((setup["images"] / "img0.png").read_bytes())
    before = _snapshot(folder)
    summary = _run(setup, "--input", str(folder), "--output", str(folder / "vis"), "--task", "instance")
    assert [s["output"] for s in summary] == [str(folder / "vis" / "a.png"), str(folder / "vis" / "b.png")]
    assert _snapshot(folder) == before


def test_inputs_with_the_same_base_name_stay_apart(setup, tmp_path):
    for i, sub in enumerate(("a", "b")):
        (tmp_path / sub).mkdir()
        Image.fromarray(shape_scenes(1, seed=20 + i)[0]).save(tmp_path / sub / "x.png")
    out = tmp_path / "out"
    summary = _run(setup, "--input", str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"),
                   "--output", str(out), "--task", "instance", "--confidence-threshold", "0")  # fmt: skip
    assert [s["output"] for s in summary] == [str(out / "a" / "x.png"), str(out / "b" / "x.png")]
    drawn = [cv2.imread(s["output"]) for s in summary]
    assert not np.array_equal(drawn[0], drawn[1])
    # the same file named twice is drawn once
    assert len(_run(setup, "--input", str(tmp_path / "a"), str(tmp_path / "a" / "x.png"), "--output",
                    str(tmp_path / "o2"), "--task", "instance")) == 1  # fmt: skip


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs need a POSIX system")
def test_fifo_and_undecodable_files_are_skipped_and_the_batch_finishes(setup, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.png").write_bytes((setup["images"] / "img1.png").read_bytes())
    (folder / "broken.png").write_text("<html>not an image</html>")
    os.mkfifo(folder / "pipe.png")
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(REPO, "demo", "demo.py"), "--config-file", str(TINY_CONFIG),
           "--input", str(folder), "--output", str(out), "--opts", "MODEL.WEIGHTS", setup["weights"]]  # fmt: skip
    # a FIFO that is opened blocks forever: the timeout turns a hang into a failure
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    assert "skipping" in run.stderr and "pipe.png: a FIFO" in run.stderr
    assert "Cannot decode image" in run.stderr and "broken.png" in run.stderr
    assert "done: 1 image(s) drawn, 2 skipped" in run.stderr
    assert sorted(os.listdir(out)) == ["good.png"]
    with pytest.raises(demo.DemoArgumentError, match="is a FIFO"):  # named directly: refused
        _run(setup, "--input", str(folder / "pipe.png"), "--output", str(out))


def test_confidence_threshold_filters_panoptic_segments(setup, tmp_path):
    path = str(setup["images"] / "img0.png")
    loose = [
        "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD",
        "0.0",
        "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD",
        "0.0",
    ]
    predictor = Predictor(tiny_shapes_cfg("MODEL.WEIGHTS", setup["weights"], *loose))
    _, segments = predictor(path)["panoptic_seg"]
    scores = sorted(s["score"] for s in segments)
    assert len(scores) >= 2 and all(0 < s <= 1 for s in scores)
    middle = (scores[0] + scores[-1]) / 2
    pictures, counts = [], []
    for i, thr in enumerate((0.0, middle, 1.01)):
        out = str(tmp_path / f"pan{i}.png")
        (s,) = _run(setup, "--input", path, "--output", out, "--task", "panoptic", "--confidence-threshold",
                    str(thr), opts=loose)  # fmt: skip
        pictures.append(cv2.imread(out))
        counts.append(s["num_instances"])
    kept_things = sum(bool(s["isthing"]) for s in segments if s["score"] >= middle)
    assert counts[1] == kept_things and counts[2] == 0
    assert not np.array_equal(pictures[0], pictures[1])
    assert np.array_equal(pictures[2], cv2.imread(path))  # every segment filtered: nothing drawn
