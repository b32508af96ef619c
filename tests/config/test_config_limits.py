"""Config files that try to exhaust the machine, read other files, or break the loader:
each is a ConfigError naming the file (and the key and line where there is one), fast."""

from __future__ import annotations

from pathlib import Path

import pytest

from mask2former.config import ConfigError, get_cfg, safe_eval

BOMBS = [
    "[0]*100000*100000",
    "[0]*100000+[0]*100000",
    "'a'*100000*100000",
    "[[x for x in range(100000)] for y in range(100000)]",
    "[x for x in range(100000) for y in range(100000)]",
    "[x for x in range(100000) for y in range(100000) if 0]",
    "99999999999*99999999999*99999999999",
    "int('9'*4000)",
    "range(10**2)",
    "'%0999999999d' % 1",
    "[" * 5000 + "]" * 5000,
    "-" * 5000 + "1",
    "1/0",
    "1//0",
    "int(1e400)",
    "int('abc')",
    "[1]*'a'",
]


@pytest.mark.parametrize("expr", BOMBS)
def test_expression_bombs_fail_fast_naming_file_and_key(tmp_path: Path, expr: str):
    path = tmp_path / "bomb.yaml"
    quoted = expr.replace("\\", "\\\\").replace('"', '\\"')
    path.write_text(f'SOLVER:\n  STEPS: !!python/object/apply:eval ["{quoted}"]\n')
    with pytest.raises(ConfigError, match=r"bomb\.yaml: key SOLVER\.STEPS \(line 2\)"):
        get_cfg().merge_from_file(str(path))


def test_limits_leave_the_original_expressions_working():
    assert safe_eval("[int(x * 0.1 * 1024) for x in range(5, 21)]")[-1] == 2048
    assert safe_eval("[x for x in range(10) if x % 2 == 0 if x > 2]") == [4, 6, 8]
    assert safe_eval("[(x, y) for x in range(2) for y in range(2)]") == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert safe_eval("[0] * 1000") == [0] * 1000
    assert safe_eval("1 < 2 <= 2") is True
    assert safe_eval("-(3 // 2) + 7 % 4 + float('1.5')") == 3.5


@pytest.mark.parametrize("name", ["/etc/shadow", "/etc/passwd", "secrets.txt", "weights.pth", "dir.yaml/.."])
def test_base_must_be_a_yaml_file_and_is_not_read(tmp_path: Path, name: str):
    secret = tmp_path / "secrets.txt"
    secret.write_text("SOLVER:\n  BASE_LR: 0.5\nroot:SECRET-CONTENT:19000:0:99999:7:::\n")
    path = tmp_path / "child.yaml"
    path.write_text(f"_BASE_: {name}\n")
    with pytest.raises(ConfigError, match=r"child\.yaml: _BASE_ .* not a \.yaml/\.yml file") as info:
        get_cfg().merge_from_file(str(path))
    assert "SECRET" not in str(info.value)


def test_yaml_errors_never_quote_the_file(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("SOLVER:\n  BASE_LR: [SECRET-CONTENT\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML.*line") as info:
        get_cfg().merge_from_file(str(path))
    assert "SECRET" not in str(info.value)


def test_duplicate_keys_name_file_key_and_lines(tmp_path: Path):
    path = tmp_path / "dup.yaml"
    path.write_text("SOLVER:\n  BASE_LR: 0.1\n  MAX_ITER: 10\n  BASE_LR: 0.2\n")
    with pytest.raises(
        ConfigError, match=r"dup\.yaml: duplicate key SOLVER\.BASE_LR at line 4 \(first at line 2\)"
    ):
        get_cfg().merge_from_file(str(path))
    path.write_text("SOLVER:\n  BASE_LR: 0.1\nSOLVER:\n  MAX_ITER: 3\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml: duplicate key SOLVER at line 3"):
        get_cfg().merge_from_file(str(path))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("SOLVER:\n  MAX_ITER: abc\n", "SOLVER.MAX_ITER"),
        ("SOLVER:\n  MAX_ITER: [1, 2]\n", "SOLVER.MAX_ITER"),
        ("SOLVER:\n  BASE_LR: {a: 1}\n", "SOLVER.BASE_LR"),
        ("SOLVER: 3\n", "SOLVER"),
        ("SOLVER:\n  MAX_ITER: " + "9" * 5000 + "\n", "SOLVER.MAX_ITER"),
        ("SOLVER:\n  MAX_ITER: !!python/object/apply:eval ['1/0']\n", "SOLVER.MAX_ITER"),
    ],
)
def test_wrong_values_name_file_and_key(tmp_path: Path, text: str, key: str):
    path = tmp_path / "typed.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"typed\.yaml") as info:
        get_cfg().merge_from_file(str(path))
    assert key in str(info.value)


@pytest.mark.parametrize(
    "content",
    [b"SOLVER:\n  BASE_LR: 0.1\xff\xfe\n", b"\x00\x01\x02binary", b"\xef\xbb\xbf" + b"x: [" * 100000],
)
def test_unreadable_files_name_the_file(tmp_path: Path, content: bytes):
    path = tmp_path / "binary.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"binary\.yaml"):
        get_cfg().merge_from_file(str(path))


def test_yaml_alias_bombs_and_self_reference_are_refused(tmp_path: Path):
    path = tmp_path / "laughs.yaml"
    levels = ["a0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    path.write_text("\n".join(levels) + "\nSOLVER:\n  STEPS: *a9\n")
    with pytest.raises(
        ConfigError, match=r"laughs\.yaml: key \S+ \(line \d+\): YAML aliases expand this value beyond"
    ):
        get_cfg().merge_from_file(str(path))
    path.write_text("SOLVER:\n  STEPS: &s [1, *s]\n")
    with pytest.raises(ConfigError, match=r"laughs\.yaml: key SOLVER\.STEPS.*contain itself"):
        get_cfg().merge_from_file(str(path))
    path.write_text("A: &a [1, 2]\nSOLVER:\n  STEPS: *a\n")  # plain aliases still load
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    assert tuple(cfg.SOLVER.STEPS) == (1, 2)
