"""The builtin dataset registrations (data/datasets/builtin.py): every name, its metadata and the
arguments its loader is called with. `builtin_registrations.json` was recorded from the
registration code before it was turned into tables (commit ec0afe2), so the tables must register
exactly what the hand-written blocks did. Class lists are recorded as (length, first, last)."""

import json
from pathlib import Path

import pytest

import mask2former.data  # noqa: F401  (registers the builtin datasets)
from mask2former.data.catalog import DatasetCatalog, Metadata, MetadataCatalog
from mask2former.data.datasets import builtin, coco, coco_panoptic

EXPECTED = Path(__file__).with_name("builtin_registrations.json")
LOADERS = (
    "load_coco_json",
    "load_sem_seg",
    "load_coco_panoptic_json",
    "load_cityscapes_semantic",
    "load_cityscapes_instances",
    "load_cityscapes_panoptic",
    "require_path",
)


def _summary(value):
    """Long class tables as (length, first, last); JSON turns the tuples into lists."""
    if isinstance(value, dict):
        items = sorted(value.items())
        return [len(items), [str(items[0][0]), items[0][1]], [str(items[-1][0]), items[-1][1]]]
    if isinstance(value, list):
        return [len(value), value[0], value[-1]]
    return value


@pytest.fixture
def recorded_registrations(monkeypatch):
    """Register every builtin dataset under the root "<root>" into empty catalogs, with each
    loader replaced by a recorder; yields name -> {"load": calls, "metadata": fields}."""
    calls = []

    def recorder(loader):
        def record(*args):
            calls.append([loader, *(a.name if isinstance(a, Metadata) else a for a in args)])
            return []

        return record

    for module in (builtin, coco, coco_panoptic):
        for loader in LOADERS:
            if hasattr(module, loader):
                monkeypatch.setattr(module, loader, recorder(loader))
    saved = dict(DatasetCatalog), dict(MetadataCatalog)
    DatasetCatalog.clear()
    MetadataCatalog.clear()
    try:
        builtin.register_all("<root>")
        recorded = {}
        for name in sorted(DatasetCatalog):
            calls.clear()
            DatasetCatalog.get(name)
            fields = MetadataCatalog.get(name).as_dict()
            fields.pop("name")
            recorded[name] = {
                "load": json.loads(json.dumps(calls)),
                "metadata": json.loads(json.dumps({k: _summary(v) for k, v in sorted(fields.items())})),
            }
        yield recorded
    finally:
        DatasetCatalog.clear()
        MetadataCatalog.clear()
        DatasetCatalog.update(saved[0])
        MetadataCatalog.update(saved[1])


def test_builtin_registrations_match_the_recorded_ones(recorded_registrations):
    expected = json.loads(EXPECTED.read_text())
    assert sorted(recorded_registrations) == sorted(expected)
    for name, registration in expected.items():
        assert recorded_registrations[name] == registration, name


def test_prepared_files_are_checked_before_loading(recorded_registrations):
    """A dataset needing a file written by a tools/ script names the script when it is missing."""
    load = recorded_registrations["ade20k_panoptic_val"]["load"]
    assert [call[0] for call in load] == ["require_path", "load_coco_panoptic_json"]
    assert load[0][1:] == [
        "<root>/ADEChallengeData2016/ade20k_panoptic_val.json",
        "ADE20K panoptic JSON",
        "Run tools/prepare_ade20k_pan_seg.py.",
    ]
