"""Boxes from masks, Instances bookkeeping and ImageList padding."""

import pickle

import pytest
import torch

from mask2former.structures import Boxes, ImageList, Instances


def test_boxes_from_masks_are_tight_and_empty_masks_give_zero_boxes():
    masks = torch.zeros(3, 5, 6, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    masks[2, 4, 0] = True
    boxes = Boxes.from_masks(masks).tensor
    torch.testing.assert_close(
        boxes, torch.tensor([[2.0, 1.0, 5.0, 3.0], [0.0, 0.0, 0.0, 0.0], [0.0, 4.0, 1.0, 5.0]])
    )
    assert Boxes.from_masks(torch.zeros(0, 4, 4, dtype=torch.bool)).tensor.shape == (0, 4)


def test_instances_fields_index_and_pickle():
    inst = Instances((4, 5), scores=torch.tensor([0.5, 0.9]), pred_classes=torch.tensor([1, 2]))
    assert len(inst) == 2 and inst.image_size == (4, 5)
    assert inst[1].scores.tolist() == [pytest.approx(0.9)]
    with pytest.raises(ValueError, match="length"):
        inst.pred_masks = torch.zeros(3, 4, 5)
    with pytest.raises(AttributeError, match="no field 'boxes'"):
        _ = inst.boxes
    clone = pickle.loads(pickle.dumps(inst))
    assert clone.pred_classes.tolist() == [1, 2]


def test_image_list_pads_to_divisibility():
    images = ImageList.from_tensors([torch.ones(3, 5, 7), torch.ones(3, 9, 4)], size_divisibility=8)
    assert images.tensor.shape == (2, 3, 16, 8)
    assert images.image_sizes == [(5, 7), (9, 4)]
    assert images.tensor[0, :, 5:].abs().sum() == 0 and images.tensor[0, :, :5, :7].min() == 1
    with pytest.raises(ValueError, match="empty"):
        ImageList.from_tensors([])
