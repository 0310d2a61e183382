"""Test-only writer of network pickles in the official format, from one of this engine's generators.

It reproduces what the original training loop writes (torch_utils.persistence objects: REDUCE of
torch_utils.persistence._reconstruct_persistent_obj with meta {type, version, module_src,
class_name, state}, state = the module's __dict__ with _parameters/_buffers/_modules OrderedDicts,
_init_kwargs and the attributes the original sets, numpy scalars and arrays included) without any
original code: stand-in modules are put into sys.modules only while pickling, then removed.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import types

import numpy as np
import torch

from model.generator import Generator

PERSISTENCE_VERSION = 6


def _reconstruct_persistent_obj(meta):  # pickled by reference only; never called
    raise AssertionError("the importer must not call the original reconstructor")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"


class EasyDict(dict):
    pass


EasyDict.__module__ = "dnnlib.util"


@contextlib.contextmanager
def original_modules():
    """Stand-ins for torch_utils.persistence and dnnlib.util, present only while pickling."""
    names = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")
    assert not any(n in sys.modules for n in names)
    mods = {n: types.ModuleType(n) for n in names}
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    mods["dnnlib.util"].EasyDict = EasyDict
    sys.modules.update(mods)
    try:
        yield
    finally:
        for n in names:
            del sys.modules[n]


class Persistent(torch.nn.Module):
    """Pickles exactly like a torch_utils.persistence class instance."""

    def __init__(self, class_name: str, module_src: str, init_kwargs: dict, **attrs):
        super().__init__()
        self.__dict__["_meta"] = (class_name, module_src)
        self._init_args = ()
        self._init_kwargs = init_kwargs
        for k, v in attrs.items():
            setattr(self, k, v)

    def __reduce__(self):
        class_name, src = self.__dict__["_meta"]
        state = {k: v for k, v in self.__dict__.items() if k != "_meta"}
        meta = dict(type="class", version=PERSISTENCE_VERSION, module_src=src, class_name=class_name, state=state)
        return (_reconstruct_persistent_obj, (meta,), None)


def _p(t: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(t.detach().clone())


def _fc(src: str, sd: dict, prefix: str, in_f: int, out_f: int, activation="linear", lr=1.0, **kw) -> Persistent:
    m = Persistent("FullyConnectedLayer", src, dict(in_features=in_f, out_features=out_f, activation=activation,
                                                    lr_multiplier=lr, **kw),
                   in_features=in_f, out_features=out_f, activation=activation,
                   weight_gain=np.float64(lr / np.sqrt(in_f)), bias_gain=lr)
    m.weight, m.bias = _p(sd[prefix + "weight"]), _p(sd[prefix + "bias"])
    return m


def official_generator(g: Generator, *, flavor: str = "xl", module_src: str = "",
                       extra_table: bool = True) -> Persistent:
    """The original's G for this engine's generator g (flavor 'xl' = StyleGAN-XL, 'sg3' = StyleGAN3-T)."""
    from engine.import_official import to_official_state

    cfg, sd, src = g.cfg, to_official_state(g), module_src
    superres = cfg.resolution != cfg.stem_res
    lr = cfg.mapping_lr_mult
    syn_kwargs = dict(channel_base=cfg.channel_base, channel_max=cfg.channel_max, num_layers=cfg.syn_layers,
                      magnitude_ema_beta=0.999, conv_clamp=cfg.conv_clamp)
    mapping_kwargs = EasyDict(num_layers=2, rand_embedding=False) if flavor == "xl" else EasyDict(num_layers=2)

    # Mapping.
    mapping = Persistent("MappingNetwork", src, dict(z_dim=cfg.z_dim, c_dim=cfg.c_dim, w_dim=cfg.w_dim,
                                                     num_ws=g.mapping.num_ws, **mapping_kwargs),
                         z_dim=cfg.z_dim, c_dim=cfg.c_dim, w_dim=cfg.w_dim, num_ws=g.mapping.num_ws, num_layers=2,
                         w_avg_beta=cfg.w_avg_beta)
    if flavor == "xl":
        table = sd["mapping.embed.weight"] if cfg.c_dim else torch.randn(cfg.embed_rows, cfg.embed_dim)
        if cfg.c_dim or extra_table:
            mapping.embed = torch.nn.Embedding(*table.shape)  # a plain torch module inside the persistent tree
            mapping.embed.weight = _p(table)
        proj = _fc(src, sd, "mapping.embed_proj.", cfg.embed_dim, cfg.z_dim, "lrelu") if cfg.c_dim else None
        mapping.embed_proj = proj  # None for unconditional models, as in the original
    for i in range(2):
        in_f = cfg.z_dim * (2 if cfg.c_dim else 1) if i == 0 else cfg.w_dim
        setattr(mapping, f"fc{i}", _fc(src, sd, f"mapping.fc{i}.", in_f, cfg.w_dim, "lrelu", lr))
    mapping.register_buffer("w_avg", sd["mapping.w_avg"].clone())

    # Synthesis.
    first = g.specs[0].inp
    inp = Persistent("SynthesisInput", src, dict(w_dim=cfg.w_dim, channels=first.channels, size=first.size,
                                                 sampling_rate=np.float64(first.sr),
                                                 bandwidth=np.float64(first.cutoff)),
                     w_dim=cfg.w_dim, channels=first.channels, size=np.broadcast_to(np.asarray(first.size), [2]),
                     sampling_rate=np.float64(first.sr), bandwidth=np.float64(first.cutoff))
    inp.weight = _p(sd["synthesis.input.weight"])
    inp.affine = _fc(src, sd, "synthesis.input.affine.", cfg.w_dim, 4, weight_init=0, bias_init=[1, 0, 0, 0])
    for b in ("transform", "freqs", "phases"):
        inp.register_buffer(b, sd[f"synthesis.input.{b}"].clone())
    attrs = dict(w_dim=cfg.w_dim, num_ws=g.synthesis.num_ws, img_resolution=cfg.resolution, img_channels=3,
                 num_layers=len(g.specs) - 1, num_critical=2, margin_size=10, output_scale=0.25, num_fp16_res=4)
    if flavor == "xl":
        attrs.update(channel_base=cfg.channel_base, channel_max=cfg.channel_max, last_stopband_rel=2**0.3,
                     first_stopband=2**2.1, first_cutoff=2, sampling_rates=np.array([s.out.sr for s in g.specs]))
    syn = Persistent("SynthesisNetwork", src, dict(w_dim=cfg.w_dim, img_resolution=cfg.stem_res, img_channels=3,
                                                   **syn_kwargs), **attrs)
    syn.input = inp
    syn.layer_names = [s.name for s in g.specs]
    for s in g.specs:
        pre = f"synthesis.{s.name}."
        lay = Persistent(
            "SynthesisLayer", src, dict(w_dim=cfg.w_dim, is_torgb=s.torgb, in_channels=s.inp.channels,
                                        out_channels=s.out.channels, in_size=s.inp.size, out_size=s.out.size,
                                        in_cutoff=np.float64(s.inp.cutoff), out_cutoff=np.float64(s.out.cutoff)),
            w_dim=cfg.w_dim, is_torgb=s.torgb, is_critically_sampled=s.critical, use_fp16=True,
            in_channels=s.inp.channels, out_channels=s.out.channels,
            in_size=np.broadcast_to(np.asarray(s.inp.size), [2]), out_size=np.broadcast_to(np.asarray(s.out.size), [2]),
            in_sampling_rate=int(s.inp.sr), out_sampling_rate=int(s.out.sr), in_cutoff=np.float64(s.inp.cutoff),
            out_cutoff=np.float64(s.out.cutoff), conv_kernel=s.kernel_size, conv_clamp=cfg.conv_clamp,
            magnitude_ema_beta=0.999, filter_size=6, use_radial_filters=False, lrelu_upsampling=2,
            up_factor=s.up, down_factor=s.down, up_taps=s.up_taps, down_taps=s.down_taps, padding=list(s.padding))
        lay.affine = _fc(src, sd, pre + "affine.", cfg.w_dim, s.inp.channels, bias_init=1)
        lay.weight, lay.bias = _p(sd[pre + "weight"]), _p(sd[pre + "bias"])
        for b in ("magnitude_ema", "up_filter", "down_filter"):
            lay.register_buffer(b, sd[pre + b].clone() if pre + b in sd else None)
        setattr(syn, s.name, lay)

    dims = dict(z_dim=cfg.z_dim, c_dim=cfg.c_dim, w_dim=cfg.w_dim, img_resolution=cfg.resolution, img_channels=3)
    if superres:
        G = Persistent("SuperresGenerator", src, dict(img_resolution=cfg.resolution, path_stem="stem.pkl",
                                                      head_layers=cfg.head_layers, up_factor=cfg.up_factor,
                                                      c_dim=cfg.c_dim, img_channels=3),
                       path_stem="stem.pkl", up_factor=cfg.up_factor, num_ws=g.synthesis.num_ws, **dims)
        G.mapping, G.synthesis = mapping, syn
        G.head_layer_names = [s.name for s in g.specs[-cfg.head_layers - 1:]]
    else:
        G = Persistent("Generator", src, dict(dims, mapping_kwargs=mapping_kwargs, **syn_kwargs),
                       num_ws=g.synthesis.num_ws, **dims)
        G.synthesis, G.mapping = syn, mapping
    return G


def small_discriminator() -> torch.nn.Module:
    """Plain torch modules with a spectral-norm hook object, standing in for the projected D."""
    d = torch.nn.Sequential(torch.nn.utils.spectral_norm(torch.nn.Conv2d(3, 4, 4)), torch.nn.BatchNorm2d(4))
    return d


def snapshot(g: Generator, *, flavor: str = "xl", module_src: str = "", g_ema: Generator | None = None, **kw) -> dict:
    """The dict the original training loop pickles: G, D, G_ema, augment_pipe, training_set_kwargs, progress."""
    return dict(G=official_generator(g, flavor=flavor, module_src=module_src, **kw), D=small_discriminator(),
                G_ema=official_generator(g_ema or g, flavor=flavor, module_src=module_src, **kw), augment_pipe=None,
                training_set_kwargs=EasyDict(class_name="training.dataset.ImageFolderDataset", path="data.zip",
                                             use_labels=bool(g.cfg.c_dim), max_size=100, xflip=False,
                                             resolution=g.cfg.resolution, random_seed=0),
                progress=dict(cur_nimg=torch.LongTensor([4000]), best_fid=12.5))


def dump(obj, path, *, protocol: int = pickle.DEFAULT_PROTOCOL, zip_form: bool = False) -> None:
    with original_modules():
        if zip_form:
            torch.save(obj, path)
        else:
            with open(path, "wb") as f:
                pickle.dump(obj, f, protocol=protocol)
