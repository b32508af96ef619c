"""Every key of the defaults does something: it is read by the code that builds and runs the
model (recorded while training, evaluating with TTA and building every variant a key selects),
or it is listed in `UNSUPPORTED_KEYS` and refused, with the reason, when set to anything but its
default. Detectron2's own keys that this project does not use are ignored alike in YAML and on
the command line, with one notice."""

from __future__ import annotations

import argparse
import logging
import re

import pytest
import torch

from mask2former.config import ConfigError, get_cfg
from mask2former.config.config import CfgNode
from mask2former.config.key_support import UNSUPPORTED_KEYS, check_supported
from mask2former.data import build_dataset_mapper
from mask2former.data.dataset_mappers import DATASET_MAPPER_REGISTRY
from mask2former.data.datasets.shapes import SceneConfig, generate_split, register_bundled_datasets
from mask2former.engine.defaults import default_setup
from mask2former.engine.solver import build_lr_scheduler, build_optimizer
from mask2former.engine.trainer import Trainer
from mask2former.modeling import build_model
from mask2former.utils.testing import REPO, TINY_CONFIG

TINY = str(TINY_CONFIG)


class RecordingCfgNode(CfgNode):
    """A config that records the full name of every value read as an attribute."""

    reads: set[str] = set()

    def __getattr__(self, name: str):
        value = super().__getattr__(name)
        if not isinstance(value, CfgNode):
            RecordingCfgNode.reads.add(self.__dict__.get("_key_prefix", "") + name)
        return value


def recording(cfg: CfgNode) -> RecordingCfgNode:
    rec = RecordingCfgNode(cfg)

    def set_prefix(node: RecordingCfgNode, prefix: str) -> None:
        object.__setattr__(node, "_key_prefix", prefix)
        for k, v in node.items():
            if isinstance(v, CfgNode):
                set_prefix(v, prefix + k + ".")

    set_prefix(rec, "")
    return rec


def leaf_keys(node: CfgNode, prefix: str = ""):
    for k, v in node.items():
        if isinstance(v, CfgNode):
            yield from leaf_keys(v, prefix + k + ".")
        else:
            yield prefix + k


def _tiny(*overrides, root=None):
    cfg = get_cfg()
    cfg.merge_from_file(TINY)
    cfg.merge_from_list(list(overrides))
    return cfg


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys") / "shapes"
    scenes = SceneConfig(height=64, width=64, min_things=1, max_things=2)
    generate_split(str(root), "train", 4, seed=0, cfg=scenes)
    generate_split(str(root), "val", 2, seed=1, cfg=scenes)
    register_bundled_datasets(str(root), prefix="keys_shapes")
    return root


def _exercise_everything(shapes, tmp_path) -> set[str]:
    """Run every code path a key can select, recording what is read."""
    RecordingCfgNode.reads = set()
    data = ["DATASETS.TRAIN", ("keys_shapes_train_panoptic",), "DATASETS.TEST", ("keys_shapes_val_panoptic",)]
    # one training iteration, then the evaluation with test-time augmentation, from the command line's set-up
    cfg = recording(
        _tiny(
            *data,
            "SOLVER.MAX_ITER",
            1,
            "OUTPUT_DIR",
            str(tmp_path / "run"),
            "TEST.AUG.ENABLED",
            True,
            "TEST.AUG.MIN_SIZES",
            (48, 64),
            "TEST.AUG.MAX_SIZE",
            128,
            "TEST.EVAL_PERIOD",
            1,
        )
    )
    default_setup(cfg, argparse.Namespace(config_file="", eval_only=False))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    # the variants other values select
    model = trainer.model
    for opt, sched, clip in (("SGD", "WarmupMultiStepLR", "norm"), ("ADAMW", "WarmupPolyLR", "value")):
        c = recording(_tiny("SOLVER.OPTIMIZER", opt, "SOLVER.LR_SCHEDULER_NAME", sched,
                            "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", clip, "SOLVER.AMP.ENABLED", True))  # fmt: skip
        build_lr_scheduler(c, build_optimizer(c, model))
        from mask2former.engine.solver import GradientClipSettings
        from mask2former.engine.trainer import amp_dtype

        GradientClipSettings.from_cfg(c)
        amp_dtype(c)
    for name, _ in DATASET_MAPPER_REGISTRY:
        build_dataset_mapper(recording(_tiny("INPUT.DATASET_MAPPER_NAME", name, "INPUT.CROP.ENABLED", True,
                                             "INPUT.COLOR_AUG_SSD", True)), is_train=True)  # fmt: skip
    swin = _tiny("MODEL.BACKBONE.NAME", "D2SwinTransformer", "MODEL.SWIN.EMBED_DIM", 16,
                 "MODEL.SWIN.DEPTHS", [1, 1, 1, 1], "MODEL.SWIN.NUM_HEADS", [1, 1, 1, 1], *data)  # fmt: skip
    build_model(recording(swin))
    build_model(recording(_tiny("MODEL.RESNETS.DEPTH", 50, "MODEL.RESNETS.RES2_OUT_CHANNELS", 256,
                                "MODEL.RESNETS.RES5_DILATION", 2, "MODEL.RESNETS.RES5_MULTI_GRID", [1, 2, 4], *data)))  # fmt: skip
    return set(RecordingCfgNode.reads)


def test_every_default_key_is_read_or_refused(shapes, tmp_path):
    reads = _exercise_everything(shapes, tmp_path)
    keys = set(leaf_keys(get_cfg()))
    unaccounted = sorted(keys - reads - set(UNSUPPORTED_KEYS))
    assert unaccounted == [], f"keys neither read nor refused: {unaccounted}"
    assert sorted(set(UNSUPPORTED_KEYS) - keys) == []
    both = sorted(set(UNSUPPORTED_KEYS) & reads)
    assert both == [], f"keys both refused and read: {both}"


def _other_value(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "_other"
    if isinstance(value, list | tuple):
        return type(value)([*value, value[0]] if value else [1])
    return 1.0  # None


@pytest.mark.parametrize("key", sorted(UNSUPPORTED_KEYS))
def test_unsupported_keys_are_refused_with_the_reason(key):
    cfg = get_cfg()
    check_supported(cfg)  # defaults pass
    node = cfg
    *path, last = key.split(".")
    for p in path:
        node = node[p]
    node[last] = _other_value(node[last])
    with pytest.raises(
        ConfigError, match=re.escape(key) + ".*not supported: " + re.escape(UNSUPPORTED_KEYS[key])
    ):
        check_supported(cfg)
    with pytest.raises(ConfigError, match="not supported"):
        build_model(cfg)


def test_unsupported_key_on_the_command_line_and_in_yaml_fails_at_merge(tmp_path):
    cfg = get_cfg()
    with pytest.raises(ConfigError, match="TEST.PRECISE_BN.ENABLED is not supported"):
        cfg.merge_from_list(["TEST.PRECISE_BN.ENABLED", "True"])
    path = tmp_path / "c.yaml"
    path.write_text("TEST:\n  PRECISE_BN:\n    ENABLED: true\n")
    with pytest.raises(ConfigError, match=f"{path}.*TEST.PRECISE_BN.ENABLED is not supported"):
        get_cfg().merge_from_file(str(path))


def test_detectron2_keys_are_ignored_alike_in_yaml_and_on_the_command_line(tmp_path, caplog):
    path = tmp_path / "d2.yaml"
    path.write_text("MODEL:\n  RPN:\n    HEAD_NAME: StandardRPNHead\n  ROI_HEADS:\n    NUM_CLASSES: 3\n")
    caplog.set_level(logging.WARNING, logger="mask2former.config.config")
    from_yaml = get_cfg()
    from_yaml.merge_from_file(str(path))
    from_cli = get_cfg()
    from_cli.merge_from_list(["MODEL.RPN.HEAD_NAME", "StandardRPNHead", "MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    assert from_yaml == from_cli == get_cfg()
    notices = [r.getMessage() for r in caplog.records if "does not use" in r.getMessage()]
    assert len(notices) == 2, notices  # one per source, naming both keys
    for n in notices:
        assert "MODEL.RPN.HEAD_NAME" in n and "MODEL.ROI_HEADS.NUM_CLASSES" in n
    # a typo of a key this project uses is still an error, in both places
    with pytest.raises(ConfigError, match="MODEL.MASK_FORMER.HIDEN_DIM"):
        get_cfg().merge_from_list(["MODEL.MASK_FORMER.HIDEN_DIM", "4"])


def test_train_net_prints_the_ignoring_notice_once(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "d2.yaml"
    path.write_text(f"_BASE_: {TINY}\nMODEL:\n  RPN:\n    HEAD_NAME: X\n")
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "train_net.py"),
            "--config-file",
            str(path),
            "--eval-only",
            "MODEL.ROI_HEADS.NUM_CLASSES",
            "3",
            "OUTPUT_DIR",
            str(tmp_path / "o"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = out.stdout + out.stderr
    assert "--eval-only needs weights" in text  # stops after the config set-up
    notices = [line for line in text.splitlines() if "does not use" in line]
    assert len(notices) == 2, text[-3000:]  # read twice (device, then the worker), told once per source
    assert "d2.yaml: ignoring 1" in notices[0] and notices[0].endswith("MODEL.RPN.HEAD_NAME")
    assert notices[1].endswith("command line: ignoring 1 Detectron2 key(s) this project does not use: "
                               "MODEL.ROI_HEADS.NUM_CLASSES")  # fmt: skip


def test_deep_supervision_false_computes_only_the_last_layer(shapes):
    cfg = _tiny(
        "MODEL.MASK_FORMER.DEEP_SUPERVISION", False, "DATASETS.TRAIN", ("keys_shapes_train_panoptic",)
    )
    model = build_model(cfg).train()
    calls = []
    model.sem_seg_head.predictor.class_embed.register_forward_hook(lambda *a: calls.append(1))
    image = torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)
    from mask2former.structures import Instances

    inst = Instances(
        (64, 64), gt_classes=torch.tensor([0]), gt_masks=torch.zeros(1, 64, 64, dtype=torch.bool)
    )
    inst.gt_masks[0, 10:30, 10:30] = True
    losses = model([{"image": image, "instances": inst}])
    assert sorted(losses) == ["loss_ce", "loss_dice", "loss_mask"]
    assert len(calls) == 1  # class head on the last layer only
    out = model.sem_seg_head(model.backbone(torch.zeros(1, 3, 64, 64)))
    assert "aux_outputs" not in out
    deep = build_model(_tiny("DATASETS.TRAIN", ("keys_shapes_train_panoptic",))).train()
    assert len(deep.sem_seg_head(deep.backbone(torch.zeros(1, 3, 64, 64)))["aux_outputs"]) == 1


def test_ignore_value_must_agree_with_the_dataset(shapes):
    data = ["DATASETS.TRAIN", ("keys_shapes_train_panoptic",)]  # metadata ignore_label 255
    assert build_dataset_mapper(_tiny(*data), is_train=True).ignore_label == 255
    with pytest.raises(ValueError, match="IGNORE_VALUE is 65 but dataset 'keys_shapes_train_panoptic'.*255"):
        build_dataset_mapper(_tiny(*data, "MODEL.SEM_SEG_HEAD.IGNORE_VALUE", 65), is_train=True)
