"""Paths a dataset names are checked when it loads: outside the root (absolute, `..`), symlink
loops, FIFOs / sockets / folders where an image should be. Readers refuse special files
before opening them (a FIFO would block forever)."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mask2former.data.datasets.coco import load_coco_json, load_sem_seg
from mask2former.data.datasets.coco_panoptic import load_coco_panoptic_json
from mask2former.data.detection_utils import DatasetFormatError, read_image, read_label_png, read_panoptic_png
from mask2former.data.path_check import ALLOW_OUTSIDE_ROOT_ENV
from mask2former.utils.testing import make_coco_instances, make_coco_panoptic


def _finishes(func, timeout: float = 20.0):
    """Run `func` in a daemon thread; fail (instead of hanging the suite) if it blocks."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = func()
        except BaseException as e:  # handed to the test thread
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{func} blocked for {timeout} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _coco_with_file_name(tmp_path: Path, file_name: str) -> tuple[str, str]:
    json_file, image_root, _ = make_coco_instances(tmp_path / "ds")
    data = json.loads(Path(json_file).read_text())
    data["images"][0]["file_name"] = file_name
    Path(json_file).write_text(json.dumps(data))
    return json_file, image_root


@pytest.mark.parametrize(
    "file_name", ["/etc/passwd", "../outside.png", "sub/../../outside.png", "../../../etc/hosts"]
)
def test_paths_outside_the_root_are_refused_at_load(tmp_path: Path, file_name: str, monkeypatch):
    monkeypatch.delenv(ALLOW_OUTSIDE_ROOT_ENV, raising=False)
    json_file, _ = _coco_with_file_name(tmp_path, file_name)
    with pytest.raises(DatasetFormatError, match=r"instances\.json: file_name .* outside the dataset root"):
        load_coco_json(json_file, str(tmp_path / "ds" / "images"))


def test_switch_allows_paths_outside_the_root(tmp_path: Path, monkeypatch):
    outside = tmp_path / "elsewhere.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside)
    json_file, image_root = _coco_with_file_name(tmp_path, "../../elsewhere.png")
    monkeypatch.setenv(ALLOW_OUTSIDE_ROOT_ENV, "1")
    dicts = load_coco_json(json_file, image_root)
    assert os.path.normpath(dicts[0]["file_name"]) == str(outside)
    json_file, image_root = _coco_with_file_name(tmp_path / "abs", str(outside))
    assert load_coco_json(json_file, image_root)[0]["file_name"] == str(outside)


def test_inside_paths_and_symlinked_roots_load(tmp_path: Path):
    json_file, image_root = _coco_with_file_name(tmp_path, "sub/../a.png")
    assert load_coco_json(json_file, image_root)[0]["file_name"].endswith("a.png")
    (tmp_path / "link").symlink_to(tmp_path / "ds" / "images")  # datasets/coco -> /data/coco
    assert len(load_coco_json(json_file, str(tmp_path / "link"))) == 1


def test_symlink_loop_is_reported_at_load(tmp_path: Path):
    json_file, image_root = _coco_with_file_name(tmp_path, "loop.png")
    os.symlink("loop.png", os.path.join(image_root, "loop.png"))
    with pytest.raises(DatasetFormatError, match=r"instances\.json: .*loop\.png is a symlink loop"):
        load_coco_json(json_file, image_root)


def _make_special(path: Path, kind: str) -> socket.socket | None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        return sock
    return None


@pytest.mark.parametrize(
    ("kind", "word"), [("fifo", "a FIFO"), ("socket", "a socket"), ("folder", "a folder")]
)
def test_special_file_named_by_a_json_is_refused_at_load(tmp_path: Path, kind: str, word: str):
    json_file, image_root = _coco_with_file_name(tmp_path, "special.png")
    sock = _make_special(Path(image_root) / "special.png", kind)
    try:
        with pytest.raises(DatasetFormatError, match=f"special.png is {word}, not a regular file"):
            _finishes(lambda: load_coco_json(json_file, image_root))
    finally:
        if sock is not None:
            sock.close()


def test_panoptic_paths_checked_at_load(tmp_path: Path):
    files = make_coco_panoptic(tmp_path / "pan")
    data = json.loads(Path(files["panoptic_json"]).read_text())
    data["annotations"][1]["file_name"] = "../../secret.png"
    Path(files["panoptic_json"]).write_text(json.dumps(data))
    meta = _panoptic_meta()
    with pytest.raises(
        DatasetFormatError, match=r"panoptic\.json: pan_seg_file_name .*secret\.png.* outside"
    ):
        load_coco_panoptic_json(files["panoptic_json"], files["image_root"], files["panoptic_root"], meta)
    data["annotations"][1]["file_name"] = "001.png"
    os.remove(Path(files["panoptic_root"]) / "001.png")
    os.mkfifo(Path(files["panoptic_root"]) / "001.png")
    Path(files["panoptic_json"]).write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError, match="001.png is a FIFO"):
        _finishes(lambda: load_coco_panoptic_json(files["panoptic_json"], files["image_root"],
                                                  files["panoptic_root"], meta))  # fmt: skip


def _panoptic_meta():
    from mask2former.data.catalog import Metadata

    return Metadata(name="paths")


def test_special_files_in_a_listed_folder_are_skipped_with_a_warning(tmp_path: Path, caplog):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for stem in ("a", "b", "c"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(images / f"{stem}.jpg")
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(labels / f"{stem}.png")
    os.remove(images / "b.jpg")
    os.mkfifo(images / "b.jpg")
    os.remove(labels / "c.png")
    os.mkfifo(labels / "c.png")
    with caplog.at_level(logging.WARNING):
        dicts = _finishes(lambda: load_sem_seg(str(labels), str(images)))
    assert [Path(d["file_name"]).name for d in dicts] == ["a.jpg"]
    warning = next(r.getMessage() for r in caplog.records if "skipped 2 entries" in r.getMessage())
    assert "b.jpg (a FIFO)" in warning and "c.png (a FIFO)" in warning


@pytest.mark.parametrize("reader", [read_image, read_label_png, read_panoptic_png])
def test_readers_refuse_a_fifo_instead_of_blocking(tmp_path: Path, reader):
    fifo = tmp_path / "image.png"
    os.mkfifo(fifo)
    with pytest.raises(DatasetFormatError, match=r"image\.png is a FIFO"):
        _finishes(lambda: reader(str(fifo)))
