"""Projected discriminator: frozen feature networks + trainable multi-scale heads (SPEC 4).

Per backbone (default: DeiT-B, then lite0): DiffAugment (drawn afresh) -> feature network
(normalize, resize, frozen trunk, frozen random projections; model/feature_networks.py) -> four
heads, one per projected level. The output concatenates every head's logits per sample:
[N, total] with total = sum over backbones of `num_logits(resolution)`, ordered backbone by
backbone, head 0..3 within each, row-major positions within each head.

Heads: a chain of DownBlocks (spectral-norm conv 4x4/s2/p1 + BatchNorm2d + LeakyReLU(0.2)) from
the level's nominal start size (128/64/32/16, as for a 256 input) down to 8, then either a 4x4
output conv to one logit map (unconditional) or the class projection (conditional): a 4x4 conv to
64 channels, dotted per position with cmap = FC(E_head[argmax c]) / sqrt(64), where E_head is the
head's own trainable 1000x320 class table.

Written to be traced: static shapes, no data-dependent branches, no host syncs. Spectral norm is
torch's parametrization `torch.nn.utils.parametrizations.spectral_norm` (one power iteration per
training-mode forward, as the original's hook-based version). Unlike the hook-based version it
traces under torch.compile(fullgraph=True) and deep-copies after a forward; its state keys are
`<conv>.parametrizations.weight.original` / `.0._u` / `.0._v` where the original implementation
has `weight_orig` / `weight_u` / `weight_v` (a rename when converting official checkpoints).

Legend: img_NCHW D input in [-1, 1]; c_NC one-hot labels; f_NCHW feature maps; x_NCHW head
activations; out_NKHW class-projection outputs (K = 64 cmap channels); cmap_NK class maps;
logits_NL per-sample logits (L = logits per sample).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from model.diffaug import diff_augment
from model.feature_networks import DEIT_B, LITE0, VIT_SIZE, FeatureNetwork
from model.layers import FullyConnected

CHANNELS = {4: 512, 8: 512, 16: 256, 32: 128, 64: 64, 128: 64, 256: 32, 512: 16, 1024: 8}
NOMINAL_STARTS = (128, 64, 32, 16)  # head input sizes for a 256 input; fix the DownBlock counts
END_SIZE = 8
CMAP_DIM = 64
EMBED_DIM = 320
EMBED_CLASSES = 1000  # rows of each head's class table (the ImageNet-derived table of SPEC 4.6)

Weights = str | os.PathLike


class DownBlock(nn.Sequential):
    """spectral_norm(Conv2d 4x4, stride 2, pad 1, bias) -> BatchNorm2d -> LeakyReLU(0.2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            spectral_norm(nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1)),
            nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.1),
            nn.LeakyReLU(0.2),
        )


class Head(nn.Module):
    """One trainable head on one projected feature level (SPEC 4.6).

    Args:
        in_channels: channels of the projected level (64/64/128/256).
        start_size: nominal input size (128/64/32/16); sets the DownBlock count down to 8.
        c_dim: label width; 0 = unconditional.
        embed_classes: rows of the class table (>= c_dim).
        class_table: optional [embed_classes, 320] initial class table (copied); None = N(0, 1).
        width: multiplier of the DownBlocks' output channels (1 = SPEC 4.6's; the `tiny` preset's
            CPU-sized D uses less, model/config.py D_HEAD_WIDTH).
    """

    def __init__(self, in_channels: int, start_size: int, c_dim: int = 0, *,
                 embed_classes: int = EMBED_CLASSES, class_table: torch.Tensor | None = None, width: float = 1.0):
        super().__init__()
        if not 0 < width <= 1:
            raise ValueError(f"head width must be in (0, 1], got {width}")
        channels = {size: max(8, round(ch * width)) for size, ch in CHANNELS.items()}
        channels[start_size] = in_channels
        blocks, size = [], start_size
        while size > END_SIZE:
            blocks.append(DownBlock(channels[size], channels[size // 2]))
            size //= 2
        self.main = nn.Sequential(*blocks)
        self.c_dim = c_dim
        out_channels = CMAP_DIM if c_dim > 0 else 1
        self.out = spectral_norm(nn.Conv2d(channels[END_SIZE], out_channels, 4, bias=False))
        if c_dim > 0:
            self.embed = nn.Embedding(embed_classes, EMBED_DIM)
            if class_table is not None:
                with torch.no_grad():
                    self.embed.weight.copy_(class_table)
            self.embed_proj = FullyConnected(EMBED_DIM, CMAP_DIM, activation="lrelu")

    def forward(self, f_NCHW: torch.Tensor, c_NC: torch.Tensor | None) -> torch.Tensor:
        """Projected level [N, C, S, S] (+ one-hot labels) -> logits [N, h * w]."""
        out_NKHW = self.out(self.main(f_NCHW))
        if self.c_dim == 0:
            return out_NKHW.flatten(1)
        cmap_NK = self.embed_proj(self.embed(c_NC.argmax(dim=1)))
        logits_NHW = (out_NKHW * cmap_NK[:, :, None, None]).sum(dim=1) * (1 / math.sqrt(CMAP_DIM))
        return logits_NHW.flatten(1)


class MultiScaleHeads(nn.Module):
    """The four heads of one backbone, concatenated per sample."""

    def __init__(self, in_channels: Sequence[int], c_dim: int = 0, **head_kwargs):
        super().__init__()
        self.heads = nn.ModuleList(
            Head(ci, start, c_dim, **head_kwargs) for ci, start in zip(in_channels, NOMINAL_STARTS))

    def forward(self, f_list: list[torch.Tensor], c_NC: torch.Tensor | None) -> torch.Tensor:
        """Four projected maps -> logits [N, sum of the heads' logit counts]."""
        return torch.cat([head(f, c_NC) for head, f in zip(self.heads, f_list)], dim=1)


class ProjectedDiscriminator(nn.Module):
    """Projected GAN discriminator of StyleGAN-XL (SPEC 4.1-4.7).

    Args:
        backbones: feature networks in order; default DeiT-B then lite0 (SPEC 4.1).
        c_dim: label width; 0 = unconditional.
        weights: "pretrained", "random" or a local weights-file path, for every backbone, or a
            mapping backbone name -> one of these.
        augment: apply DiffAugment (drawn afresh per backbone) before each feature network.
        embed_classes: rows of each conditional head's class table (default 1000; >= c_dim).
        class_table: optional [embed_classes, 320] initial table copied into every head (the
            class table G's mapping starts from, Decision D3); None = N(0, 1) init.
        input_size: the smallest side lite0 sees (SPEC 4.2: 224; smaller inputs are resized up to
            it). The `tiny` preset's CPU-sized D uses 128 (model/config.py D_INPUT_SIZE).
        head_width: multiplier of the heads' DownBlock channels (1 = SPEC 4.6; model/config.py
            D_HEAD_WIDTH).

    Feature networks and projections are frozen and stay in eval mode (`train(mode)` switches the
    heads only: FeatureNetwork.train ignores the mode); `requires_grad_()` only toggles the heads.
    Gradients reach the input image.
    """

    def __init__(self, backbones: Sequence[str] = (DEIT_B, LITE0), c_dim: int = 0,
                 weights: Weights | Mapping[str, Weights] = "pretrained", *, augment: bool = True,
                 embed_classes: int = EMBED_CLASSES, class_table: torch.Tensor | None = None,
                 input_size: int = VIT_SIZE, head_width: float = 1.0):
        super().__init__()
        backbones = tuple(backbones)
        if not backbones or len(set(backbones)) != len(backbones):
            raise ValueError(f"backbones must be a non-empty sequence of distinct names, got {backbones!r}")
        if not isinstance(c_dim, int) or c_dim < 0:
            raise ValueError(f"c_dim must be a non-negative int, got {c_dim!r}")
        if c_dim > embed_classes:
            raise ValueError(f"c_dim ({c_dim}) exceeds the class table's rows (embed_classes={embed_classes})")
        if class_table is not None and tuple(class_table.shape) != (embed_classes, EMBED_DIM):
            raise ValueError(f"class_table must have shape ({embed_classes}, {EMBED_DIM}), "
                             f"got {tuple(class_table.shape)}")
        if isinstance(weights, Mapping):
            missing = [b for b in backbones if b not in weights]
            if missing:
                raise ValueError(f"weights mapping has no entry for backbones {missing}")
        self.backbones, self.c_dim, self.augment = backbones, c_dim, augment
        self.feature_networks = nn.ModuleDict()
        self.discriminators = nn.ModuleDict()
        for name in backbones:
            w = weights[name] if isinstance(weights, Mapping) else weights
            feat = FeatureNetwork(name, w, min_size=VIT_SIZE if name != LITE0 else input_size)
            self.feature_networks[name] = feat
            self.discriminators[name] = MultiScaleHeads(
                feat.channels, c_dim, embed_classes=embed_classes, class_table=class_table, width=head_width)

    def requires_grad_(self, requires_grad: bool = True) -> ProjectedDiscriminator:
        """Toggle the heads only; the feature networks stay frozen."""
        self.discriminators.requires_grad_(requires_grad)
        return self

    def num_logits(self, resolution: int) -> tuple[int, ...]:
        """Logits per sample of each backbone for a square input of side `resolution` (SPEC 4.7).

        Use with torch.split(logits, D.num_logits(res), dim=1) for per-backbone losses.
        """
        counts = []
        for name, feat in self.feature_networks.items():
            total = 0
            for size, start in zip(feat.level_sizes(resolution), NOMINAL_STARTS):
                s = size
                while start > END_SIZE:  # each DownBlock halves (floor); the output conv is 4x4 valid
                    s, start = s // 2, start // 2
                total += (s - 3) ** 2
            counts.append(total)
        return tuple(counts)

    def _check_inputs(self, img_NCHW: torch.Tensor, c_NC: torch.Tensor | None) -> None:
        if img_NCHW.ndim != 4 or img_NCHW.shape[1] != 3:
            raise ValueError(f"img must be [N, 3, H, W] RGB in [-1, 1], got shape {tuple(img_NCHW.shape)}")
        if img_NCHW.shape[2] != img_NCHW.shape[3]:
            raise ValueError(f"img must be square, got {img_NCHW.shape[2]}x{img_NCHW.shape[3]}")
        if not img_NCHW.is_floating_point():
            raise ValueError(f"img must be a float tensor in [-1, 1], got dtype {img_NCHW.dtype}")
        if self.c_dim > 0:
            if c_NC is None:
                raise ValueError(f"conditional discriminator (c_dim={self.c_dim}) needs labels c")
            if c_NC.ndim != 2 or c_NC.shape[0] != img_NCHW.shape[0] or c_NC.shape[1] != self.c_dim:
                raise ValueError(f"c must be one-hot [N={img_NCHW.shape[0]}, c_dim={self.c_dim}], "
                                 f"got shape {tuple(c_NC.shape)}")
        elif c_NC is not None and (c_NC.ndim != 2 or c_NC.shape[1] != 0):
            raise ValueError(f"unconditional discriminator: c must be None or [N, 0], got shape {tuple(c_NC.shape)}")

    def forward(self, img_NCHW: torch.Tensor, c_NC: torch.Tensor | None = None, *,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-sample logits of every head of every backbone.

        Args:
            img_NCHW: [N, 3, H, W] images in [-1, 1] (already blurred, SPEC 5.3).
            c_NC: one-hot labels [N, c_dim] for a conditional D; None (or [N, 0]) otherwise.
            generator: optional torch.Generator for reproducible DiffAugment draws (eager only).

        Returns:
            logits [N, sum(self.num_logits(H))], backbones in order, heads 0..3 within each.
        """
        self._check_inputs(img_NCHW, c_NC)
        if self.c_dim == 0:
            c_NC = None
        logits = []
        for name, feat in self.feature_networks.items():
            x_NCHW = diff_augment(img_NCHW, generator=generator) if self.augment else img_NCHW
            logits.append(self.discriminators[name](feat(x_NCHW), c_NC))
        return torch.cat(logits, dim=1)
