"""Convert an official StyleGAN-XL (or unconditional StyleGAN3-T) network pickle into a checkpoint
of this engine, without running any code from the pickle.

    python -m engine.import_official --pkl imagenet16.pkl --out imagenet16.safetensors

The output is one safetensors file laid out like a training checkpoint's generator parts ("G",
"G_ema") with meta["arch"]["G"] = the GeneratorConfig, so `engine.stages._load_generator` (and
`--stem` / `--resume`) can open it. The discriminator is not converted (a different network here).

Reading the pickle. The original training loops pickle (or dill) a dict {'G', 'D', 'G_ema',
'augment_pipe', 'training_set_kwargs', ...}. Every network class is a torch_utils.persistence class:
it pickles as REDUCE(torch_utils.persistence._reconstruct_persistent_obj, (meta,)) with meta =
{type, version, module_src, class_name, state}, state being the module's __dict__ (_parameters,
_buffers, _modules, _init_kwargs, plain attributes). Loading it normally execs module_src. Here a
restricted Unpickler resolves every global to code of this module:
- persistence records, dnnlib EasyDict, OrderedDict, tensor/parameter/storage rebuilders
  (torch.storage._load_from_bytes -> torch.load(weights_only=True)), torch dtypes/Size/device,
  numpy scalar/array/dtype reconstructors, _codecs.encode(str, 'latin1'), plain builtin containers:
  safe re-implementations or plain data types;
- classes and functions of the model code (training., pg_modules., feature_networks., torch_utils.,
  dnnlib., metrics., torch.nn., timm., functools., dill., torch tensor ops like torch.sigmoid, plus
  --inert prefixes): inert records that only store their arguments and state (the discriminator's
  timm modules and dill closures end up here, never built or called);
- anything else (builtins.eval/exec, os/posix.system, subprocess, unknown modules, ...):
  UnpicklingError "refusing to load <module>.<name>: ...".
module_src is never executed (only its sha256 is recorded); nothing imports torch_utils, dnnlib or
the original packages. torch.save zip archives of the same dict are read by the same Unpickler,
storages coming from the archive's data/ entries.

Key mapping (official G_ema state_dict name -> engine Generator state_dict name):
    mapping.embed.weight [rows, 320]           -> mapping.embed.weight (conditional only)
    mapping.embed_proj.{weight,bias}            -> same
    mapping.fc{0,1}.{weight,bias}, mapping.w_avg -> same ([c_dim, w_dim] per class, or [w_dim])
    synthesis.input.{weight,affine.weight,affine.bias,transform,freqs,phases} -> same
    synthesis.L{i}_{size}_{ch}.{affine.weight,affine.bias,weight,bias,magnitude_ema,up_filter,
        down_filter}                            -> synthesis.layers.L{i}_{size}_{ch}.<same>
Semantics kept or converted:
- magnitude_ema is loaded as is: both forwards use input_gain = rsqrt(magnitude_ema) (1 in
  StyleGAN-XL, trained values in StyleGAN3).
- up/down filters are buffers on both sides; the pickle's are loaded and must equal this engine's
  recomputed Kaiser filters (checks that the layer specs agree), None filters are absent on both.
- per-class w_avg has the same [c_dim, w_dim] layout; the class table keeps its row count
  (embed_rows = rows of the pickle's table, 1000 for the lite0 table).
- unconditional StyleGAN-XL: the original always loads the 1000x320 table although it is never
  used; this engine's unconditional mapping has no table, so it is dropped.
Config inference: resolution, z/c/w dims from G's attributes; stem_res, syn_layers, channel_base,
channel_max from the synthesis network's init kwargs (defaults of the original signature when
absent); head_layers, up_factor from SuperresGenerator's init kwargs (for a stem the pickle cannot
say: XL train.py defaults 7 and 2, or --head-layers / --up-factor); embed dims from the table; conv_clamp from the layers (must be one value); mapping
lr multiplier and w_avg beta from the mapping. The result is checked: layer names and order,
every tensor shape, filters and paddings must match the engine's generator built from it. The
persistence meta holds no module name (the XL classes live in training.networks_stylegan3_resetting,
StyleGAN3's in training.networks_stylegan3), so the family is read from the structure: an
nn.Embedding class table means StyleGAN-XL, no table an unconditional StyleGAN3. --dtype
(default float32, closest to the original's fp16/fp32 numerics) sets the synthesis compute dtype.
Not representable (clear error): conditional StyleGAN3 (FC label embedding), StyleGAN3-R (radial
filters, 1x1 convs), StyleGAN2/fastgan generators, mapping depth != 2, mixed conv_clamp.
Verified against the original source (autonomousvision/stylegan-xl training/networks_stylegan3_
resetting.py, train.py, training_loop.py, legacy.py; NVlabs/stylegan3 torch_utils/persistence.py,
training/networks_stylegan3.py): class and attribute names, layer naming, state layout, the dill
dump of GPU tensors (storages via torch.storage._load_from_bytes). Not verified: the exact globals
inside the released pickles' discriminators (no released file was available offline); if one uses
a namespace not listed above, pass --inert PREFIX (still inert) after checking the name.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import collections
import dataclasses
import hashlib
import io
import pickle
import re
import sys
import zipfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine import checkpoint  # noqa: E402
from model.config import GeneratorConfig  # noqa: E402
from model.generator import Generator  # noqa: E402

INERT_NAMESPACES = ("training", "pg_modules", "feature_networks", "torch_utils", "dnnlib", "metrics", "torch.nn",
                    "torch._C._nn", "timm", "functools", "dill")
LAYER = re.compile(r"L\d+_\d+_\d+$")


class OfficialImportError(ValueError):
    """The pickle is readable but cannot become an engine checkpoint (says why)."""


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
    raise pickle.UnpicklingError(f"refusing to load {what}: {why}")


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
    **{f"builtins.{t.__name__}": t for t in (set, frozenset, slice, complex, bytearray, object, range)},
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
    """The pickle's top-level dict with inert records for networks (plain pickle, dill or torch.save zip)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"network pickle {path} does not exist")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("data.pkl")]
            if len(names) != 1:
                raise OfficialImportError(f"{path} is a zip file but not a torch.save archive")
            prefix = names[0][: -len("data.pkl")]
            if prefix + "byteorder" in z.namelist() and z.read(prefix + "byteorder").strip() != b"little":
                raise OfficialImportError(f"{path} stores big-endian tensors (not supported)")
            data = SafeUnpickler(io.BytesIO(z.read(names[0])), inert=inert, archive=z, prefix=prefix).load()
    else:
        with open(path, "rb") as f:
            data = SafeUnpickler(f, inert=inert).load()
    if not isinstance(data, dict):
        raise OfficialImportError(f"{path} holds a {type(data).__name__}, not the dict of a network snapshot")
    return data


# ---------------------------------------------------------------------------------------------
# Reading module records.

def _state(obj) -> dict | None:
    if isinstance(obj, Persistent):
        return obj.state
    if isinstance(obj, Opaque):
        st = obj.state[0] if isinstance(obj.state, tuple) and obj.state else obj.state
        return st if isinstance(st, dict) and "_modules" in st else None
    return None


def _class(obj) -> str:
    return obj.class_name if isinstance(obj, Persistent) else getattr(obj, "global_name", type(obj).__name__)


def _child(obj, name: str):
    st = _state(obj)
    return None if st is None else (st.get("_modules") or {}).get(name)


def _attr(obj, name: str, default=None):
    st = _state(obj) or {}
    v = st.get(name, (st.get("_init_kwargs") or {}).get(name, default))
    return v.item() if isinstance(v, np.generic) else v


def _kwargs(obj) -> dict:
    return dict((_state(obj) or {}).get("_init_kwargs") or {})


def flat_state(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state_dict of an inert module record (parameters, persistent buffers, submodules)."""
    st = _state(obj)
    if st is None:
        raise OfficialImportError(f"{prefix or 'network'} is a {_class(obj)} without module state")
    out = {}
    skip = set(st.get("_non_persistent_buffers_set") or ())
    for group in ("_parameters", "_buffers"):
        for name, t in (st.get(group) or {}).items():
            if t is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(t, torch.Tensor):
                raise OfficialImportError(f"{prefix}{name} is a {type(t).__name__}, not a tensor")
            out[prefix + name] = t
    for name, child in (st.get("_modules") or {}).items():
        if child is not None:
            if _state(child) is None:
                raise OfficialImportError(f"{prefix}{name} is a {_class(child)} without module state")
            out.update(flat_state(child, f"{prefix}{name}."))
    return out


def to_engine_key(name: str) -> str:
    """Official G state_dict name -> this engine's Generator state_dict name."""
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "synthesis" and LAYER.match(parts[1]):
        return ".".join(["synthesis", "layers", *parts[1:]])
    return name


def to_official_state(g: Generator) -> dict[str, torch.Tensor]:
    """This engine's Generator state_dict under the original's names (the inverse of to_engine_key)."""
    return {k.replace("synthesis.layers.", "synthesis.", 1): v for k, v in g.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Config inference and conversion.

_EXPECTED_SYN = {"num_critical": 2, "first_cutoff": 2, "first_stopband": 2**2.1, "last_stopband_rel": 2**0.3,
                 "margin_size": 10, "output_scale": 0.25, "img_channels": 3}
_EXPECTED_LAYER = {"conv_kernel": 3, "filter_size": 6, "lrelu_upsampling": 2, "use_radial_filters": False}


def _same(a, b) -> bool:
    try:
        return bool(np.isclose(float(a), float(b), rtol=1e-9, atol=0))
    except (TypeError, ValueError):
        return False


def infer_config(G, *, dtype: str = "float32", head_layers: int | None = None,
                 up_factor: int | None = None) -> tuple[GeneratorConfig, str]:
    """(GeneratorConfig, family) of an inert official generator record; family 'stylegan-xl' or 'stylegan3-t'.

    head_layers / up_factor: how a stem grows in this engine (the pickle of a stem does not say;
    default 7 and 2 as in the original train.py); for a SuperresGenerator they must match.
    """
    name = _class(G)
    syn, mapping = _child(G, "synthesis"), _child(G, "mapping")
    if name not in ("Generator", "SuperresGenerator") or syn is None or mapping is None:
        raise OfficialImportError(f"G_ema is a {name}, not a StyleGAN3/StyleGAN-XL Generator or SuperresGenerator")
    layers = [k for k in (_state(syn).get("_modules") or {}) if LAYER.match(k)]
    if _child(syn, "input") is None or not layers:
        raise OfficialImportError("the synthesis network has no Fourier input / L* layers (StyleGAN2 or fastgan "
                                  "generators are not supported)")
    embed = _child(mapping, "embed")
    if embed is not None and isinstance(embed, Persistent):
        raise OfficialImportError("conditional StyleGAN3 (FC label embedding) is not representable in this engine")
    family = "stylegan3-t" if embed is None else "stylegan-xl"
    skw = _kwargs(syn)
    layer_objs = [_child(syn, k) for k in layers]
    odd = {k: _attr(syn, k) for k, v in _EXPECTED_SYN.items() if not _same(_attr(syn, k, v), v)}
    odd.update({f"{k} ({n})": _attr(o, k) for n, o in zip(layers, layer_objs) for k, v in _EXPECTED_LAYER.items()
                if not _same(_attr(o, k, v), v) and not (k == "conv_kernel" and _attr(o, "is_torgb", False))})
    if _attr(mapping, "num_layers", 2) != 2:
        odd["mapping num_layers"] = _attr(mapping, "num_layers")
    clamps = {_attr(o, "conv_clamp", 256) for o in layer_objs}
    if len(clamps) != 1:
        odd["conv_clamp"] = sorted(map(str, clamps))
    if odd:
        raise OfficialImportError(f"hyperparameters this engine does not implement: {odd}")
    clamp = clamps.pop()
    superres = name == "SuperresGenerator"
    growth = {"head_layers": head_layers, "up_factor": up_factor}
    if superres:
        got = {k: int(_kwargs(G).get(k, d)) for k, d in (("head_layers", 7), ("up_factor", 2))}
        if any(v is not None and v != got[k] for k, v in growth.items()):
            raise OfficialImportError(f"this SuperresGenerator was built with {got}, not {growth}")
        growth = got
    growth = {"head_layers": growth["head_layers"] or 7, "up_factor": growth["up_factor"] or 2}
    c_dim = int(_attr(G, "c_dim", _attr(mapping, "c_dim", 0)))
    table = flat_state(embed).get("weight") if embed is not None else None
    try:
        cfg = GeneratorConfig(
            resolution=int(_attr(G, "img_resolution")), c_dim=c_dim,
            z_dim=int(_attr(G, "z_dim", _attr(mapping, "z_dim"))),
            w_dim=int(_attr(G, "w_dim", _attr(mapping, "w_dim"))),
            embed_dim=int(table.shape[1]) if table is not None else 320,
            embed_rows=int(table.shape[0]) if table is not None else 1000,
            channel_base=int(skw.get("channel_base", 32768)), channel_max=int(skw.get("channel_max", 512)),
            syn_layers=int(skw.get("num_layers", 14)),
            stem_res=int(skw.get("img_resolution", _attr(G, "img_resolution"))),
            **growth,
            conv_clamp=None if clamp is None else float(clamp), dtype=dtype,
            w_avg_beta=float(_attr(mapping, "w_avg_beta", 0.998)),
            mapping_lr_mult=float(_attr(_child(mapping, "fc0"), "bias_gain", _attr(mapping, "lr_multiplier", 0.01))),
        )
    except (TypeError, ValueError) as e:
        raise OfficialImportError(f"cannot infer a GeneratorConfig from the pickle's attributes: {e}") from e
    return cfg, family


def convert_generator(G, **options) -> tuple[Generator, str]:
    """An engine Generator holding the weights of an inert official generator record (options: infer_config's)."""
    cfg, family = infer_config(G, **options)
    try:
        g = Generator(cfg)
    except ValueError as e:
        raise OfficialImportError(f"the inferred architecture {cfg} is not valid here: {e}") from e
    official = flat_state(G)
    if not cfg.c_dim:
        official.pop("mapping.embed.weight", None)  # the original keeps an unused table
    syn = _state(_child(G, "synthesis"))
    names = [k for k in syn.get("layer_names") or syn.get("_modules") or () if LAYER.match(k)]
    if names != list(g.synthesis.layers):
        raise OfficialImportError(f"synthesis layers {names} differ from this engine's {list(g.synthesis.layers)} for "
                                  f"the inferred config (stem {cfg.stem_res}², {cfg.syn_layers} layers, head "
                                  f"{cfg.head_layers}, up {cfg.up_factor}): not representable")
    state = {to_engine_key(k): v for k, v in official.items()}
    ours = g.state_dict()
    missing, extra = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    if missing or extra:
        raise OfficialImportError(f"key mismatch: engine tensors missing from the pickle {missing[:8]}, pickle tensors "
                                  f"with no place in the engine {[k.replace('layers.', '') for k in extra[:8]]}")
    bad = [f"{k.replace('synthesis.layers.', 'synthesis.')}: pickle {list(v.shape)} vs engine {list(ours[k].shape)}"
           for k, v in state.items() if v.shape != ours[k].shape]
    if bad:
        raise OfficialImportError("tensor shapes differ from the inferred architecture: " + "; ".join(bad[:8]))
    for name, layer in g.synthesis.layers.items():
        pad = _attr(syn["_modules"][name], "padding")
        if pad is not None and [int(p) for p in pad] != list(layer.spec.padding):
            raise OfficialImportError(f"synthesis.{name}: padding {list(pad)} vs engine {list(layer.spec.padding)}")
        for f in ("up_filter", "down_filter"):
            key = f"synthesis.layers.{name}.{f}"
            if key in ours and not torch.allclose(state[key].float(), ours[key], rtol=1e-5, atol=1e-7):
                raise OfficialImportError(f"synthesis.{name}.{f} differs from this engine's filter design")
    g.load_state_dict({k: v.to(ours[k].dtype) for k, v in state.items()}, strict=True)
    return g.eval().requires_grad_(False), family


def _jsonable(x, depth=0):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, torch.Tensor) and x.numel() <= 16:
        return x.tolist()
    if isinstance(x, dict) and depth < 4:
        return {str(k): _jsonable(v, depth + 1) for k, v in x.items()}
    if isinstance(x, (list, tuple)) and depth < 4 and len(x) <= 64:
        return [_jsonable(v, depth + 1) for v in x]
    return f"<{_class(x)}>"


def convert(data: dict, *, source: str = "", **options) -> tuple[dict, dict]:
    """(parts, meta) of an engine checkpoint from a loaded official snapshot dict (options: infer_config's)."""
    if "G_ema" not in data:
        raise OfficialImportError(f"the network pickle has no 'G_ema' (keys: {sorted(map(str, data))})")
    g_ema, family = convert_generator(data["G_ema"], **options)
    g_src = "G"
    if data.get("G") is not None:
        g, _ = convert_generator(data["G"], **options)
        if g.cfg != g_ema.cfg:
            raise OfficialImportError(f"G and G_ema have different architectures: {g.cfg} vs {g_ema.cfg}")
    else:
        g, g_src = g_ema, "G_ema (the pickle has no G)"
    meta = {
        "format": "stylegan-xl-engine/1",
        "arch": {"G": dataclasses.asdict(g_ema.cfg), "stage": g_ema.cfg.resolution},
        "decisions": {"D1_train_input": g_ema.cfg.train_input, "D3_class_table": "imported from the official pickle",
                      "grown_from": None},
        "imported_from": {"path": source, "family": family, "class": data["G_ema"].class_name,
                          "module_src_sha256": data["G_ema"].src_sha256, "G_part_from": g_src,
                          "D": "not converted (this engine's discriminator is a different network)",
                          "training_set_kwargs": _jsonable(data.get("training_set_kwargs")),
                          "progress": _jsonable(data.get("progress"))},
    }
    return {"G": g.state_dict(), "G_ema": g_ema.state_dict()}, meta


def import_official(pkl: str | Path, out: str | Path, *, inert: tuple[str, ...] = (), **options) -> Path:
    """Convert `pkl` (official network pickle) into the engine checkpoint `out` (options: infer_config's)."""
    parts, meta = convert(load_official(pkl, inert=inert), source=str(pkl), **options)
    return checkpoint.save(out, parts, meta)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pkl", required=True, help="official network pickle (StyleGAN-XL or StyleGAN3-T)")
    p.add_argument("--out", required=True, help="output checkpoint (.safetensors)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="synthesis compute dtype of the converted generator (weights stay fp32)")
    p.add_argument("--head-layers", type=int, help="stem only: conv layers per superres head when growing (7)")
    p.add_argument("--up-factor", type=int, help="stem only: resolution factor per superres stage (2)")
    p.add_argument("--inert", action="append", default=[], metavar="PREFIX",
                   help="extra module prefix whose globals are kept as inert records (never executed)")
    args = p.parse_args(argv)
    try:
        path = import_official(args.pkl, args.out, dtype=args.dtype, inert=tuple(args.inert),
                               head_layers=args.head_layers, up_factor=args.up_factor)
    except (OfficialImportError, pickle.UnpicklingError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    _, meta = checkpoint.load(path)
    g = meta["arch"]["G"]
    print(f"wrote {path}: {meta['imported_from']['family']} {meta['imported_from']['class']}, {g['resolution']}², "
          f"c_dim {g['c_dim']}, stem {g['stem_res']}² x {g['syn_layers']} layers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
