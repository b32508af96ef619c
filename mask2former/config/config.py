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
import operator
import os
from collections.abc import Callable
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
# Limits that keep a config expression from eating the machine: every value it builds, final
# or intermediate, is checked (a repetition `seq * n` is predicted before it is made).
_MAX_EXPR_CHARS = 10_000
_MAX_ITEMS = 100_000  # elements of a list / tuple / string, and of a range
_MAX_INT_BITS = 64
_MAX_STEPS = 1_000_000  # comprehension iterations plus evaluated nodes, all nested levels together

_SAFE_CALLS = {"range", "int", "float"}
_BINARY_OPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}  # fmt: skip
_UNARY_OPS: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_COMPARE_OPS = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}  # fmt: skip
_SEQUENCES = (list, tuple, str)


class _Evaluator:
    """Walks the parsed expression itself (no `eval`), counting work and checking sizes."""

    def __init__(self, expr: str):
        self.expr = expr
        self.steps = 0

    def fail(self, why: str) -> ConfigError:
        return ConfigError(f"config expression {_shorten(self.expr)}: {why}")

    def check(self, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > _MAX_INT_BITS:
            raise self.fail(f"an integer above {_MAX_INT_BITS} bits")
        if isinstance(value, _SEQUENCES) and len(value) > _MAX_ITEMS:
            raise self.fail(f"a sequence of {len(value)} items (at most {_MAX_ITEMS})")
        return value

    def tick(self) -> None:
        self.steps += 1
        if self.steps > _MAX_STEPS:
            raise self.fail(f"more than {_MAX_STEPS} evaluation steps")

    def run(self, node: ast.AST, names: dict[str, Any]) -> Any:
        self.tick()
        method = getattr(self, "eval_" + type(node).__name__, None)
        if method is None:
            raise self.fail(f"uses {type(node).__name__}, which is not allowed")
        return self.check(method(node, names))

    def eval_Constant(self, node: ast.Constant, names: dict[str, Any]) -> Any:
        if not isinstance(node.value, (bool, int, float, str)):
            raise self.fail(f"constant {node.value!r} is not allowed")
        return node.value

    def eval_Name(self, node: ast.Name, names: dict[str, Any]) -> Any:
        if node.id not in names:
            raise self.fail(f"refers to unknown name {node.id!r}")
        return names[node.id]

    def eval_List(self, node: ast.List, names: dict[str, Any]) -> list:
        return [self.run(e, names) for e in node.elts]

    def eval_Tuple(self, node: ast.Tuple, names: dict[str, Any]) -> tuple:
        return tuple(self.run(e, names) for e in node.elts)

    def eval_UnaryOp(self, node: ast.UnaryOp, names: dict[str, Any]) -> Any:
        op = _UNARY_OPS.get(type(node.op))
        if op is None:
            raise self.fail(f"operator {type(node.op).__name__} is not allowed")
        return self.apply(op, self.run(node.operand, names))

    def eval_BinOp(self, node: ast.BinOp, names: dict[str, Any]) -> Any:
        op = _BINARY_OPS.get(type(node.op))
        if op is None:
            raise self.fail(f"operator {type(node.op).__name__} is not allowed")
        left, right = self.run(node.left, names), self.run(node.right, names)
        self.predict_size(node.op, left, right)
        return self.apply(op, left, right)

    def predict_size(self, op: ast.operator, left: Any, right: Any) -> None:
        """Refuse a repetition whose result would exceed the limits before making it (sums
        and products of values within the limits are cheap, and checked afterwards)."""
        if isinstance(op, ast.Mult):
            seq, count = (left, right) if isinstance(left, _SEQUENCES) else (right, left)
            if isinstance(seq, _SEQUENCES) and isinstance(count, int) and len(seq) * count > _MAX_ITEMS:
                raise self.fail(f"repeating {len(seq)} items {count} times (at most {_MAX_ITEMS} items)")
        if isinstance(op, ast.Mod) and isinstance(left, str):
            raise self.fail("string formatting with % is not allowed")

    def apply(self, op: Callable[..., Any], *operands: Any) -> Any:
        try:
            return op(*operands)
        except (ArithmeticError, TypeError, ValueError) as e:
            raise self.fail(f"{type(e).__name__}: {e}") from None

    def eval_Compare(self, node: ast.Compare, names: dict[str, Any]) -> bool:
        left = self.run(node.left, names)
        for op_node, right_node in zip(node.ops, node.comparators, strict=True):
            op = _COMPARE_OPS.get(type(op_node))
            if op is None:
                raise self.fail(f"comparison {type(op_node).__name__} is not allowed")
            right = self.run(right_node, names)
            if not self.apply(op, left, right):
                return False
            left = right
        return True

    def eval_Call(self, node: ast.Call, names: dict[str, Any]) -> Any:
        if not (isinstance(node.func, ast.Name) and node.func.id in _SAFE_CALLS):
            raise self.fail("calls something other than range/int/float")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise self.fail("keyword and * arguments are not allowed")
        args = [self.run(a, names) for a in node.args]
        if node.func.id == "range":
            if not all(isinstance(a, int) for a in args):
                raise self.fail(f"range{tuple(args)} needs integers")
            r = self.apply(range, *args)
            if len(r) > _MAX_ITEMS:
                raise self.fail(f"range{tuple(args)} is longer than {_MAX_ITEMS}")
            return r
        if any(isinstance(a, str) and len(a) > 100 for a in args):
            raise self.fail(f"{node.func.id}() of a string longer than 100 characters")
        return self.apply(int if node.func.id == "int" else float, *args)

    def eval_ListComp(self, node: ast.ListComp, names: dict[str, Any]) -> list:
        out: list = []
        self.comprehend(node, list(node.generators), names, out)
        return out

    def comprehend(self, node: ast.ListComp, generators: list, names: dict[str, Any], out: list) -> None:
        if not generators:
            out.append(self.run(node.elt, names))
            if len(out) > _MAX_ITEMS:
                raise self.fail(f"a list of more than {_MAX_ITEMS} items")
            return
        gen, rest = generators[0], generators[1:]
        if not isinstance(gen.target, ast.Name) or gen.is_async:
            raise self.fail("only simple loop variables are allowed")
        iterable = self.run(gen.iter, names)
        if not isinstance(iterable, (*_SEQUENCES, range)):
            raise self.fail(f"cannot loop over {type(iterable).__name__}")
        for item in iterable:
            self.tick()
            inner = {**names, gen.target.id: item}
            if all(self.run(cond, inner) for cond in gen.ifs):
                self.comprehend(node, rest, inner, out)


def _shorten(expr: str, limit: int = 80) -> str:
    return repr(expr if len(expr) <= limit else expr[:limit] + "...")


def safe_eval(expr: str) -> Any:
    """Evaluate a small arithmetic/list expression such as
    `[int(x * 0.1 * 1024) for x in range(5, 21)]`: literals, + - * / // %, comparisons, list
    comprehensions, `range`, `int`, `float`, within limits on sizes and work (see the
    constants above). Anything else raises ConfigError."""
    if len(expr) > _MAX_EXPR_CHARS:
        raise ConfigError(f"config expression of {len(expr)} characters (at most {_MAX_EXPR_CHARS})")
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, RecursionError, MemoryError, ValueError) as e:
        raise ConfigError(f"cannot parse config expression {_shorten(expr)}: {type(e).__name__}") from None
    try:
        return _Evaluator(expr).run(tree.body, {})
    except RecursionError:
        raise ConfigError(f"config expression {_shorten(expr)} is nested too deeply") from None


class _SafeConfigLoader(yaml.SafeLoader):
    """SafeLoader plus the original project's `eval` tag, evaluated by `safe_eval`.
    `key_of_node` maps value nodes to their dotted key, so errors can name it."""

    key_of_node: dict[int, str]


def _construct_eval(loader: _SafeConfigLoader, node: yaml.Node) -> Any:
    where = _where(loader, node)
    args = (
        loader.construct_sequence(node)
        if isinstance(node, yaml.SequenceNode)
        else [loader.construct_scalar(node)]
    )
    if len(args) != 1 or not isinstance(args[0], str):
        raise ConfigError(f"{where}: !!python/object/apply:eval takes one string, got {args!r}")
    try:
        return safe_eval(args[0])
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


_SafeConfigLoader.add_constructor(_EVAL_TAG, _construct_eval)

_INT_TAG = "tag:yaml.org,2002:int"
_MAX_INT_DIGITS = 30


def _where(loader: _SafeConfigLoader, node: yaml.Node) -> str:
    key = loader.key_of_node.get(id(node))
    line = f"line {node.start_mark.line + 1}"
    return f"key {key} ({line})" if key else line


def _check_nodes(loader: _SafeConfigLoader, node: yaml.Node, key: str) -> None:
    """Before anything is built: refuse duplicate keys and over-long integers, and record
    the dotted key of every value node (iterative, so deep nesting cannot overflow; a node
    reached again through a YAML alias is not walked twice, so alias bombs cost nothing)."""
    stack = [(node, key)]
    while stack:
        node, key = stack.pop()
        if id(node) in loader.key_of_node:
            continue
        loader.key_of_node[id(node)] = key
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _INT_TAG and len(node.value) > _MAX_INT_DIGITS:
                raise ConfigError(f"{_where(loader, node)}: integer of {len(node.value)} characters")
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, f"{key}[{i}]") for i, child in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            first_line: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "<complex key>"
                full = f"{key}.{name}" if key else name
                line = key_node.start_mark.line + 1
                ident = (key_node.tag, name)
                if isinstance(key_node, yaml.ScalarNode) and ident in first_line:
                    raise ConfigError(
                        f"duplicate key {full} at line {line} (first at line {first_line[ident]})"
                    )
                first_line[ident] = line
                stack.append((value_node, full))


_MAX_EXPANDED_NODES = 1_000_000


def _node_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expanded_size(loader: _SafeConfigLoader, root: yaml.Node) -> None:
    """Refuse a document whose aliases expand it beyond _MAX_EXPANDED_NODES nodes (a "billion
    laughs") or make a value contain itself. Sizes are memoised, so the check is linear."""
    size: dict[int, int] = {}
    open_nodes: set[int] = set()  # started, not finished: the path from the root
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        if finished:
            open_nodes.discard(id(node))
            size[id(node)] = 1 + sum(size[id(c)] for c in _node_children(node))
            if size[id(node)] > _MAX_EXPANDED_NODES:
                raise ConfigError(
                    f"{_where(loader, node)}: YAML aliases expand this value beyond {_MAX_EXPANDED_NODES} items"
                )
            continue
        if id(node) in size:
            continue
        if id(node) in open_nodes:
            raise ConfigError(f"{_where(loader, node)}: a YAML alias makes this value contain itself")
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in _node_children(node) if id(c) not in size)


def load_yaml(path: str) -> dict:
    """Read one YAML file safely (no `_BASE_` handling). Every error is a ConfigError naming
    the file (and the key and line where there is one), never quoting the file's text."""
    try:
        with open(path, encoding="utf-8") as f:
            loader = _SafeConfigLoader(f)
            try:
                loader.key_of_node = {}
                node = loader.get_single_node()
                if node is not None:
                    _check_nodes(loader, node, "")
                    _check_expanded_size(loader, node)
                data = None if node is None else loader.construct_document(node)
            finally:
                loader.dispose()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except yaml.constructor.ConstructorError as e:
        hint = "; config files may not run code" if "tag" in str(e.problem) else ""
        raise ConfigError(f"{path}: {_yaml_problem(e)}{hint}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {_yaml_problem(e)}") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except (ValueError, TypeError, RecursionError, MemoryError) as e:
        raise ConfigError(f"{path}: cannot read the config ({type(e).__name__})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    return data


def _yaml_problem(e: yaml.YAMLError) -> str:
    """The problem and its line, without PyYAML's quote of the offending text."""
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return f"{e.problem or e.context}{where}"
    return type(e).__name__


def _merge_dicts(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge_dicts(out[k], v)
        else:
            out[k] = v
    return out


_YAML_SUFFIXES = (".yaml", ".yml")


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
    if not base.lower().endswith(_YAML_SUFFIXES):
        raise ConfigError(f"{path}: _BASE_ {base!r} is not a .yaml/.yml file; refused without reading it")
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
        try:
            self.merge_from_other_cfg(type(self)(known))
        except (ValueError, KeyError, TypeError, AssertionError) as e:
            raise ConfigError(f"{cfg_filename}: {e}") from None
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
