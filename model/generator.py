"""The StyleGAN-XL generator: mapping + synthesis, built for any stage, grown stage by stage.

Legend: z_NZ latents, c one-hot [N, c_dim] or labels [N], ws_NLW latents per layer.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from model.config import PRESETS, GeneratorConfig
from model.mapping import MappingNetwork
from model.specs import generator_specs
from model.synthesis import SynthesisNetwork


class Generator(nn.Module):
    def __init__(self, cfg: GeneratorConfig, *, class_embeddings: torch.Tensor | None = None, impl: str | None = None):
        """Build the complete generator of stage cfg.resolution with random weights.

        class_embeddings: optional [rows, embed_dim] initial class table (per-class mean lite0
        features, computed once per dataset by the engine); random N(0, 1) otherwise.
        impl: kernel implementation for every synthesis layer (None = best for the device).
        """
        super().__init__()
        self.cfg = cfg
        self.specs = generator_specs(cfg.resolution, syn_layers=cfg.syn_layers, head_layers=cfg.head_layers,
                                     channel_base=cfg.channel_base, channel_max=cfg.channel_max,
                                     stem_res=cfg.stem_res, up_factor=cfg.up_factor)
        self.synthesis = SynthesisNetwork(self.specs, w_dim=cfg.w_dim, conv_clamp=cfg.conv_clamp,
                                          dtype=cfg.torch_dtype, impl=impl)
        self.mapping = MappingNetwork(z_dim=cfg.z_dim, c_dim=cfg.c_dim, w_dim=cfg.w_dim, num_ws=self.synthesis.num_ws,
                                      embed_dim=cfg.embed_dim, embed_rows=cfg.embed_rows,
                                      lr_multiplier=cfg.mapping_lr_mult, w_avg_beta=cfg.w_avg_beta,
                                      class_embeddings=class_embeddings)

    def forward(self, z_NZ: torch.Tensor, c=None, *, psi=1.0, truncation_cutoff: int | None = None,
                update_w_avg: bool = False) -> torch.Tensor:
        """z [N, z_dim], c (one-hot or labels) -> images [N, 3, res, res] float32 in about [-1, 1]."""
        ws = self.mapping(z_NZ, c, psi=psi, truncation_cutoff=truncation_cutoff, update_w_avg=update_w_avg)
        return self.synthesis(ws)

    def layer_specs(self) -> list[dict]:
        """One record per synthesis layer, as `engine/train.py --dry-run` prints them."""
        rows = []
        for s in self.specs:
            rows.append(dict(
                name=s.name, in_channels=s.inp.channels, out_channels=s.out.channels, in_size=s.inp.size,
                out_size=s.out.size, in_sr=s.inp.sr, out_sr=s.out.sr, cutoff=s.out.cutoff, half_width=s.out.half_width,
                up=s.up, down=s.down, up_taps=s.up_taps, down_taps=s.down_taps, padding=list(s.padding),
                critically_sampled=s.critical, torgb=s.torgb,
            ))
        return rows

    def frozen_prefix(self) -> list[str]:
        """Names of the synthesis layers carried over from the previous stage (empty for the stem)."""
        if self.cfg.resolution == self.cfg.stem_res:
            return []
        return [s.name for s in self.specs[: len(self.specs) - self.cfg.head_layers - 1]]


def build_generator(preset: str, resolution: int, c_dim: int = 0, *, class_embeddings: torch.Tensor | None = None,
                    impl: str | None = None, **overrides) -> Generator:
    """The complete generator of any stage, random weights. preset: 'paper', 'light' or 'tiny'."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    cfg = dataclasses.replace(PRESETS[preset](resolution, c_dim), **overrides)
    return Generator(cfg, class_embeddings=class_embeddings, impl=impl)


def grow(prev: Generator, *, impl: str | None = None, **overrides) -> Generator:
    """The next stage (resolution x up_factor) grown from `prev` (SPEC 2.10).

    The critically sampled layers and ToRGB of `prev` are dropped (they are simply not part of
    the new layer list), the kept layers, the mapping and the Fourier input are copied, and a
    new head is appended with random weights. Mapping and kept layers are frozen; the Fourier
    input keeps training iff cfg.train_input (decision D1). w_avg carries over.
    """
    cfg = dataclasses.replace(prev.cfg, resolution=prev.cfg.resolution * prev.cfg.up_factor, **overrides)
    new = Generator(cfg, impl=impl)
    kept = new.frozen_prefix()
    with torch.no_grad():
        new.mapping.load_state_dict(prev.mapping.state_dict())
        new.synthesis.input.load_state_dict(prev.synthesis.input.state_dict())
        for name in kept:
            new.synthesis.layers[name].load_state_dict(prev.synthesis.layers[name].state_dict())
    freeze_carried(new)
    return new


def freeze_carried(g: Generator) -> None:
    """requires_grad False on what a superres stage does not train (mapping, kept layers, and the
    Fourier input unless cfg.train_input)."""
    if g.cfg.resolution == g.cfg.stem_res:
        return
    g.mapping.requires_grad_(False)
    for name in g.frozen_prefix():
        g.synthesis.layers[name].requires_grad_(False)
    g.synthesis.input.requires_grad_(g.cfg.train_input)
