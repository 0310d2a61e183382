"""StyleGAN3-T synthesis network (SPEC 2.4-2.6) built from model/specs.py layer records.

Legend: ws_NLW latents per layer, x_NCHW feature maps, styles_NI per-sample input scales.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from kernels import filtered_lrelu, modulated_conv2d
from model.layers import FullyConnected
from model.specs import LayerSpec


class SynthesisInput(nn.Module):
    """Fourier features with a per-sample rotation/translation from ws[:, 0] (SPEC 2.4)."""

    def __init__(self, *, w_dim: int, channels: int, size: int, sampling_rate: float, bandwidth: float):
        super().__init__()
        self.channels, self.size, self.sampling_rate, self.bandwidth = channels, size, sampling_rate, bandwidth
        freqs = torch.randn(channels, 2)
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs = freqs / (radii * radii.square().exp().pow(0.25)) * bandwidth
        self.affine = FullyConnected(w_dim, 4, weight_init=0.0, bias_init=np.array([1.0, 0.0, 0.0, 0.0]))
        self.weight = nn.Parameter(torch.randn(channels, channels))
        self.register_buffer("transform", torch.eye(3))  # user transform: translate/rotate (SPEC 8.1)
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", torch.rand(channels) - 0.5)

    def forward(self, w_NW: torch.Tensor) -> torch.Tensor:
        n = w_NW.shape[0]
        t = self.affine(w_NW)
        t = t / t[:, :2].norm(dim=1, keepdim=True)  # (cos, sin, tx, ty) of the inverse transform
        one, zero = torch.ones_like(t[:, 0]), torch.zeros_like(t[:, 0])
        m_r = torch.stack([t[:, 0], -t[:, 1], zero, t[:, 1], t[:, 0], zero, zero, zero, one], 1).view(n, 3, 3)
        m_t = torch.stack([one, zero, -t[:, 2], zero, one, -t[:, 3], zero, zero, one], 1).view(n, 3, 3)
        transforms = m_r @ m_t @ self.transform.unsqueeze(0)
        phases = self.phases.unsqueeze(0) + (self.freqs.unsqueeze(0) @ transforms[:, :2, 2:]).squeeze(2)
        freqs = self.freqs.unsqueeze(0) @ transforms[:, :2, :2]  # [N, C, 2]
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)
        half = 0.5 * self.size / self.sampling_rate
        theta = torch.tensor([[half, 0.0, 0.0], [0.0, half, 0.0]], device=w_NW.device)
        grid = torch.nn.functional.affine_grid(theta.unsqueeze(0), [1, 1, self.size, self.size], align_corners=False)
        x = (grid.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)).squeeze(3)  # [N, H, W, C]
        x = torch.sin((x + phases.unsqueeze(1).unsqueeze(2)) * (2 * math.pi)) * amplitudes.unsqueeze(1).unsqueeze(2)
        x = x @ (self.weight / math.sqrt(self.channels)).t()
        return x.permute(0, 3, 1, 2)  # [N, C, H, W]


class SynthesisLayer(nn.Module):
    """Modulated conv + filtered leaky ReLU (SPEC 2.5); ToRGB when spec.torgb.

    The demodulation coefficients are folded into filtered_lrelu's load (in_scale): the fused
    Triton kernel applies them while reading the conv output.
    """

    def __init__(self, spec: LayerSpec, *, w_dim: int, conv_clamp: float | None, dtype: torch.dtype,
                 impl: str | None = None):
        super().__init__()
        self.spec, self.dtype, self.impl, self.conv_clamp = spec, dtype, impl, conv_clamp
        i, o, k = spec.inp.channels, spec.out.channels, spec.kernel_size
        self.affine = FullyConnected(w_dim, i, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(o, i, k, k))
        self.bias = nn.Parameter(torch.zeros(o))
        self.register_buffer("magnitude_ema", torch.ones([]))  # never updated (SPEC 2.11): input_gain 1
        fu, fd = spec.filters()
        self.register_buffer("up_filter", None if fu is None else torch.from_numpy(fu))
        self.register_buffer("down_filter", None if fd is None else torch.from_numpy(fd))

    def forward(self, x_NCHW: torch.Tensor, w_NW: torch.Tensor) -> torch.Tensor:
        s = self.spec
        styles = self.affine(w_NW)
        if s.torgb:
            styles = styles * (1 / math.sqrt(s.inp.channels * s.kernel_size**2))
        x, d = modulated_conv2d(x_NCHW.to(self.dtype), self.weight, styles, demodulate=not s.torgb,
                                padding=s.kernel_size - 1, input_gain=self.magnitude_ema.rsqrt(), impl=self.impl,
                                return_dcoefs=True)
        return filtered_lrelu(x, self.up_filter, self.down_filter, self.bias.to(self.dtype), up=s.up, down=s.down,
                              padding=s.padding, gain=1.0 if s.torgb else math.sqrt(2), slope=1.0 if s.torgb else 0.2,
                              clamp=self.conv_clamp, in_scale=d, impl=self.impl)

    def extra_repr(self) -> str:
        s = self.spec
        return (f"{s.inp.channels}->{s.out.channels}, {s.inp.size}->{s.out.size}, sr {s.inp.sr:g}->{s.out.sr:g}, "
                f"up {s.up} down {s.down}, critical={s.critical}")


class SynthesisNetwork(nn.Module):
    """Fourier input, the synthesis layers in order, output x 0.25 in float32."""

    def __init__(self, specs: list[LayerSpec], *, w_dim: int, conv_clamp: float | None, dtype: torch.dtype,
                 impl: str | None = None):
        super().__init__()
        first = specs[0].inp
        self.input = SynthesisInput(w_dim=w_dim, channels=first.channels, size=first.size, sampling_rate=first.sr,
                                    bandwidth=first.cutoff)
        self.layers = nn.ModuleDict({s.name: SynthesisLayer(s, w_dim=w_dim, conv_clamp=conv_clamp, dtype=dtype, impl=impl)
                                     for s in specs})
        self.num_ws = len(specs) + 1

    def forward(self, ws_NLW: torch.Tensor, stop_after: str | None = None) -> torch.Tensor:
        """ws [N, num_ws, w_dim] -> image [N, 3, res, res] float32 (or the activation after
        layer `stop_after`, for tests of growing)."""
        if ws_NLW.ndim != 3 or ws_NLW.shape[1] != self.num_ws:
            raise ValueError(f"ws must have shape [N, {self.num_ws}, w_dim], got {tuple(ws_NLW.shape)}")
        ws = ws_NLW.float().unbind(1)
        x = self.input(ws[0])
        for (name, layer), w in zip(self.layers.items(), ws[1:]):
            x = layer(x, w)
            if name == stop_after:
                return x.float()
        return (x * 0.25).float()
