"""A panoptic config on an instance-only dataset (a labelme-style COCO instances export) builds
right after registration and says, once, which keys skip the outputs it cannot score."""

import logging

from mask2former.data import register_coco_instances
from mask2former.modeling import build_model
from mask2former.utils.testing import make_labelme_coco, tiny_shapes_cfg


def test_panoptic_config_on_instance_only_dataset_warns_with_the_keys(tmp_path, caplog):
    json_path, image_dir = make_labelme_coco(tmp_path / "data", n_images=2, size=(32, 40))
    register_coco_instances("instance_only_warn_train", {}, json_path, image_dir)
    cfg = tiny_shapes_cfg(
        "DATASETS.TRAIN", ("instance_only_warn_train",), "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 2
    )
    with caplog.at_level(logging.WARNING, logger="mask2former.modeling.meta_arch"):
        model = build_model(cfg)
    warnings = [r.getMessage() for r in caplog.records if "instance-only dataset" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "PANOPTIC_ON False MODEL.MASK_FORMER.TEST.SEMANTIC_ON False" in warnings[0]
    assert model.thing_classes_mask.tolist() == [True, True]  # every class a thing
