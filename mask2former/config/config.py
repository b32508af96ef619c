"""Config node: fvcore's CfgNode with safe YAML loading, `_BASE_` inheritance and strict keys.

Loading rules (`merge_from_file`; `merge_from_list` checks keys the same way):
- YAML is read with a safe loader. The only Python tag accepted is the original project's
  `!!python/object/apply:eval ["<expr>"]`, which is evaluated by `safe_eval` (literals,
  arithmetic, comprehensions, `range`, `int`, `float`); every other Python tag is refused.
- `_BASE_` names a file (relative to the including file) merged first.
- A key this project does not define is an error when it sits in a section the project owns
  (a misspelt `MODEL.MASK_FORMER.HIDEN_DIM`), or when it is close to a known key. Keys of
  Detectron2 sections this project has no use for (`MODEL.RPN`, `MODEL.ROI_HEADS`, ...) are
  reported once and ignored, so full dumps written by Detectron2 load; the same holds for such
  keys given on the command line.
- A key the project defines but does not implement (`config/key_support.py`) is refused, with
  the reason, when set to anything but its default.
"""

from __future__ import annotations

import ast
import difflib
import logging
import os
from typing import Any

import yaml
from fvcore.common.config import CfgNode as _FvCfgNode

logger = logging.getLogger(__name__)

BASE_KEY = "_BASE_"
_EVAL_TAG = "tag:yaml.org,2002:python/object/apply:eval"

# Sections whose children are all known to this project: an unknown key there is a typo.
# The root and MODEL also hold keys of Detectron2 components this project does not build.
_OPEN_SECTIONS = ("", "MODEL")


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message names the file or key."""


# --------------------------------------------------------------------------------------------
# Restricted evaluation of `!!python/object/apply:eval`
# --------------------------------------------------------------------------------------------
_MAX_RANGE = 100_000


def _bounded_range(*args: int) -> range:
    r = range(*args)
    if len(r) > _MAX_RANGE:
        raise ConfigError(f"range{args} is too long for a config value")
    return r


_SAFE_CALLS = {"range": _bounded_range, "int": int, "float": float}
_SAFE_NODES = (
    ast.Expression, ast.Constant, ast.List, ast.Tuple, ast.Load, ast.Store, ast.Name,
    ast.BinOp, ast.UnaryOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod,
    ast.USub, ast.UAdd, ast.ListComp, ast.comprehension, ast.Call, ast.Compare, ast.Lt, ast.LtE,
    ast.Gt, ast.GtE, ast.Eq, ast.NotEq,
)  # fmt: skip


def safe_eval(expr: str) -> Any:
    """Evaluate a small arithmetic/list expression such as
    `[int(x * 0.1 * 1024) for x in range(5, 21)]`. Anything else raises ConfigError."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise ConfigError(f"cannot parse config expression {expr!r}: {e}") from None
    bound: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, _SAFE_NODES):
            raise ConfigError(f"config expression {expr!r} uses {type(node).__name__}, which is not allowed")
        if isinstance(node, ast.comprehension):
            if not isinstance(node.target, ast.Name):
                raise ConfigError(f"config expression {expr!r}: only simple loop variables are allowed")
            bound.add(node.target.id)
        if isinstance(node, ast.Call) and not (
            isinstance(node.func, ast.Name) and node.func.id in _SAFE_CALLS
        ):
            raise ConfigError(f"config expression {expr!r} calls something other than range/int/float")
        if isinstance(node, ast.Call) and node.keywords:
            raise ConfigError(f"config expression {expr!r}: keyword arguments are not allowed")
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in _SAFE_CALLS and node.id not in bound:
            raise ConfigError(f"config expression {expr!r} refers to unknown name {node.id!r}")
    return eval(compile(tree, "<config>", "eval"), {"__builtins__": {}, **_SAFE_CALLS})


class _SafeConfigLoader(yaml.SafeLoader):
    """SafeLoader plus the original project's `eval` tag, evaluated by `safe_eval`."""


def _construct_eval(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    args = (
        loader.construct_sequence(node)
        if isinstance(node, yaml.SequenceNode)
        else [loader.construct_scalar(node)]
    )
    if len(args) != 1 or not isinstance(args[0], str):
        raise ConfigError(f"!!python/object/apply:eval takes one string, got {args!r}")
    return safe_eval(args[0])


_SafeConfigLoader.add_constructor(_EVAL_TAG, _construct_eval)


def load_yaml(path: str) -> dict:
    """Read one YAML file safely (no `_BASE_` handling)."""
    try:
        with open(path) as f:
            data = yaml.load(f, Loader=_SafeConfigLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.constructor.ConstructorError as e:
        raise ConfigError(f"{path}: refused YAML tag ({e.problem}); config files may not run code") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    return data


def _merge_dicts(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge_dicts(out[k], v)
        else:
            out[k] = v
    return out


def load_yaml_with_base(path: str, _seen: tuple[str, ...] = ()) -> dict:
    """Read a YAML file and the `_BASE_` chain it names, bases first."""
    path = os.path.abspath(path)
    if path in _seen:
        raise ConfigError(f"{path}: _BASE_ cycle through {' -> '.join(_seen)}")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    cfg = load_yaml(path)
    base = cfg.pop(BASE_KEY, None)
    if base is None:
        return cfg
    if not isinstance(base, str):
        raise ConfigError(f"{path}: _BASE_ must be a file name, got {base!r}")
    base_path = os.path.expanduser(base)
    if not os.path.isabs(base_path):
        base_path = os.path.join(os.path.dirname(path), base_path)
    return _merge_dicts(load_yaml_with_base(base_path, (*_seen, path)), cfg)


class CfgNode(_FvCfgNode):
    """fvcore CfgNode whose `merge_from_file` loads safely and checks keys (see module doc)."""

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        if allow_unsafe:
            raise ConfigError("allow_unsafe is not supported: config files never run code")
        loaded = load_yaml_with_base(cfg_filename)
        ignored: list[str] = []
        known = self._keep_known(loaded, self, "", cfg_filename, ignored)
        _report_ignored(cfg_filename, ignored)
        self.merge_from_other_cfg(type(self)(known))
        _check_supported(self, cfg_filename)

    def merge_from_list(self, cfg_list: list) -> None:
        """`KEY VALUE` overrides. Keys are checked as in a config file: a foreign Detectron2 key
        is ignored (with the same notice), a misspelt key of a known section is an error."""
        if len(cfg_list) % 2:
            raise ConfigError(f"overrides must be KEY VALUE pairs, got an odd number of items: {cfg_list}")
        known, ignored = [], []
        for key, value in zip(cfg_list[0::2], cfg_list[1::2]):
            node = self
            parts = key.split(".")
            for i, part in enumerate(parts):
                if not isinstance(node, _FvCfgNode) or part not in node:
                    section = ".".join(parts[:i])
                    siblings = list(node.keys()) if isinstance(node, _FvCfgNode) else []
                    foreign = (
                        isinstance(node, _FvCfgNode)
                        and section in _OPEN_SECTIONS
                        and not difflib.get_close_matches(part, siblings, n=1, cutoff=0.8)
                    )
                    if not foreign:
                        raise ConfigError(f"unknown config key {key!r}{_suggest(part, siblings, section)}")
                    ignored.append(key)
                    break
                node = node[part]
            else:
                known += [key, value]
        _report_ignored("command line", ignored)
        try:
            super().merge_from_list(known)
        except (ValueError, KeyError, AssertionError) as e:
            raise ConfigError(f"bad override in {cfg_list}: {e}") from None
        _check_supported(self, "command line")

    @staticmethod
    def _keep_known(loaded: dict, defaults: _FvCfgNode, prefix: str, source: str, ignored: list[str]) -> dict:
        """Split `loaded` into keys the defaults define (returned) and foreign Detectron2 keys
        (appended to `ignored`); a typo raises ConfigError naming the key."""
        section = prefix.rstrip(".")
        known = {}
        for k, v in loaded.items():
            full = prefix + str(k)
            if k in defaults:
                if isinstance(defaults[k], _FvCfgNode):
                    if not isinstance(v, dict):
                        raise ConfigError(f"{source}: {full} is a section, got {v!r}")
                    known[k] = CfgNode._keep_known(v, defaults[k], full + ".", source, ignored)
                else:
                    known[k] = v
                continue
            close = difflib.get_close_matches(str(k), list(defaults.keys()), n=1, cutoff=0.8)
            if section not in _OPEN_SECTIONS or close:
                raise ConfigError(
                    f"{source}: unknown config key {full!r}{_suggest(str(k), list(defaults), section)}"
                )
            ignored.extend(_leaf_names(v, full))
        return known


def _leaf_names(value: Any, name: str) -> list[str]:
    """`name` of a leaf, or the full names of the leaves under a mapping."""
    if not isinstance(value, dict) or not value:
        return [name]
    return [leaf for k, v in value.items() for leaf in _leaf_names(v, f"{name}.{k}")]


_reported: set[str] = set()


def _report_ignored(source: str, ignored: list[str]) -> None:
    """One notice per source and key list, however often the same config is loaded in a process
    (train_net reads it once to pick the device and once more in the worker)."""
    if not ignored:
        return
    message = (
        f"{source}: ignoring {len(ignored)} Detectron2 key(s) this project does not use: {', '.join(ignored)}"
    )
    if message not in _reported:
        _reported.add(message)
        logger.warning(message)


def _check_supported(cfg: CfgNode, source: str) -> None:
    from .key_support import check_supported

    check_supported(cfg, source)


def _suggest(key: str, candidates: list[str], section: str) -> str:
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    hint = f"; did you mean {(section + '.' if section else '') + close[0]!r}?" if close else ""
    return hint
