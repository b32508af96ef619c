"""Reading weights files from untrusted sources: no code, no crash, no memory blow-up.

Three limits hold for every `.pkl` / `.pth` / `.pt` the project reads:
- Code: a pickle may name only numpy's array constructors and plain containers (`.pkl`), and torch
  files are read with `weights_only=True`; nothing else is ever imported or called.
- Nesting: before anything is unpickled, the pickle's opcodes are replayed on a model of the stack
  (no object is built) and a file nesting containers deeper than `MAX_NESTING` (or holding a
  cycle) is refused. Deep nesting crashes CPython's recursive C code (hashing a nested tuple key,
  repr) with a segfault instead of an exception.
- Size: the arrays a file asks for (numpy constructors called from the pickle, the logical size
  of every tensor, stride-0 views included) may total at most `2 * file size + 1 MiB`, and never
  more than a cap (`max_bytes`, default `$MASK2FORMER_MAX_WEIGHTS_BYTES` or 16 GiB). Torch zip
  members must be stored uncompressed (as `torch.save` writes them), so a small file cannot expand.
Arrays must be numeric (bool, integer, float, complex): object, string and structured arrays are
refused with an error naming the file and the entry.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
import struct
import zipfile
from collections.abc import Iterable

import numpy as np
import torch

from ..utils.env import positive_env_number
from .errors import CheckpointError

MAX_NESTING = 100
DEFAULT_MAX_BYTES = 16 << 30
MAX_BYTES_ENV = "MASK2FORMER_MAX_WEIGHTS_BYTES"
_NUMERIC_KINDS = "biufc"
_NUMPY_CORE = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1


def max_bytes_cap() -> int:
    """The configured cap on what one weights file may allocate (`$MASK2FORMER_MAX_WEIGHTS_BYTES`)."""
    return positive_env_number(MAX_BYTES_ENV, DEFAULT_MAX_BYTES, int, "bytes")


def allocation_budget(file_size: int, max_bytes: int | None = None) -> int:
    """Bytes of arrays a file of `file_size` bytes may ask for: twice its size plus 1 MiB, capped."""
    cap = max_bytes_cap() if max_bytes is None else max_bytes
    return min(cap, 2 * file_size + (1 << 20))


# --------------------------------------------------------------------------------------------
# Nesting depth, from the opcodes alone
# --------------------------------------------------------------------------------------------
class _TooDeepError(Exception):
    pass


class _Node:
    """One value on the modelled unpickling stack: its nesting depth and the containers holding it."""

    __slots__ = ("depth", "parents")

    def __init__(self) -> None:
        self.depth = 0
        self.parents: list[_Node] = []


def _contain(parent: _Node, children: Iterable[_Node], limit: int) -> None:
    """Record that `parent` holds `children`, raising depths up the chain of holders."""
    for child in children:
        child.parents.append(parent)
        work = [(parent, child.depth + 1)]
        while work:
            node, depth = work.pop()
            if depth <= node.depth:
                continue
            if depth > limit:  # also the end of a cycle, whose depth grows without bound
                raise _TooDeepError
            node.depth = depth
            work.extend((p, depth + 1) for p in node.parents)


_MUTATORS = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}


def _replay_op(op, arg, stack: list[_Node], marks: list[int], memo: dict, limit: int) -> None:
    name = op.name
    if name == "MARK":
        marks.append(len(stack))
    elif name in _PUTS:
        memo[arg] = stack[-1]
    elif name == "MEMOIZE":
        memo[len(memo)] = stack[-1]
    elif name in _GETS:
        stack.append(memo[arg])
    elif name == "DUP":
        stack.append(stack[-1])
    else:
        before = op.stack_before
        popped: list[_Node] = []
        if pickletools.markobject in before:
            start = marks.pop()
            popped = stack[start:]
            del stack[start:]
            below = before.index(pickletools.markobject)
        else:
            below = len(before)
        if below:
            popped = stack[-below:] + popped
            del stack[-below:]
        if name in _MUTATORS:  # the container stays on the stack, holding the rest
            _contain(popped[0], popped[1:], limit)
            stack.append(popped[0])
            return
        for _ in op.stack_after:
            node = _Node()
            _contain(node, popped, limit)
            stack.append(node)


# Opcodes whose argument is a length-prefixed string: skipped, not decoded (array data is here).
_LENGTH_PREFIXED = {
    "BINUNICODE": "<I",
    "BINUNICODE8": "<Q",
    "BINBYTES": "<I",
    "BINBYTES8": "<Q",
    "BYTEARRAY8": "<Q",
    "BINSTRING": "<i",
}


def _opcodes(data: bytes):
    """(opcode, argument) pairs of a pickle, like `pickletools.genops`, but the payload of
    length-prefixed strings is skipped (its argument is None): decoding the array data of a
    protocol-2 file would double the cost of reading it."""
    stream = io.BytesIO(data)
    while True:
        code = stream.read(1)
        if not code:
            raise ValueError("pickle exhausted before seeing STOP")
        op = pickletools.code2op.get(code.decode("latin-1"))  # type: ignore[attr-defined]  # defined in CPython's pickletools, missing from its typeshed stub
        if op is None:
            raise ValueError(f"unknown opcode {code!r} at byte {stream.tell() - 1}")
        fmt = _LENGTH_PREFIXED.get(op.name)
        if fmt is None:
            arg = op.arg.reader(stream) if op.arg is not None else None
        else:
            size = struct.calcsize(fmt)
            header = stream.read(size)
            length = struct.unpack(fmt, header)[0] if len(header) == size else -1
            if length < 0 or stream.tell() + length > len(data):
                raise ValueError(
                    f"{op.name} at byte {stream.tell() - size - 1} runs past the end of the data"
                )
            stream.seek(length, io.SEEK_CUR)
            arg = None
        yield op, arg
        if op.name == "STOP":
            return


def check_pickle_nesting(data: bytes, source: str, limit: int = MAX_NESTING) -> None:
    """Refuse (CheckpointError naming `source`) a pickle whose containers nest deeper than `limit`
    or hold a cycle; malformed opcodes are refused too. Builds no object."""
    stack: list[_Node] = []
    marks: list[int] = []
    memo: dict = {}
    try:
        for op, arg in _opcodes(data):
            if op.name == "STOP":
                break
            _replay_op(op, arg, stack, marks, memo, limit)
    except _TooDeepError:
        raise CheckpointError(
            f"refused to load {source}: its containers nest deeper than {limit} levels (or hold a cycle); "
            "weights files hold a dict of arrays"
        ) from None
    except (ValueError, KeyError, IndexError, struct.error) as e:
        raise CheckpointError(f"cannot read {source} as a weights pickle: malformed pickle ({e})") from None


# --------------------------------------------------------------------------------------------
# Detectron2 .pkl files: numpy arrays only, within the allocation budget
# --------------------------------------------------------------------------------------------
class _RefusedError(pickle.UnpicklingError):
    """The pickle asks for something a weights file may not hold (as opposed to being malformed)."""


class _NDArrayType:
    """Stands for `numpy.ndarray` in a pickle: `_reconstruct` accepts it, building one is refused."""

    def __new__(cls, *args, **kwargs):
        raise _RefusedError("numpy.ndarray may not be called directly in a weights file")


def _numeric_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.kind not in _NUMERIC_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise _RefusedError(f"arrays of dtype {dt} are not allowed (numeric arrays only)")
    return dt


class _Allocations:
    """The numpy constructors a weights pickle may call, each checked against the budget."""

    def __init__(self, budget: int):
        self.remaining = budget
        self.budget = budget

    def _spend(self, nbytes: int) -> None:
        if nbytes > self.remaining:
            raise _RefusedError(
                f"it asks for more than {self.budget} bytes of arrays (twice the file size plus 1 MiB, "
                f"capped by ${MAX_BYTES_ENV})"
            )
        self.remaining -= nbytes

    def reconstruct(self, subtype, shape, dtype):
        if subtype is not _NDArrayType:
            raise _RefusedError("_reconstruct may only build numpy arrays")
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        if not all(isinstance(d, int) and d >= 0 for d in dims):
            raise _RefusedError(f"bad array shape {shape!r}")
        dt = _numeric_dtype(dtype)
        self._spend(math.prod(dims) * dt.itemsize)
        return np.ndarray.__new__(np.ndarray, dims, dt)

    def frombuffer(self, buffer, dtype, shape, order):
        dt = _numeric_dtype(dtype)
        self._spend(len(memoryview(buffer).cast("B")))
        return np.frombuffer(buffer, dtype=dt).reshape(shape, order=order)

    def scalar(self, dtype, *args):
        dt = _numeric_dtype(dtype)
        self._spend(dt.itemsize)
        return _NUMPY_CORE.multiarray.scalar(dt, *args)

    @staticmethod
    def dtype(*args):
        # refused here, not only after loading: an object array's state may claim a huge shape
        return _numeric_dtype(np.dtype(*args))

    @staticmethod
    def encode(text, encoding="utf-8", errors="strict"):
        if encoding not in ("latin1", "latin-1"):
            raise _RefusedError(f"_codecs.encode with {encoding!r} is not allowed")
        return text.encode("latin1", errors)


class _ArrayUnpickler(pickle.Unpickler):
    def __init__(self, file, allocations: _Allocations):
        super().__init__(file, encoding="latin1")
        self.allocations = allocations

    def find_class(self, module: str, name: str):
        a = self.allocations
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): a.reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): a.reconstruct,
            ("numpy.core.multiarray", "scalar"): a.scalar,
            ("numpy._core.multiarray", "scalar"): a.scalar,
            ("numpy", "ndarray"): _NDArrayType,
            ("numpy", "dtype"): a.dtype,
            ("collections", "OrderedDict"): super().find_class("collections", "OrderedDict"),
            ("_codecs", "encode"): a.encode,  # bytes in protocol-2 pickles
            ("numpy.core.numeric", "_frombuffer"): a.frombuffer,  # arrays in protocol-5 pickles
            ("numpy._core.numeric", "_frombuffer"): a.frombuffer,
        }
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise _RefusedError(f"global '{module}.{name}' is not allowed in a weights file")


def read_weights_pickle(path: str, max_bytes: int | None = None) -> object:
    """Unpickle a Detectron2-style `.pkl` within the limits of the module doc."""
    with open(path, "rb") as f:
        data = f.read()
    check_pickle_nesting(data, path)
    allocations = _Allocations(allocation_budget(len(data), max_bytes))
    try:
        return _ArrayUnpickler(io.BytesIO(data), allocations).load()
    except _RefusedError as e:
        raise CheckpointError(
            f"refused to load {path}: {e}; weights files may hold numeric arrays only, never code"
        ) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        MemoryError,
    ) as e:
        raise CheckpointError(f"cannot read {path} as a weights pickle: {type(e).__name__}: {e}") from None


# --------------------------------------------------------------------------------------------
# Torch zip files
# --------------------------------------------------------------------------------------------
def check_torch_zip(path: str) -> None:
    """Refuse a torch file that is not the zip format `torch.save` writes, has compressed members
    (a zip bomb; torch never compresses) or whose `data.pkl` nests too deep."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            compressed = [m.filename for m in members if m.compress_type != zipfile.ZIP_STORED]
            if compressed:
                raise CheckpointError(
                    f"refused to load {path}: zip member(s) {', '.join(compressed[:3])} are compressed; "
                    "torch.save stores members uncompressed, and a compressed member can expand without bound"
                )
            pickles = [m for m in members if m.filename.endswith("data.pkl")]
            if len(pickles) != 1:
                raise CheckpointError(
                    f"cannot read {path} as a PyTorch checkpoint: no single data.pkl in the zip"
                )
            check_pickle_nesting(archive.read(pickles[0]), path)
    except zipfile.BadZipFile as e:
        raise CheckpointError(
            f"cannot read {path} as a PyTorch checkpoint: {e} (expected the zip format of torch.save, "
            "PyTorch 1.6 and later; the file may be truncated or corrupt)"
        ) from None


def read_torch_file(path: str) -> object:
    """`torch.load(weights_only=True)` after `check_torch_zip`."""
    check_torch_zip(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {path}: it holds objects beyond tensors and plain containers ({e}); "
            "weights files are loaded with weights_only=True and never run code"
        ) from None
    except (RuntimeError, EOFError, ValueError, MemoryError) as e:
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {e}") from None


def check_tensor_budget(tensors: dict[str, torch.Tensor], source: str, budget: int) -> None:
    """Refuse tensors whose logical sizes (what using them allocates) total more than `budget`."""
    total = 0
    for name, t in tensors.items():
        total += t.numel() * t.element_size()
        if total > budget:
            raise CheckpointError(
                f"refused to load {source}: its tensors (up to {name!r}) need more than {budget} bytes "
                f"(twice the file size plus 1 MiB, capped by ${MAX_BYTES_ENV})"
            )


def check_numeric(name: str, value: np.ndarray, source: str) -> None:
    """Refuse a non-numeric array entry (object, string, structured), naming the file and entry."""
    dt = value.dtype
    if dt.kind not in _NUMERIC_KINDS or dt.fields is not None:
        raise CheckpointError(
            f"{source}: entry {name!r} is an array of dtype {dt}; weights must be numeric arrays"
        )
