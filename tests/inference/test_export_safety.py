"""`load_exported_program` never unpickles code from a `.pt2`, and refuses a corrupt one.

`torch.export.load` unpickles some archive members with weights_only=False; each test crafts an
archive that uses one of those members to run a payload (it would create a marker file)."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch

from mask2former.checkpoint import CheckpointError
from mask2former.checkpoint.integrity import record_sha256
from mask2former.inference.export import load_exported_program


class _Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


class _Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.linear(x) + torch.tensor([1.0, 2.0])


def _save_program(path) -> _Small:
    module = _Small().eval()
    program = torch.export.export(module, (torch.randn(1, 3),))
    torch.export.save(program, str(path))
    return module


def _rewrite(path, change) -> None:
    """Rewrite the zip at `path`, member by member, through `change(name, bytes) -> bytes`."""
    with zipfile.ZipFile(path) as archive:
        members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members:
            archive.writestr(name, change(name, data))


def _pickled(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _pickled_weight(path, marker) -> None:
    """Flag the first weight as pickled and put the payload in its place."""

    def change(name, data):
        if name.endswith("_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return json.dumps(config).encode()
        if name.endswith("data/weights/weight_0"):
            return _pickled(_Payload(marker))
        return data

    _rewrite(path, change)


def _pickled_sample_inputs(path, marker) -> None:
    """Sample inputs that weights_only=True cannot read: torch falls back to weights_only=False."""
    _rewrite(path, lambda name, data: _pickled(_Payload(marker)) if "/data/sample_inputs/" in name else data)


def _opaque_constant(path, marker) -> None:
    """A constant stored as an opaque object, which torch reads with pickle.loads."""
    import pickle

    def change(name, data):
        if name.endswith("_constants_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["path_name"] = "opaque_obj_0"
            return json.dumps(config).encode()
        if name.endswith("data/constants/tensor_0"):
            return pickle.dumps(_Payload(marker))
        return data

    _rewrite(path, change)
    with zipfile.ZipFile(path) as archive:
        root = archive.namelist()[0].split("/")[0]
        payload = archive.read(f"{root}/data/constants/tensor_0")
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(f"{root}/data/constants/opaque_obj_0", payload)


@pytest.mark.parametrize("craft", [_pickled_weight, _pickled_sample_inputs, _opaque_constant])
def test_crafted_program_is_refused_and_runs_nothing(tmp_path, craft):
    path = tmp_path / "program.pt2"
    marker = tmp_path / "payload_ran"
    _save_program(path)
    craft(path, marker)
    with pytest.raises(CheckpointError, match="program.pt2"):
        load_exported_program(str(path))
    assert not marker.exists()


def test_legacy_archive_layout_is_refused(tmp_path):
    """The pre-2.7 layout (a top-level `version`) goes through a loader that unpickles state dicts."""
    path = tmp_path / "old.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("version", "8.0")
        archive.writestr("serialized_state_dict.pt", _pickled(_Payload(tmp_path / "payload_ran")))
    with pytest.raises(CheckpointError, match="old.pt2"):
        load_exported_program(str(path))
    assert not (tmp_path / "payload_ran").exists()


def test_intact_program_loads_and_a_flipped_bit_is_found(tmp_path):
    path = tmp_path / "program.pt2"
    module = _save_program(path)
    record_sha256(str(path))  # as export_torch does
    x = torch.randn(1, 3)
    torch.testing.assert_close(load_exported_program(str(path)).module()(x), module(x))
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_exported_program(str(path))
