"""Config: defaults, `_BASE_`, overrides, typo errors, the original's dumps and the eval tag."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from mask2former.config import ConfigError, get_cfg, safe_eval
from mask2former.utils.testing import load_fixture, reference_dir, require_file

REFERENCE_KEYS = reference_dir() / "config_keys.md"


def _reference_defaults() -> dict[str, object]:
    text = require_file(REFERENCE_KEYS).read_text().split("## Keys that at least")[0]
    return {m[1]: ast.literal_eval(m[2]) for m in re.finditer(r"^- `([A-Z0-9_.]+)` = `(.*)`$", text, re.M)}


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def test_defaults_hold_every_reference_key():
    cfg = get_cfg()
    ref = _reference_defaults()
    assert len(ref) == 70 + 91  # keys the original adds + the Detectron2 defaults it uses
    for key, value in ref.items():
        ours = _get(cfg, key)
        if isinstance(value, list | tuple):
            assert list(ours) == list(value), key
        else:
            assert ours == value, key


def test_base_inheritance_and_override(tmp_path: Path):
    (tmp_path / "base.yaml").write_text(
        "MODEL:\n  MASK_FORMER:\n    HIDDEN_DIM: 128\n    NHEADS: 4\nSOLVER:\n  BASE_LR: 0.5\n"
    )
    sub = tmp_path / "sub" / "child.yaml"
    sub.parent.mkdir()
    sub.write_text("_BASE_: ../base.yaml\nMODEL:\n  MASK_FORMER:\n    NHEADS: 2\n")
    cfg = get_cfg()
    cfg.merge_from_file(str(sub))
    assert cfg.MODEL.MASK_FORMER.HIDDEN_DIM == 128
    assert cfg.MODEL.MASK_FORMER.NHEADS == 2
    assert cfg.SOLVER.BASE_LR == 0.5
    cfg.merge_from_list(["SOLVER.BASE_LR", "0.01", "MODEL.RESNETS.OUT_FEATURES", "['res4']"])
    assert cfg.SOLVER.BASE_LR == 0.01
    assert cfg.MODEL.RESNETS.OUT_FEATURES == ["res4"]


def test_typo_in_file_names_the_key(tmp_path: Path):
    path = tmp_path / "typo.yaml"
    path.write_text("MODEL:\n  MASK_FORMER:\n    HIDEN_DIM: 128\n")
    with pytest.raises(ConfigError, match=r"MODEL\.MASK_FORMER\.HIDEN_DIM.*HIDDEN_DIM"):
        get_cfg().merge_from_file(str(path))


def test_typo_close_to_known_key_in_open_section(tmp_path: Path):
    path = tmp_path / "typo.yaml"
    path.write_text("MODEL:\n  WEIGHT: x.pkl\n")
    with pytest.raises(ConfigError, match=r"MODEL\.WEIGHT.*MODEL\.WEIGHTS"):
        get_cfg().merge_from_file(str(path))


def test_typo_in_override_names_the_key():
    with pytest.raises(ConfigError, match="SOLVER.BASE_LRR"):
        get_cfg().merge_from_list(["SOLVER.BASE_LRR", "0.1"])
    with pytest.raises(ConfigError, match="odd number"):
        get_cfg().merge_from_list(["SOLVER.BASE_LR"])


def test_original_full_dump_loads_and_reports_foreign_keys(tmp_path: Path, caplog):
    fixture = load_fixture()
    path = tmp_path / "dump.yaml"
    path.write_text(fixture["config_yaml"])
    cfg = get_cfg()
    with caplog.at_level("WARNING"):
        cfg.merge_from_file(str(path))
    assert cfg.MODEL.MASK_FORMER.HIDDEN_DIM == 64
    assert cfg.MODEL.RESNETS.DEPTH == 18
    assert cfg.DATASETS.TEST == ("fixture_train",)
    reports = [r.getMessage() for r in caplog.records if "does not use" in r.getMessage()]
    assert len(reports) == 1 and "MODEL.ROI_HEADS" in reports[0] and "MODEL.RPN" in reports[0]


def test_eval_tag_of_original_configs(tmp_path: Path):
    path = tmp_path / "lsj.yaml"
    path.write_text(
        'INPUT:\n  MIN_SIZE_TRAIN: !!python/object/apply:eval ["[int(x * 0.1 * 1024) for x in range(5, 21)]"]\n'
    )
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    assert list(cfg.INPUT.MIN_SIZE_TRAIN) == [int(x * 0.1 * 1024) for x in range(5, 21)]


@pytest.mark.parametrize(
    "tag",
    [
        '!!python/object/apply:os.system ["echo pwned"]',
        "!!python/name:os.system",
        "!!python/object/apply:eval [\"__import__('os').system('echo pwned')\"]",
        '!!python/object/apply:eval ["().__class__.__bases__"]',
        '!!python/object/apply:eval ["[x for x in range(10**12)]"]',
        "!!python/object/apply:eval [\"open('/etc/passwd')\"]",
    ],
)
def test_yaml_never_runs_code(tmp_path: Path, tag: str):
    path = tmp_path / "evil.yaml"
    path.write_text(f"INPUT:\n  MIN_SIZE_TRAIN: {tag}\n")
    with pytest.raises(ConfigError, match="evil.yaml"):
        get_cfg().merge_from_file(str(path))


def test_safe_eval_arithmetic():
    assert safe_eval("[int(x * 0.5) for x in range(2, 5)]") == [1, 1, 2]
    assert safe_eval("(1 + 2) * 3 - 4 / 2") == 7.0
    with pytest.raises(ConfigError):
        safe_eval("lambda: 1")


def test_missing_file_and_base_cycle(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        get_cfg().merge_from_file(str(tmp_path / "nope.yaml"))
    (tmp_path / "a.yaml").write_text("_BASE_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_BASE_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        get_cfg().merge_from_file(str(tmp_path / "a.yaml"))
