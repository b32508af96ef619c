"""atomic_save / atomic_write: a failed or killed writer never leaves a half-written file."""

import os
from pathlib import Path

import pytest

from mask2former.checkpoint.atomic import atomic_save, atomic_write


def test_failed_save_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old, complete")

    def save_half_then_fail(name):
        with open(name, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_save(str(path), save_half_then_fail)
    assert path.read_bytes() == b"old, complete"
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_save_by_file_name_and_by_file_object(tmp_path):
    (tmp_path / ".a.bin.tmp.12345").write_bytes(b"left by a killed writer")
    atomic_save(str(tmp_path / "a.bin"), lambda name: Path(name).write_bytes(b"by name"))
    atomic_write(str(tmp_path / "b.bin"), lambda f: f.write(b"by file"))
    assert (tmp_path / "a.bin").read_bytes() == b"by name"
    assert (tmp_path / "b.bin").read_bytes() == b"by file"
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "b.bin"]
