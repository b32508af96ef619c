"""The training set's metadata inside checkpoints and weight files: written by the trainer's
checkpointer and `write_state_dict`, read safely, checked against the class head, and used by
`Predictor` in a fresh process where the dataset is not registered."""

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from mask2former.checkpoint import (
    Checkpointer,
    CheckpointError,
    dataset_metadata,
    load_state_dict_file,
    read_checkpoint_metadata,
    save_weights,
    write_state_dict,
)
from mask2former.data import MetadataCatalog
from mask2former.inference import Predictor
from mask2former.modeling import build_model
from mask2former.utils.testing import REPO, TINY_CONFIG, tiny_shapes_cfg, unique_dataset_name

CLASSES = ["bottle", "cup", "plate", "table"]  # 3 things, 1 stuff


def _custom_metadata(name: str) -> dict:
    return {
        "dataset_name": name,
        "num_classes": 4,
        "thing_classes": CLASSES,
        "stuff_classes": CLASSES,
        "thing_colors": [[200, 30, 30], [30, 200, 30], [30, 30, 200], [90, 90, 90]],
        "stuff_colors": [[200, 30, 30], [30, 200, 30], [30, 30, 200], [90, 90, 90]],
        "thing_dataset_id_to_contiguous_id": {1: 0, 2: 1, 3: 2},
        "stuff_dataset_id_to_contiguous_id": {1: 0, 2: 1, 3: 2, 4: 3},
        "label_divisor": 1000,
        "ignore_label": 255,
    }


@pytest.fixture(scope="module")
def custom_model(tmp_path_factory):
    """A tiny 4-class model and its metadata, as training on a custom dataset would leave them."""
    name = unique_dataset_name("metadata_test_custom")
    meta = _custom_metadata(name)
    MetadataCatalog.get(name).set(
        **{k: v for k, v in meta.items() if k not in ("dataset_name", "num_classes")}
    )
    cfg = tiny_shapes_cfg(
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 4, "DATASETS.TRAIN", (name,), "DATASETS.TEST", (name,)
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    return {"cfg": cfg, "model": model, "meta": meta, "root": tmp_path_factory.mktemp("meta")}


def test_dataset_metadata_is_plain_data_of_the_training_set(custom_model):
    meta = dataset_metadata(custom_model["cfg"])
    assert meta == custom_model["meta"]


def test_checkpoints_carry_metadata_loadable_with_weights_only(custom_model):
    out = custom_model["root"] / "run"
    cfg = custom_model["cfg"]
    Checkpointer(custom_model["model"], str(out), metadata=lambda: dataset_metadata(cfg)).save(
        "model_final", iteration=3
    )
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert ckpt["metadata"] == custom_model["meta"]
    assert set(ckpt["model"]) == set(custom_model["model"].state_dict())  # original key layout kept
    assert read_checkpoint_metadata(str(out / "model_final.pth")) == custom_model["meta"]


def test_pkl_and_pth_weight_files_carry_metadata(custom_model):
    for suffix in (".pkl", ".pth"):
        path = str(custom_model["root"] / f"w{suffix}")
        save_weights(custom_model["model"], path, metadata=custom_model["meta"])
        assert read_checkpoint_metadata(path) == custom_model["meta"]
        state = load_state_dict_file(path)
        assert set(state) == set(custom_model["model"].state_dict())
    with open(custom_model["root"] / "w.pkl", "rb") as f:
        raw = pickle.load(f)
    assert set(raw) == {
        "model",
        "__author__",
        "matching_heuristics",
        "metadata",
    }  # Detectron2's layout + one entry


def test_files_without_metadata_read_as_none(custom_model):
    path = str(custom_model["root"] / "published.pth")
    save_weights(custom_model["model"], path)
    assert read_checkpoint_metadata(path) is None


def test_class_count_mismatch_between_weights_and_metadata_names_both(custom_model):
    bad = dict(custom_model["meta"], stuff_classes=CLASSES + ["chair"], thing_classes=CLASSES + ["chair"])
    path = str(custom_model["root"] / "bad.pth")
    save_weights(custom_model["model"], path, metadata=bad)
    with pytest.raises(CheckpointError, match=r"bad.pth: its metadata names 5 classes .* predicts 4"):
        read_checkpoint_metadata(path)
    with pytest.raises(CheckpointError, match="must be a list of strings"):
        write_state_dict(custom_model["model"].state_dict(), path, metadata=dict(bad, thing_classes="bottle"))
        read_checkpoint_metadata(path)


def test_predictor_config_class_count_mismatch_names_both(custom_model):
    path = str(custom_model["root"] / "w4.pth")
    save_weights(custom_model["model"], path, metadata=custom_model["meta"])
    with pytest.raises(ValueError, match="trained on 4 classes .*NUM_CLASSES is 8"):
        Predictor(tiny_shapes_cfg("MODEL.WEIGHTS", path))  # the shapes config has 8 classes
    plain = str(custom_model["root"] / "w4_plain.pth")
    save_weights(custom_model["model"], plain)
    with pytest.raises(
        ValueError, match="dataset .shapes_val_panoptic. names 8 classes but .*NUM_CLASSES is 4"
    ):
        Predictor(tiny_shapes_cfg("MODEL.WEIGHTS", plain, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 4))


def test_fresh_process_uses_the_checkpoint_class_names(custom_model, tmp_path):
    """Nothing registered in the new process: names, colours and thing ids come from the file."""
    path = str(custom_model["root"] / "fresh.pth")
    save_weights(custom_model["model"], path, metadata=custom_model["meta"])
    config = tmp_path / "custom.yaml"
    config.write_text(
        f"_BASE_: {TINY_CONFIG}\nMODEL:\n  SEM_SEG_HEAD:\n    NUM_CLASSES: 4\n"
        f"DATASETS:\n  TRAIN: ('{custom_model['meta']['dataset_name']}',)\n  TEST: ()\n"
    )
    script = (
        "import json, sys\n"
        "from mask2former.config import get_cfg\n"
        "from mask2former.data import MetadataCatalog\n"
        "from mask2former.inference import Predictor\n"
        "from mask2former.utils.visualizer import Visualizer\n"
        "import numpy as np\n"
        "cfg = get_cfg(); cfg.merge_from_file(sys.argv[1]); cfg.merge_from_list(['MODEL.WEIGHTS', sys.argv[2]])\n"
        "registered = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get('thing_classes')\n"
        "p = Predictor(cfg)\n"
        "vis = Visualizer(np.zeros((8, 8, 3), np.uint8), p.metadata)\n"
        "print(json.dumps({'registered': registered, 'names': [vis._name(i, 'thing') for i in range(4)],\n"
        "                  'colors': p.metadata.thing_colors, 'things': p.model.thing_classes_mask.tolist()}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-c", script, str(config), path], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["registered"] is None  # the custom dataset is not registered in that process
    assert got["names"] == CLASSES
    assert got["colors"][0] == [200, 30, 30]
    assert got["things"] == [True, True, True, False]
