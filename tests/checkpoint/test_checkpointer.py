"""Checkpointer: atomic writes, the last_checkpoint pointer, NaN weights, RNG round trip."""

import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from mask2former.checkpoint import Checkpointer, get_rng_states, set_rng_states
from mask2former.checkpoint import checkpointer as ckpt_module


def _checkpointer(folder):
    model = nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return Checkpointer(model, str(folder), optimizer=optimizer)


def test_crash_while_saving_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    ck = _checkpointer(tmp_path)
    ck.save("model_0000001", iteration=1)
    good = (tmp_path / "model_0000001.pth").read_bytes()

    def crash_midway(obj, f):
        f.write(b"partial bytes of a checkpoint")
        raise OSError("disk full (injected)")

    with torch.no_grad():
        ck.model.weight.add_(1.0)
    monkeypatch.setattr(ckpt_module.torch, "save", crash_midway)
    with pytest.raises(OSError, match="injected"):
        ck.save("model_0000002", iteration=2)
    monkeypatch.undo()

    # no partial or temp file
    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint",
        "model_0000001.pth",
        "model_0000001.pth.sha256",
    ]
    assert ck.get_checkpoint_file() == str(tmp_path / "model_0000001.pth")
    assert (tmp_path / "model_0000001.pth").read_bytes() == good
    restored = _checkpointer(tmp_path)
    assert restored.load(restored.get_checkpoint_file()) == 1


def test_crash_while_replacing_the_pointer_keeps_it_valid(tmp_path, monkeypatch):
    ck = _checkpointer(tmp_path)
    ck.save("model_0000001", iteration=1)
    real_replace = os.replace

    def fail_on_pointer(src, dst):
        if os.path.basename(dst) == "last_checkpoint":
            raise OSError("crash before the pointer moves (injected)")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt_module.os, "replace", fail_on_pointer)
    with pytest.raises(OSError, match="injected"):
        ck.save("model_0000002", iteration=2)
    monkeypatch.undo()
    # the new file is complete, the pointer still names the previous complete one
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert _checkpointer(tmp_path).load(str(tmp_path / "model_0000002.pth")) == 2


def test_nonfinite_weights_are_never_written(tmp_path):
    ck = _checkpointer(tmp_path)
    ck.save("model_0000001", iteration=1)
    with torch.no_grad():
        ck.model.bias[1] = float("inf")
    with pytest.raises(
        FloatingPointError, match=r"model_0000002\.pth \(iteration 2\): non-finite values in bias"
    ):
        ck.save("model_0000002", iteration=2)
    assert not (tmp_path / "model_0000002.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


def test_checkpoint_restores_model_optimizer_and_rng(tmp_path):
    ck = _checkpointer(tmp_path)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    ck.save("model_0000004", iteration=4)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    saved_weight = ck.model.weight.detach().clone()

    other = _checkpointer(tmp_path)
    assert other.load(other.get_checkpoint_file()) == 4
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2])
    assert torch.equal(other.model.weight, saved_weight)
    assert other.optimizer.state_dict()["state"][0]["step"] == ck.optimizer.state_dict()["state"][0]["step"]


def test_resume_keeps_this_runs_fused_optimizer(tmp_path, caplog):
    """A checkpoint of an unfused optimizer (e.g. from a release before fused kernels) resumes into
    this run's fused one: the kernel choice is not restored from the file, the state is."""
    ck = _checkpointer(tmp_path)  # AdamW without fused
    ck.save("model_0000002", iteration=2)
    model = nn.Linear(4, 3)
    fused = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    resumed = Checkpointer(model, str(tmp_path), optimizer=fused)
    with caplog.at_level("INFO", logger=ckpt_module.__name__):
        resumed.load(resumed.get_checkpoint_file())
    assert [g["fused"] for g in fused.param_groups] == [True]
    assert "fused None -> True" in caplog.text
    assert fused.state_dict()["state"][0]["step"] == ck.optimizer.state_dict()["state"][0]["step"]
    model(torch.randn(2, 4)).sum().backward()
    fused.step()  # runs the fused kernel on the restored state


def test_rng_states_load_with_weights_only(tmp_path):
    torch.save(get_rng_states(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(2))
    set_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(2), expected[2])


def test_pointer_to_a_missing_file_is_an_error(tmp_path):
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    with pytest.raises(FileNotFoundError, match="model_0000009.pth"):
        _checkpointer(tmp_path).get_checkpoint_file()


def test_weights_only_file_is_rejected_for_resume(tmp_path):
    ck = _checkpointer(tmp_path)
    torch.save({"model": ck.model.state_dict()}, tmp_path / "weights.pth")
    with pytest.raises(KeyError, match="not a training checkpoint"):
        ck.load(str(tmp_path / "weights.pth"))


def test_temp_file_of_a_killed_writer_is_cleaned_up(tmp_path):
    (tmp_path / ".model_0000002.pth.tmp.99999").write_bytes(b"half a checkpoint")
    ck = _checkpointer(tmp_path)
    ck.save("model_0000002", iteration=2)
    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint",
        "model_0000002.pth",
        "model_0000002.pth.sha256",
    ]


# ---- corrupt checkpoints: found by their SHA-256, resume falls back to the newest intact one ----
def _three_checkpoints(folder):
    ck = _checkpointer(folder)
    for it in (1, 2, 3):
        with torch.no_grad():
            ck.model.weight.fill_(float(it))
        ck.save(f"model_{it:07d}", iteration=it)
    return ck


def _flip_bit(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04
    path.write_bytes(bytes(data))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage, reason", [(_flip_bit, "corrupt"), (_truncate, "corrupt")])
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog, damage, reason):
    _three_checkpoints(tmp_path)
    damage(tmp_path / "model_0000003.pth")
    fresh = _checkpointer(tmp_path)
    path, iteration = fresh.load_newest_intact()
    assert (os.path.basename(path), iteration) == ("model_0000002.pth", 2)
    assert torch.all(fresh.model.weight == 2.0)
    assert f"Skipping checkpoint {tmp_path / 'model_0000003.pth'}" in caplog.text
    assert reason in caplog.text


def test_truncated_checkpoint_without_recorded_hash_is_skipped_too(tmp_path, caplog):
    _three_checkpoints(tmp_path)
    os.remove(tmp_path / "model_0000003.pth.sha256")
    _truncate(tmp_path / "model_0000003.pth")
    path, iteration = _checkpointer(tmp_path).load_newest_intact()
    assert iteration == 2
    assert "cannot read" in caplog.text and "model_0000003.pth" in caplog.text


def test_no_intact_checkpoint_is_an_error_listing_each(tmp_path):
    _three_checkpoints(tmp_path)
    for it in (1, 2, 3):
        _flip_bit(tmp_path / f"model_{it:07d}.pth")
    with pytest.raises(ckpt_module.CheckpointError, match="no intact checkpoint") as info:
        _checkpointer(tmp_path).load_newest_intact()
    assert all(f"model_{it:07d}.pth" in str(info.value) for it in (1, 2, 3))


def test_flipped_bit_in_a_checkpoint_is_found_when_loaded_directly(tmp_path):
    _three_checkpoints(tmp_path)
    _flip_bit(tmp_path / "model_0000003.pth")
    with pytest.raises(ckpt_module.CheckpointError, match="model_0000003.pth is corrupt"):
        _checkpointer(tmp_path).load(str(tmp_path / "model_0000003.pth"))
