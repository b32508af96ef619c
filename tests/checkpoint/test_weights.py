"""Weights files: Detectron2 .pkl, .pth, legacy names, pretrained backbones, shape mismatches,
and files crafted to run code when unpickled."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from mask2former.checkpoint import CheckpointError, load_state_dict_file, load_weights, save_weights
from mask2former.modeling import build_model
from mask2former.utils.testing import tiny_cfg


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_cfg()).eval()


def _fresh_model():
    torch.manual_seed(1)
    return build_model(tiny_cfg()).eval()


def _assert_same_weights(a, b):
    sb = b.state_dict()
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, sb[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_save_and_load_both_formats(model, tmp_path, suffix):
    path = tmp_path / f"model_final{suffix}"
    save_weights(model, str(path))
    other = _fresh_model()
    report = load_weights(other, str(path))
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    _assert_same_weights(model, other)


def test_detectron2_pkl_layout_and_plain_state_dict(model, tmp_path):
    """`{"model": {name: numpy}}` with extra metadata (as the model zoo's files), and a bare
    state dict saved with torch.save."""
    state = model.state_dict()
    pkl = tmp_path / "model_final_abc123.pkl"
    with open(pkl, "wb") as f:
        pickle.dump(
            {
                "model": {k: v.numpy() for k, v in state.items()},
                "__author__": "FAIR",
                "matching_heuristics": False,
            },
            f,
            protocol=2,
        )
    other = _fresh_model()
    assert not load_weights(other, str(pkl)).missing
    _assert_same_weights(model, other)
    bare = tmp_path / "bare.pth"
    torch.save(state, bare)
    other = _fresh_model()
    assert not load_weights(other, str(bare)).missing
    _assert_same_weights(model, other)


def test_legacy_pixel_decoder_names_are_renamed_once(model):
    state = {
        (
            k.replace("sem_seg_head.pixel_decoder.", "sem_seg_head.")
            if k.startswith("sem_seg_head.pixel_decoder.")
            else k
        ): v
        for k, v in model.state_dict().items()
    }
    assert any(k.startswith("sem_seg_head.layer_1") for k in state)
    other = _fresh_model()
    report = load_weights(other, state)
    assert report.missing == [] and report.unexpected == []
    _assert_same_weights(model, other)


def test_pretrained_backbone_file_without_prefix(model, tmp_path):
    """An ImageNet-pretrained backbone in Detectron2 names (`stem.conv1.weight`, ...) loads into
    `backbone.*`, leaving the head as it was (with allow_partial, as training does)."""
    backbone_only = {
        k[len("backbone.") :]: v.numpy() for k, v in model.state_dict().items() if k.startswith("backbone.")
    }
    path = tmp_path / "R-18.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": backbone_only, "__author__": "torchvision", "matching_heuristics": True}, f)
    other = _fresh_model()
    head_before = {k: v.clone() for k, v in other.state_dict().items() if not k.startswith("backbone.")}
    report = load_weights(other, str(path), allow_partial=True)  # fine-tuning from a backbone
    assert report.unexpected == []
    assert all(not k.startswith("backbone.") for k in report.missing)
    for k, v in other.state_dict().items():
        if k.startswith("backbone."):
            torch.testing.assert_close(v, model.state_dict()[k], rtol=0, atol=0)
        else:
            torch.testing.assert_close(v, head_before[k], rtol=0, atol=0)


def test_other_class_count_skips_mismatched_tensors_with_a_warning(model, caplog):
    cfg = tiny_cfg(num_classes=9)
    other = build_model(cfg)
    with caplog.at_level("WARNING"):
        report = load_weights(other, model.state_dict())
    names = {m[0] for m in report.mismatched}
    assert "sem_seg_head.predictor.class_embed.weight" in names
    assert "criterion.empty_weight" in names
    (line,) = [r.getMessage() for r in caplog.records if "left at their initial values" in r.getMessage()]
    assert "\n" not in line and "the class head is re-initialised" in line
    assert "sem_seg_head.predictor.class_embed.{bias 6->10, weight 6x32->10x32}" in line
    torch.testing.assert_close(
        other.state_dict()["sem_seg_head.predictor.mask_embed.layers.0.weight"],
        model.state_dict()["sem_seg_head.predictor.mask_embed.layers.0.weight"],
    )


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": _RunsCode()}}, f)
    with pytest.raises(CheckpointError, match=r"evil\.pkl.*posix\.system|evil\.pkl.*os\.system"):
        load_state_dict_file(str(path))


def test_torch_file_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": _RunsCode()}}, path)
    with pytest.raises(CheckpointError, match=r"refused to load .*evil\.pth"):
        load_state_dict_file(str(path))


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict_file(str(tmp_path / "nope.pth"))
    bad = tmp_path / "truncated.pkl"
    bad.write_bytes(pickle.dumps({"model": {}})[:5])
    with pytest.raises(CheckpointError, match="truncated.pkl"):
        load_state_dict_file(str(bad))
    notdict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], notdict)
    with pytest.raises(CheckpointError, match="list.pth"):
        load_state_dict_file(str(notdict))
