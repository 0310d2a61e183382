"""Synthesis layer specs of StyleGAN-XL from the spec's formulas (SPEC 2.5, 2.7, 2.8, 2.10).

One function computes every layer of the generator at any stage: the 16² stem, then for each
stage the kept (non-critically-sampled) layers plus a superres head. The benchmarks use these
records for real layer shapes; the generator builds its layers from them.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

FIRST_CUTOFF = 2.0
FIRST_STOPBAND = 2**2.1
LAST_STOPBAND_REL = 2**0.3
MARGIN = 10
FILTER_SIZE = 6  # taps per unit of up/down factor
LRELU_UPSAMPLING = 2
NUM_CRITICAL = 2
CONV_KERNEL = 3


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Band:
    """One feature-map spec: what a layer reads or writes."""

    channels: int
    size: int  # pixels per side, margins included
    sr: float  # sampling rate
    cutoff: float  # filter cutoff frequency
    stopband: float  # stopband frequency of the formulas
    half_width: float  # transition half width: max(stopband, sr / 2) - cutoff


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class LayerSpec:
    """One synthesis layer (modulated conv + filtered_lrelu), ToRGB included."""

    name: str  # L{index}_{out_size}_{out_channels}, as the original names its modules
    index: int
    inp: Band
    out: Band
    up: int
    down: int
    up_taps: int  # 1 = no filter
    down_taps: int
    padding: tuple[int, int, int, int]  # filtered_lrelu padding [x0, x1, y0, y1]
    kernel_size: int  # 3, or 1 for ToRGB
    critical: bool  # critically sampled (cut when growing)
    torgb: bool

    @property
    def params(self) -> int:
        """affine (w -> styles) + weight + bias."""
        i, o, k = self.inp.channels, self.out.channels, self.kernel_size
        return 512 * i + i + o * i * k * k + o

    def conv_flops(self, batch: int = 1) -> int:
        """Modulated conv FLOPs (2 x MAC) on the full-padded input."""
        hc = self.inp.size + self.kernel_size - 1
        return 2 * self.inp.channels * self.out.channels * self.kernel_size**2 * hc * hc * batch

    def filters(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Kaiser-windowed sinc up/down filters (float32, 1-D), None where there is one tap."""
        import scipy.signal

        tmp_sr = max(self.inp.sr, self.out.sr) * (1 if self.torgb else LRELU_UPSAMPLING)

        def design(taps, band):
            if taps == 1:
                return None
            return scipy.signal.firwin(numtaps=taps, cutoff=band.cutoff, width=band.half_width * 2, fs=tmp_sr).astype(np.float32)

        return design(self.up_taps, self.inp), design(self.down_taps, self.out)


def _sr(stop: float, res: int) -> float:
    return 2 ** math.ceil(math.log2(min(stop * 2, res)))


def _bands(cutoffs, stops, srs, res, channel_base, channel_max) -> list[Band]:
    n = len(cutoffs) - 1
    bands = []
    for i, (cutoff, stop, sr) in enumerate(zip(cutoffs, stops, srs)):
        size = res if i >= n - 1 else int(sr + MARGIN * 2)
        ch = 3 if i == n else int(np.rint(min((channel_base / 2) / cutoff, channel_max)))
        bands.append(Band(channels=ch, size=size, sr=sr, cutoff=cutoff, stopband=stop,
                          half_width=max(stop, sr / 2) - cutoff))
    return bands


def _layer(index: int, inp: Band, out: Band, critical: bool, torgb: bool) -> LayerSpec:
    tmp_sr = max(inp.sr, out.sr) * (1 if torgb else LRELU_UPSAMPLING)
    up, down = int(np.rint(tmp_sr / inp.sr)), int(np.rint(tmp_sr / out.sr))
    up_taps = FILTER_SIZE * up if up > 1 and not torgb else 1
    down_taps = FILTER_SIZE * down if down > 1 and not torgb else 1
    k = 1 if torgb else CONV_KERNEL
    pad_total = (out.size - 1) * down + 1 - (inp.size + k - 1) * up + up_taps + down_taps - 2
    lo = (pad_total + up) // 2  # floor division on possibly negative numbers
    hi = pad_total - lo
    return LayerSpec(name=f"L{index}_{out.size}_{out.channels}", index=index, inp=inp, out=out, up=up, down=down,
                     up_taps=up_taps, down_taps=down_taps, padding=(lo, hi, lo, hi), kernel_size=k,
                     critical=critical, torgb=torgb)


def stem_specs(res: int, syn_layers: int, channel_base: int, channel_max: int) -> list[LayerSpec]:
    """The stem at `res` (SPEC 2.7): syn_layers conv layers + ToRGB."""
    n = syn_layers
    e = [min(i / (n - 2), 1.0) for i in range(n + 1)]
    cutoffs = [FIRST_CUTOFF * ((res / 2) / FIRST_CUTOFF) ** t for t in e]
    stops = [FIRST_STOPBAND * ((res / 2) * LAST_STOPBAND_REL / FIRST_STOPBAND) ** t for t in e]
    srs = [_sr(s, res) for s in stops]
    bands = _bands(cutoffs, stops, srs, res, channel_base, channel_max)
    return [_layer(i, bands[max(i - 1, 0)], bands[i], i >= n - NUM_CRITICAL, i == n) for i in range(n + 1)]


def head_specs(last: LayerSpec, res: int, head_layers: int, first_index: int, channel_base: int,
               channel_max: int) -> list[LayerSpec]:
    """A superres head at `res` growing from the last kept layer (SPEC 2.8)."""
    h = head_layers
    fc0, ft0 = last.out.cutoff, last.out.cutoff + last.out.half_width
    e = [min(i / (h - 2), 1.0) for i in range(h + 1)]
    cutoffs = [fc0 * ((res / 2) / fc0) ** t for t in e]
    stops = [ft0 * ((res / 2) * LAST_STOPBAND_REL / ft0) ** t for t in e]
    srs = [last.out.sr] + [_sr(s, res) for s in stops[1:]]
    bands = _bands(cutoffs, stops, srs, res, channel_base, channel_max)
    bands[0] = dataclasses.replace(bands[0], channels=last.out.channels)
    return [_layer(first_index + i, bands[max(i - 1, 0)], bands[i], i >= h - NUM_CRITICAL, i == h) for i in range(h + 1)]


def generator_specs(resolution: int, *, syn_layers: int = 10, head_layers: int = 7, channel_base: int = 65536,
                    channel_max: int = 1024, stem_res: int = 16, up_factor: int = 2) -> list[LayerSpec]:
    """Every synthesis layer of the generator whose output is resolution x resolution."""
    if resolution < stem_res or resolution % stem_res or (resolution // stem_res) & (resolution // stem_res - 1):
        raise ValueError(f"resolution must be {stem_res} times a power of {up_factor}, got {resolution}")
    layers = stem_specs(stem_res, syn_layers, channel_base, channel_max)
    res = stem_res
    while res < resolution:
        res *= up_factor
        kept = [layer for layer in layers if not layer.critical]
        stem_len = len(kept) + 1
        layers = kept + head_specs(kept[-1], res, head_layers, stem_len, channel_base, channel_max)
    return layers
