"""Visualizer: masks, outlines, boxes and labels change the pixels they should, and only those."""

import numpy as np
import pytest
import torch

from mask2former.data.catalog import Metadata
from mask2former.structures import Boxes, Instances
from mask2former.utils.visualizer import Visualizer, class_color

META = Metadata(
    name="vis_test",
    thing_classes=["circle", "square"],
    thing_colors=[[255, 0, 0], [0, 0, 255]],
    stuff_classes=["circle", "square", "sky"],
    stuff_colors=[[255, 0, 0], [0, 0, 255], [0, 255, 0]],
)


def _image(h=96, w=128):
    return np.full((h, w, 3), 100, dtype=np.uint8)


def _far_from(mask, margin):
    ys, xs = np.nonzero(mask)
    far = np.ones_like(mask)
    far[
        max(0, ys.min() - margin) : ys.max() + margin + 1, max(0, xs.min() - margin) : xs.max() + margin + 1
    ] = False
    return far


def test_sem_seg_fills_each_class_with_its_colour():
    sem = np.full((96, 128), 255, dtype=np.int64)
    sem[:40] = 2
    sem[60:, 80:] = 1
    out = Visualizer(_image(), META, alpha=0.5).draw_sem_seg(sem).get_image()
    # inside the regions, away from outlines and labels: the blend of grey and the class colour
    assert tuple(out[5, 5]) == (50, 177, 50)
    assert tuple(out[63, 83]) == (50, 50, 177)
    assert (out[50, 5] == 100).all()  # void stays untouched
    scores = torch.zeros(3, 96, 128)
    scores[2, :40] = 1
    scores[0, 40:] = 1
    out2 = Visualizer(_image(), META).draw_sem_seg(scores).get_image()
    assert tuple(out2[5, 5]) == (50, 177, 50) and tuple(out2[90, 5]) == (177, 50, 50)


def test_instances_draw_mask_box_and_label_only_near_the_instance():
    masks = torch.zeros(2, 96, 128, dtype=torch.bool)
    masks[0, 10:30, 10:30] = True
    masks[1, 50:80, 70:110] = True
    inst = Instances(
        (96, 128),
        pred_masks=masks,
        pred_boxes=Boxes.from_masks(masks),
        scores=torch.tensor([0.9, 0.8]),
        pred_classes=torch.tensor([0, 1]),
    )
    img = _image()
    out = Visualizer(img, META).draw_instance_predictions(inst).get_image()
    for i in range(2):
        m = masks[i].numpy()
        assert (out[m] != img[m]).any(axis=1).mean() > 0.95
    # below the first instance and left of the second (and of its label above it): untouched
    assert (out[40:, :50] == img[40:, :50]).all()
    empty = Instances((96, 128), pred_masks=masks[:0], pred_boxes=Boxes(torch.zeros(0, 4)),
                      scores=torch.zeros(0), pred_classes=torch.zeros(0, dtype=torch.long))  # fmt: skip
    assert (Visualizer(img, META).draw_instance_predictions(empty).get_image() == img).all()


def test_panoptic_segments_get_their_colours_and_scale_resizes():
    pan = torch.zeros(96, 128, dtype=torch.int32)
    pan[:48] = 1  # sky
    pan[60:90, 20:60] = 2  # a circle
    pan[60:90, 70:110] = 3  # another circle: another shade
    segments = [
        {"id": 1, "category_id": 2, "isthing": False},
        {"id": 2, "category_id": 0, "isthing": True},
        {"id": 3, "category_id": 0, "isthing": True},
    ]
    out = Visualizer(_image(), META).draw_panoptic_seg(pan, segments).get_image()
    assert tuple(out[3, 3]) == (50, 177, 50)
    assert tuple(out[62, 22]) != tuple(out[62, 72])  # two instances of one class differ in shade
    assert (out[55, 5] == 100).all()  # unlabelled pixels untouched
    big = Visualizer(_image(), META, scale=2.0).draw_panoptic_seg(pan, segments).get_image()
    assert big.shape == (192, 256, 3) and tuple(big[6, 6]) == (50, 177, 50)


def test_bad_inputs_are_refused_and_unknown_classes_get_a_palette_colour():
    with pytest.raises(ValueError, match="RGB uint8"):
        Visualizer(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="does not match"):
        Visualizer(_image(), META).draw_sem_seg(np.zeros((10, 10), dtype=np.int64))
    sem = np.full((96, 128), 7, dtype=np.int64)
    out = Visualizer(_image(), None, alpha=1.0).draw_sem_seg(sem).get_image()
    assert tuple(out[2, 2]) == class_color(7)
