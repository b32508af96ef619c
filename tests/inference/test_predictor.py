"""Predictor: config -> model (+ weights), test-time resizing, BGR/RGB/file inputs, batches."""

import numpy as np
import pytest
import torch
from PIL import Image

from mask2former.checkpoint import save_weights
from mask2former.inference import Predictor
from mask2former.utils.testing import shape_scenes, tiny_shapes_cfg


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    predictor = Predictor(tiny_shapes_cfg())
    path = str(tmp_path_factory.mktemp("w") / "tiny.pth")
    save_weights(predictor.model, path)
    return path


def test_loads_weights_and_outputs_at_original_resolution(weights, tmp_path):
    torch.manual_seed(123)  # a different random init, replaced by the file's weights
    predictor = Predictor(tiny_shapes_cfg("MODEL.WEIGHTS", weights))
    saved = torch.load(weights, weights_only=True)["model"]
    for k, v in predictor.model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert predictor.metadata.stuff_classes[-1] == "water"

    rgb = shape_scenes(1, h=50, w=90)[0]
    path = str(tmp_path / "img.png")
    Image.fromarray(rgb).save(path)
    out_rgb = predictor(rgb, format="RGB")
    out_bgr = predictor(np.ascontiguousarray(rgb[:, :, ::-1]))  # BGR is the default
    out_file = predictor(path)
    assert out_rgb["sem_seg"].shape == (8, 50, 90)
    pan, segments = out_rgb["panoptic_seg"]
    assert pan.shape == (50, 90) and pan.dtype == torch.int32
    inst = out_rgb["instances"]
    assert inst.pred_masks.shape[1:] == (50, 90) and 0 < len(inst) <= 20  # TEST.DETECTIONS_PER_IMAGE
    assert (inst.pred_classes < 4).all()  # things only (panoptic inference is on)
    for other in (out_bgr, out_file):
        torch.testing.assert_close(other["sem_seg"], out_rgb["sem_seg"])
        assert torch.equal(other["panoptic_seg"][0], pan)
    flipped = predictor(rgb, format="BGR")  # the wrong channel order gives another result
    assert not torch.allclose(flipped["sem_seg"], out_rgb["sem_seg"])


def test_batch_in_one_forward_matches_single_images(weights):
    predictor = Predictor(tiny_shapes_cfg("MODEL.WEIGHTS", weights), batch_size=4)
    images = shape_scenes(3)
    calls = []
    predictor.model.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    batched = predictor(images, format="RGB")
    assert calls == [3] and isinstance(batched, list) and len(batched) == 3
    for img, res in zip(images, batched):
        single = predictor(img, format="RGB")
        torch.testing.assert_close(res["sem_seg"], single["sem_seg"], atol=1e-4, rtol=1e-4)
    predictor.batch_size = 2
    calls.clear()
    assert len(predictor(images + images[:2], format="RGB")) == 5
    assert calls == [2, 2, 1]
    assert predictor([]) == []


def test_resizes_for_testing_and_refuses_bad_inputs(weights):
    predictor = Predictor(tiny_shapes_cfg("MODEL.WEIGHTS", weights, "INPUT.MIN_SIZE_TEST", 32))
    seen = []
    predictor.model.register_forward_pre_hook(lambda m, args: seen.append(args[0][0]["image"].shape))
    out = predictor(shape_scenes(1, h=64, w=96)[0])
    assert seen == [(3, 32, 48)] and out["sem_seg"].shape == (8, 64, 96)
    with pytest.raises(ValueError, match=r"uint8 array \[H, W, 3\]"):
        predictor(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="format"):
        predictor(shape_scenes(1)[0], format="BRG")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        predictor("nope.png")
