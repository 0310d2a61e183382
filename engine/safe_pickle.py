"""A restricted unpickler for official StyleGAN-XL / StyleGAN3 network pickles: it never runs code.

Every global a pickle names resolves to code of this module (see engine/import_official.py for
the pickle layout and the conversion):
- persistence records, dnnlib EasyDict, OrderedDict, tensor/parameter/storage rebuilders
  (torch.storage._load_from_bytes -> torch.load(weights_only=True)), torch dtypes/Size/device,
  numpy scalar/array/dtype reconstructors, _codecs.encode(str, 'latin1'), plain builtin containers:
  safe re-implementations or plain data types;
- classes and functions of the model code (training., pg_modules., feature_networks., torch_utils.,
  dnnlib., metrics., torch.nn., timm., functools., dill., torch tensor ops like torch.sigmoid, plus
  `inert` prefixes): inert records that only store their arguments and state;
- anything else (builtins.eval/exec, os/posix.system, subprocess, unknown modules, ...):
  UnreadablePickle (a pickle.UnpicklingError and a ValueError) "X: refusing to load <module>.<name>: ...".
Any other failure to parse the file (garbage bytes, truncation, a huge length claim raising MemoryError,
UnicodeDecodeError, EOFError, ...) is one UnreadablePickle "X is not a readable network pickle (...)".
module_src is never executed (only its sha256 is recorded). torch.save zip archives are read by
the same Unpickler, storages coming from the archive's data/ entries.
"""

from __future__ import annotations

import _compat_pickle
import collections
import dataclasses
import hashlib
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from engine.errors import file_kind

INERT_NAMESPACES = ("training", "pg_modules", "feature_networks", "torch_utils", "dnnlib", "metrics", "torch.nn",
                    "torch._C._nn", "timm", "functools", "dill")


class OfficialImportError(ValueError):
    """The pickle is readable but cannot become an engine checkpoint (says why)."""


class UnreadablePickle(OfficialImportError, pickle.UnpicklingError):
    """The file is not a network pickle this importer reads: malformed, or it names a refused global."""


# ---------------------------------------------------------------------------------------------
# Inert records and safe re-implementations of the globals a network pickle uses.

@dataclasses.dataclass(eq=False)
class Persistent:
    """A torch_utils.persistence object: class name and state only (module_src never runs)."""

    class_name: str
    state: dict
    src_sha256: str


class Opaque:
    """Stand-in for a model-code class or function: records arguments and state, runs nothing."""

    global_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items = args, kwargs, None, []
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items.append((key, value))

    def append(self, value):
        self.items.append(value)

    def extend(self, values):
        self.items.extend(values)

    def __repr__(self):
        return f"<inert {self.global_name}>"


_opaque_classes: dict[str, type] = {}


def _opaque(name: str) -> type:
    if name not in _opaque_classes:
        _opaque_classes[name] = type(name.rsplit(".", 1)[-1], (Opaque,), {"global_name": name})
    return _opaque_classes[name]


class EasyDict(dict):
    """dnnlib.util.EasyDict as plain data."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclasses.dataclass(frozen=True)
class _Storage:
    untyped: torch.UntypedStorage
    dtype: torch.dtype


@dataclasses.dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


class _TensorType:  # torch.Tensor / torch.nn.Parameter as arguments of _rebuild_from_type_v2
    pass


def _fail(what: str, why: str):
    raise UnreadablePickle(f"refusing to load {_short(what)}: {why}")


def _short(text: str, limit: int = 160) -> str:
    """text cut to `limit` characters (reprs of garbage input can be long)."""
    return text if len(text) <= limit else text[:limit] + "..."


def _reconstruct_persistent_obj(meta):
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        _fail("torch_utils.persistence object", "its meta is not {type: 'class', state: {...}, ...}")
    src = meta.get("module_src") or ""
    return Persistent(str(meta.get("class_name")), dict(meta["state"]),
                      hashlib.sha256(src.encode() if isinstance(src, str) else bytes(src)).hexdigest())


def _load_from_bytes(b):
    if not isinstance(b, (bytes, bytearray)):
        _fail("torch.storage._load_from_bytes", "argument is not bytes")
    s = torch.load(io.BytesIO(b), weights_only=True, map_location="cpu")
    if isinstance(s, torch.storage.TypedStorage):
        return _Storage(s._untyped_storage, s.dtype)  # .untyped() warns
    if isinstance(s, torch.UntypedStorage):
        return _Storage(s, torch.uint8)
    _fail("torch.storage._load_from_bytes", f"bytes hold a {type(s).__name__}, not a storage")


def _ints(x) -> bool:
    return isinstance(x, (tuple, list)) and all(isinstance(i, int) for i in x)


def _rebuild_tensor(storage, offset, size, stride):
    if not isinstance(storage, _Storage) or not isinstance(offset, int) or not _ints(size) or not _ints(stride):
        _fail("torch._utils._rebuild_tensor_v2", "arguments are not (storage, offset, size, stride)")
    return torch.empty(0, dtype=storage.dtype).set_(storage.untyped, offset, tuple(size), tuple(stride))


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, torch.Tensor):
        _fail("torch._utils._rebuild_parameter", "its data is not a tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in (_rebuild_tensor_v2, _rebuild_tensor, _rebuild_parameter) or new_type is not _TensorType:
        _fail("torch._tensor._rebuild_from_type_v2", "it rebuilds something other than a tensor")
    return func(*args)


def _np_reconstruct(cls, shape, dtype):
    if cls is not np.ndarray:
        _fail("numpy _reconstruct", f"class {cls!r} is not numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        _fail("numpy scalar", "only plain numeric scalars are accepted")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _codecs_encode(text, encoding="utf-8"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        _fail("_codecs.encode", "only encode(str, 'latin1') (protocol-2 bytes) is accepted")
    return text.encode("latin1")


def _bytearray(*args):
    if args and not isinstance(args[0], (bytes, str)):  # bytearray(n) would allocate n bytes on request
        _fail("builtins.bytearray", "only bytearray(bytes) or bytearray(str, encoding) is accepted")
    return bytearray(*args)


def _copyreg_reconstructor(cls, base, state):
    if not (isinstance(cls, type) and issubclass(cls, (Opaque, EasyDict, collections.OrderedDict))):
        _fail("copyreg._reconstructor", f"class {cls!r} is not an inert record")
    return cls.__new__(cls)


_NUMPY = {"scalar": _np_scalar, "_reconstruct": _np_reconstruct}
_SAFE = {
    "torch_utils.persistence._reconstruct_persistent_obj": _reconstruct_persistent_obj,
    "dnnlib.util.EasyDict": EasyDict, "dnnlib.EasyDict": EasyDict,
    "collections.OrderedDict": collections.OrderedDict,
    "torch._utils._rebuild_tensor": _rebuild_tensor, "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch.nn.parameter.Parameter": _TensorType, "torch.Tensor": _TensorType, "torch._tensor.Tensor": _TensorType,
    "torch.storage._load_from_bytes": _load_from_bytes,
    "torch.Size": torch.Size, "torch.device": torch.device,
    "numpy.dtype": np.dtype, "numpy.ndarray": np.ndarray,
    **{f"numpy.{core}.multiarray.{k}": v for core in ("core", "_core") for k, v in _NUMPY.items()},
    "_codecs.encode": _codecs_encode, "copyreg._reconstructor": _copyreg_reconstructor,
    **{f"builtins.{t.__name__}": t for t in (set, frozenset, slice, complex, object, range)},
    "builtins.bytearray": _bytearray,
    "builtins.getattr": _opaque("builtins.getattr"),  # bound methods in D pickle as getattr(obj, name)
}
_TORCH_CONSTANTS = {k: v for k, v in vars(torch).items()
                    if isinstance(v, (torch.dtype, torch.layout, torch.memory_format))}
_STORAGE_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
                   "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                   "BoolStorage": torch.bool, "UntypedStorage": torch.uint8}
_DANGEROUS = ("builtins", "os", "posix", "nt", "subprocess", "sys", "shutil", "importlib", "runpy", "pickle",
              "_pickle", "marshal", "types", "code", "codeop", "ctypes", "socket", "io", "_io", "pty", "operator",
              "webbrowser", "multiprocessing", "pathlib", "tempfile", "signal", "inspect", "pdb", "__main__")


class SafeUnpickler(pickle.Unpickler):
    """Unpickler whose globals all resolve to this module's inert records or safe functions."""

    def __init__(self, file, *, inert: tuple[str, ...] = (), archive: zipfile.ZipFile | None = None, prefix: str = ""):
        super().__init__(file)
        self.inert = INERT_NAMESPACES + tuple(inert)
        self.archive, self.prefix, self.storages = archive, prefix, {}

    def find_class(self, module: str, name: str):
        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol-2 pickles (torch.save) use Python 2 names
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f"{module}.{name}"
        if full in _SAFE:
            return _SAFE[full]
        if module == "torch" and name in _TORCH_CONSTANTS:
            return _TORCH_CONSTANTS[name]
        if module == "torch" and name in _STORAGE_DTYPES:  # storage classes in torch.save persistent ids
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and hasattr(torch._C._VariableFunctions, name):  # e.g. torch.sigmoid held by a D block
            return _opaque(full)
        if module.split(".")[0] in _DANGEROUS:
            _fail(full, "it can run arbitrary code; a network pickle never needs it")
        if any(module == p or module.startswith(p + ".") for p in self.inert):
            return _opaque(full)
        _fail(full, "not a tensor, container or network class this importer knows (nothing was executed; "
                    "pass --inert PREFIX to keep such names as inert records)")

    def persistent_load(self, pid):
        if self.archive is None or not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            _fail(f"persistent id {pid!r}", "only torch.save archives use persistent ids")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not isinstance(numel, int):
            _fail(f"persistent id {pid!r}", "not a storage reference")
        if key not in self.storages:
            data = self.archive.read(f"{self.prefix}data/{key}")
            if len(data) < numel * stype.dtype.itemsize:
                _fail(f"storage {key}", "the archive entry is shorter than the storage")
            self.storages[key] = torch.UntypedStorage.from_buffer(data, dtype=torch.uint8)
        return _Storage(self.storages[key], stype.dtype)


def load_official(path: str | Path, *, inert: tuple[str, ...] = ()) -> dict:
    """The pickle's top-level dict with inert records for networks (plain pickle, dill or torch.save zip).

    Raises:
        FileNotFoundError: no such file.
        UnreadablePickle (an OfficialImportError, so a ValueError, and a pickle.UnpicklingError):
            "X: refusing to load <global>: <why>" for a refused global, "X is not a readable network
            pickle (<error>)" for anything else the unpickler cannot parse (garbage, truncation,
            huge length claims: MemoryError, UnicodeDecodeError, EOFError, ... are all caught).
        OfficialImportError: a zip that is no torch.save archive, big-endian tensors, not a dict.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"network pickle {path} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"network pickle {path} is a directory, not a file")
    try:
        data = _read(path, inert)
    except UnreadablePickle as e:  # a refused global (nothing ran): keep the reason, name the file
        raise UnreadablePickle(f"{path}: {e}") from e
    except OfficialImportError:
        raise
    except Exception as e:  # the file is not a pickle, or a damaged one; MemoryError: a huge length claim
        raise UnreadablePickle(f"{path} is not a readable network pickle ({_unreadable(path, e)})") from e
    if not isinstance(data, dict):
        raise OfficialImportError(f"{path} holds a {type(data).__name__}, not the dict of a network snapshot")
    return data


def _read(path: Path, inert: tuple[str, ...]):
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("data.pkl")]
            if len(names) != 1:
                raise OfficialImportError(f"{path} is a zip file but not a torch.save archive")
            prefix = names[0][: -len("data.pkl")]
            if prefix + "byteorder" in z.namelist() and z.read(prefix + "byteorder").strip() != b"little":
                raise OfficialImportError(f"{path} stores big-endian tensors (not supported)")
            return SafeUnpickler(io.BytesIO(z.read(names[0])), inert=inert, archive=z, prefix=prefix).load()
    with open(path, "rb") as f:
        return SafeUnpickler(f, inert=inert).load()


def _unreadable(path: Path, e: Exception) -> str:
    """Why the unpickler failed, in words: what the file looks like, else the error."""
    kind = file_kind(path)
    if kind == "empty":
        return "the file is empty"
    if kind == "safetensors":
        return "it is a safetensors file; a checkpoint of this engine needs no conversion"
    if isinstance(e, MemoryError):
        return "it claims an impossibly large object: damaged, or not a pickle"
    return _short(f"{type(e).__name__}: {e}")
