"""The worked example of docs/EXTENDING.md (projects/TextClassifier): a head classifying by dot
product with fixed class-name embeddings and a subclassed meta-architecture, registered from user
code, selected from YAML, trained with the project's train_net.py (tools/train_net.py's command
line plus a config adder) on the bundled shapes data, evaluated, and loaded back."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mask2former.checkpoint import load_weights
from mask2former.config import ConfigError, get_cfg
from mask2former.data import MetadataCatalog
from mask2former.data.datasets.shapes import SceneConfig, generate_split, register_bundled_datasets
from mask2former.inference import Predictor
from mask2former.modeling import build_model
from mask2former.utils.testing import REPO, TOOLS, shape_scenes, unique_dataset_name

PROJECT = REPO / "projects" / "TextClassifier"
TINY_CONFIG = PROJECT / "configs" / "text_maskformer_R18_tiny_test.yaml"
sys.path.insert(0, str(PROJECT))

from text_classifier import (  # noqa: E402
    TextClassifier,
    TextMaskFormer,
    add_text_classifier_config,
    encode_class_names,
)


def _cfg(*opts):
    cfg = get_cfg()
    add_text_classifier_config(cfg)
    cfg.merge_from_file(str(TINY_CONFIG))
    cfg.merge_from_list(list(opts))
    return cfg


def test_logits_are_cosine_similarities_with_fixed_class_embeddings():
    names = ["circle", "square", "sky"]
    embeddings = encode_class_names(names, 16)  # [3, 16]
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(3))
    assert torch.equal(embeddings, encode_class_names(names, 16))  # deterministic
    torch.manual_seed(0)
    head = TextClassifier(hidden_dim=8, class_embeddings=embeddings, temperature=0.5)
    x = torch.randn(2, 5, 8)  # [B, Q, C]
    query = head.proj(x)
    classes = torch.cat([embeddings, head.void_embedding])  # [K+1, D]
    expected = F.cosine_similarity(query[:, :, None], classes[None, None], dim=-1) / 0.5  # [B, Q, K+1]
    torch.testing.assert_close(head(x), expected)
    # fixed: saved with the weights but not a trainable parameter
    assert "class_embeddings" in head.state_dict()
    assert all(p is not head.class_embeddings for p in head.parameters())


def test_extension_keys_need_the_config_adder(caplog):
    cfg = get_cfg()
    cfg.merge_from_file(str(TINY_CONFIG))  # MODEL is open to Detectron2's keys: a warning only
    assert (
        "this project does not use: MODEL.TEXT_CLASSIFIER.EMBED_DIM, MODEL.TEXT_CLASSIFIER.TEMPERATURE"
        in (caplog.text)
    )
    with pytest.raises(ValueError, match="add_text_classifier_config"):
        build_model(cfg)
    cfg = _cfg()
    with pytest.raises(ConfigError, match="MODEL.TEXT_CLASSIFIER.TEMPERATUR"):
        cfg.merge_from_list(["MODEL.TEXT_CLASSIFIER.TEMPERATUR", 1.0])  # a typo in the extension's keys


def _load_tools_train_net():
    spec = importlib.util.spec_from_file_location("tools_train_net", TOOLS / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_text_maskformer_trains_evaluates_and_loads_back(tmp_path):
    root = tmp_path / "datasets" / "shapes"
    scenes = SceneConfig(height=64, width=64, min_things=1, max_things=2)
    generate_split(str(root), "train", 6, seed=0, cfg=scenes)
    generate_split(str(root), "val", 2, seed=1, cfg=scenes)
    out = tmp_path / "out"

    # Train through the project's command line; the builtin shapes names resolve under $DETECTRON2_DATASETS.
    env = {**os.environ, "DETECTRON2_DATASETS": str(tmp_path / "datasets")}
    run = subprocess.run(
        [sys.executable, str(PROJECT / "train_net.py"), "--config-file", str(TINY_CONFIG), "OUTPUT_DIR", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "TextMaskFormer" in (out / "log.txt").read_text()  # the model built is the extension's
    final = out / "model_final.pth"
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    trained_metrics = rows[-1]  # the evaluation after the last iteration
    keys = ["panoptic_seg/PQ", "panoptic_seg/SQ", "segm/AP", "sem_seg/mIoU", "sem_seg/fwIoU", "sem_seg/pACC"]
    assert all(k in trained_metrics for k in keys), sorted(trained_metrics)

    # Loaded back in this process: the same datasets under another name, the project imported.
    prefix = unique_dataset_name("text_shapes")
    register_bundled_datasets(str(root), prefix=prefix)
    datasets = ["DATASETS.TRAIN", (f"{prefix}_train_panoptic",), "DATASETS.TEST", (f"{prefix}_val_panoptic",)]
    cfg = _cfg(*datasets, "OUTPUT_DIR", str(tmp_path / "eval"))
    model = build_model(cfg)
    assert isinstance(model, TextMaskFormer)
    report = load_weights(model, str(final))
    assert report.missing == [] and report.unexpected == []
    classifier = model.sem_seg_head.predictor.class_embed
    assert isinstance(classifier, TextClassifier)
    names = MetadataCatalog.get(f"{prefix}_train_panoptic").stuff_classes
    fixed = F.normalize(encode_class_names(names, 32), dim=-1)
    assert torch.equal(classifier.class_embeddings, fixed)  # saved, loaded, never trained

    # --eval-only with the saved weights reproduces the evaluation at the end of training.
    train_net = _load_tools_train_net()
    args = train_net.default_argument_parser().parse_args(
        ["--config-file", str(TINY_CONFIG), "--eval-only", "MODEL.WEIGHTS", str(final), *map(str, datasets),
         "OUTPUT_DIR", str(tmp_path / "eval")]
    )  # fmt: skip
    results = train_net.main(args, config_adders=(add_text_classifier_config,))
    for key in keys:
        task, metric = key.split("/")
        assert results[task][metric] == pytest.approx(trained_metrics[key], abs=1e-6), key

    # The subclass's own key: a test-time vocabulary. Other classes get exactly zero score.
    kept = ["sky", "grass", "circle"]
    cfg = _cfg(*datasets, "MODEL.WEIGHTS", str(final), "MODEL.TEXT_CLASSIFIER.TEST_CLASSES", kept)
    kept_ids = [names.index(n) for n in kept]
    blocked = [i for i in range(len(names)) if i not in kept_ids]
    predictor = Predictor(cfg)
    for out_image in predictor(shape_scenes(3, 64, 64, seed=5), format="RGB"):
        assert out_image["sem_seg"][blocked].abs().max() == 0
        assert set(out_image["sem_seg"].argmax(0).unique().tolist()) <= set(kept_ids)
        assert set(out_image["instances"].pred_classes.tolist()) <= set(kept_ids)
        assert {s["category_id"] for s in out_image["panoptic_seg"][1]} <= set(kept_ids)
    with pytest.raises(ValueError, match="TEST_CLASSES"):
        build_model(_cfg(*datasets, "MODEL.TEXT_CLASSIFIER.TEST_CLASSES", ["dog"]))
