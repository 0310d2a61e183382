"""Convert an official StyleGAN-XL (or unconditional StyleGAN3-T) network pickle into a checkpoint
of this engine, without running any code from the pickle.

    python -m engine.import_official --pkl imagenet16.pkl --out imagenet16.safetensors

The output is one safetensors file laid out like a training checkpoint's generator parts ("G",
"G_ema") with meta["arch"]["G"] = the GeneratorConfig, so `engine.export.load_generator` (and
`--stem` / `--resume`) can open it. The discriminator is not converted (a different network here).

Reading the pickle (engine/safe_pickle.py). The original training loops pickle (or dill) a dict {'G', 'D', 'G_ema',
'augment_pipe', 'training_set_kwargs', ...}. Every network class is a torch_utils.persistence class:
it pickles as REDUCE(torch_utils.persistence._reconstruct_persistent_obj, (meta,)) with meta =
{type, version, module_src, class_name, state}, state being the module's __dict__ (_parameters,
_buffers, _modules, _init_kwargs, plain attributes). Loading it normally execs module_src. Here the
restricted Unpickler of engine/safe_pickle.py resolves every global to inert records or safe
re-implementations and refuses the rest; module_src is never executed.

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

import dataclasses
import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine import checkpoint, errors  # noqa: E402
from engine.safe_pickle import OfficialImportError, Opaque, Persistent, load_official  # noqa: E402
from model.config import GeneratorConfig  # noqa: E402
from model.generator import Generator  # noqa: E402

LAYER = re.compile(r"L\d+_\d+_\d+$")


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


@errors.cli
def main(argv=None) -> int:
    """The command line; expected errors (a missing, foreign or unconvertible pickle, bad arguments):
    one `error:` line, exit status 2 (engine/errors.py)."""
    p = errors.ArgumentParser(prog="python -m engine.import_official", description=__doc__.split("\n\n")[0])
    p.add_argument("--pkl", required=True, help="official network pickle (StyleGAN-XL or StyleGAN3-T)")
    p.add_argument("--out", required=True, help="output checkpoint (.safetensors)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="synthesis compute dtype of the converted generator (weights stay fp32)")
    p.add_argument("--head-layers", type=int, help="stem only: conv layers per superres head when growing (7)")
    p.add_argument("--up-factor", type=int, help="stem only: resolution factor per superres stage (2)")
    p.add_argument("--inert", action="append", default=[], metavar="PREFIX",
                   help="extra module prefix whose globals are kept as inert records (never executed)")
    args = p.parse_args(argv)
    path = import_official(args.pkl, args.out, dtype=args.dtype, inert=tuple(args.inert),
                           head_layers=args.head_layers, up_factor=args.up_factor)
    _, meta = checkpoint.load(path)
    g = meta["arch"]["G"]
    print(f"wrote {path}: {meta['imported_from']['family']} {meta['imported_from']['class']}, {g['resolution']}², "
          f"c_dim {g['c_dim']}, stem {g['stem_res']}² x {g['syn_layers']} layers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
