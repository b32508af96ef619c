"""Hostile or corrupt weights files: refused with an error naming the file, never a crash, a memory
blow-up, a raw TypeError, or a silently meaningless model (issue 14, groups 4 and 5)."""

from __future__ import annotations

import io
import logging
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch

from mask2former.checkpoint import CheckpointError, load_state_dict_file, load_weights, save_weights
from mask2former.checkpoint.safe_load import MAX_BYTES_ENV
from mask2former.modeling import build_model
from mask2former.utils.testing import tiny_cfg

DEPTH = 50_000  # a ~150 KB file


def _nested_key_pickle(depth: int = DEPTH) -> bytes:
    """{"model": {((((),),),...): 1}}: a tuple key nested `depth` deep (hashing it recurses in C)."""
    return (
        b"\x80\x02}X\x05\x00\x00\x00model}"  # {"model": {
        + b")"
        + b"\x85" * depth  # ((((),),),...)
        + b"K\x01ss."  # : 1}}
    )


def _nested_list_pickle(depth: int = DEPTH) -> bytes:
    """{"model": {"w": [[[...]]]}}, lists nested `depth` deep."""
    return b"\x80\x02}X\x05\x00\x00\x00model}X\x01\x00\x00\x00w" + b"(" * depth + b"l" * depth + b"ss."


def _torch_file_with_pickle(path, data_pkl: bytes) -> None:
    """A torch zip file whose data.pkl is `data_pkl` (the other members as torch.save writes them)."""
    buffer = io.BytesIO()
    torch.save({"model": {}}, buffer)
    with zipfile.ZipFile(buffer) as archive:
        members = [(i.filename, archive.read(i)) for i in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members:
            archive.writestr(name, data_pkl if name.endswith("data.pkl") else data)


@pytest.mark.parametrize("make", [_nested_key_pickle, _nested_list_pickle])
def test_deeply_nested_pickle_is_refused(tmp_path, make):
    path = tmp_path / "deep.pkl"
    path.write_bytes(make())
    with pytest.raises(CheckpointError, match="deep.pkl.*nest deeper"):
        load_state_dict_file(str(path))


@pytest.mark.parametrize("make", [_nested_key_pickle, _nested_list_pickle])
def test_deeply_nested_torch_file_is_refused(tmp_path, make):
    path = tmp_path / "deep.pth"
    _torch_file_with_pickle(path, make())
    with pytest.raises(CheckpointError, match="deep.pth.*nest deeper"):
        load_state_dict_file(str(path))


def test_cyclic_pickle_is_refused(tmp_path):
    path = tmp_path / "cycle.pkl"
    # a = []; a.append(a): EMPTY_LIST, BINPUT 0, BINGET 0, APPEND
    path.write_bytes(b"\x80\x02}X\x05\x00\x00\x00model}X\x01\x00\x00\x00w]q\x00h\x00ass.")
    with pytest.raises(CheckpointError, match="cycle.pkl.*(nest deeper|cycle)"):
        load_state_dict_file(str(path))


def _reconstruct_pickle(shape: int) -> bytes:
    """A small pickle of allowed calls: numpy's `_reconstruct(ndarray, (shape,), 'b')`."""
    return (
        b"\x80\x02}X\x05\x00\x00\x00model}X\x01\x00\x00\x00w"
        b"cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        + b"\x8a\x08"
        + struct.pack("<q", shape)
        + b"\x85X\x01\x00\x00\x00b\x87R"
        + b"ss."
    )


def test_small_pickle_asking_for_16_gib_is_refused(tmp_path):
    path = tmp_path / "bomb.pkl"
    path.write_bytes(_reconstruct_pickle(16 << 30))
    assert path.stat().st_size < 1500
    with pytest.raises(CheckpointError, match=r"bomb.pkl.*more than \d+ bytes"):
        load_state_dict_file(str(path))


def test_stride_zero_tensor_expanding_a_small_file_is_refused(tmp_path):
    """A 4-byte storage viewed as 800 M floats: 3.2 GB for whoever uses it."""
    path = tmp_path / "expand.pth"
    torch.save({"model": {"w": torch.zeros(1).expand(800_000_000)}}, path)
    with pytest.raises(CheckpointError, match=r"expand.pth.*more than \d+ bytes"):
        load_state_dict_file(str(path))


def test_compressed_torch_member_is_refused(tmp_path):
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(1000)}}, buffer)
    path = tmp_path / "deflated.pth"
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(CheckpointError, match="deflated.pth.*compressed"):
        load_state_dict_file(str(path))


def test_size_cap_is_configurable(tmp_path, monkeypatch):
    path = tmp_path / "w.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": np.zeros(1000, np.float32)}}))
    assert load_state_dict_file(str(path))["w"].shape == (1000,)
    monkeypatch.setenv(MAX_BYTES_ENV, "100")
    with pytest.raises(CheckpointError, match="w.pkl"):
        load_state_dict_file(str(path))


@pytest.mark.parametrize(
    "array",
    [
        np.array(["a", "bc"]),
        np.array([b"a", b"bc"]),
        np.array([1, None], dtype=object),
        np.zeros(2, dtype=[("a", "f4"), ("b", "i4")]),
    ],
    ids=["unicode", "bytes", "object", "structured"],
)
@pytest.mark.parametrize("protocol", [2, 5])
def test_non_numeric_arrays_are_refused_naming_the_file(tmp_path, array, protocol):
    path = tmp_path / "odd.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": array}}, protocol=protocol))
    with pytest.raises(CheckpointError, match="odd.pkl"):
        load_state_dict_file(str(path))


# ---- weights that load but mean nothing ----------------------------------------------------
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_cfg()).eval()


def test_flipped_bit_in_saved_weights_is_found(model, tmp_path):
    path = tmp_path / "w.pth"
    save_weights(model, str(path))
    assert (tmp_path / "w.pth.sha256").is_file()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="w.pth is corrupt"):
        load_weights(model, str(path))


def test_nonfinite_weights_are_refused_and_nothing_is_loaded(model):
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].reshape(-1)[0] = float("nan")
    assert not torch.isfinite(state[name]).all()
    before = model.state_dict()[name].clone()
    with pytest.raises(CheckpointError, match=f"non-finite.*{name}"):
        load_weights(model, state)
    assert torch.equal(model.state_dict()[name], before)


def test_weights_leaving_most_of_the_model_unloaded_are_refused(model, caplog):
    state = model.state_dict()
    unrelated = {f"other.{k}": v for k, v in state.items()}
    with pytest.raises(CheckpointError, match=r"sets only 0 of the model's \d+ tensors"):
        load_weights(model, unrelated)
    third = dict(list(state.items())[: len(state) // 3])
    with pytest.raises(CheckpointError, match="allow_partial"):
        load_weights(model, third)
    caplog.set_level(logging.WARNING, logger="mask2former")
    report = load_weights(model, third, allow_partial=True)  # fine-tuning
    assert sorted(report.missing) == sorted(set(state) - set(third))
    assert "not in the file" in caplog.text


def test_predictor_refuses_weights_of_another_model(model, tmp_path):
    """The demo's path: MODEL.WEIGHTS that match none of the model's names is an error, not PQ 0."""
    from mask2former.checkpoint import write_state_dict
    from mask2former.inference import Predictor

    path = tmp_path / "other.pth"
    write_state_dict({f"other.{k}": v for k, v in model.state_dict().items()}, str(path))
    cfg = tiny_cfg()
    cfg.MODEL.WEIGHTS = str(path)
    with pytest.raises(CheckpointError, match="other.pth sets only 0"):
        Predictor(cfg)


def test_object_array_claiming_a_huge_shape_is_refused_before_allocating(tmp_path):
    """An object array's state with shape (2**33,): numpy would allocate (and fill) 64 GiB."""
    data = pickle.dumps({"model": {"w": np.array([1, None], dtype=object)}}, protocol=2)
    assert data.count(b"K\x02\x85") == 1  # the shape (2,)
    path = tmp_path / "huge_object.pkl"
    path.write_bytes(data.replace(b"K\x02\x85", b"\x8a\x05\x00\x00\x00\x00\x02\x85"))
    with pytest.raises(CheckpointError, match="huge_object.pkl.*dtype object"):
        load_state_dict_file(str(path))
