"""Real synthesis-layer shapes for the kernel benchmarks, from model/specs.py."""

from __future__ import annotations

import dataclasses

import torch

from model.specs import LayerSpec, generator_specs

HEAD_LAYERS = 7  # the paper preset


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class BenchLayer:
    id: str  # e.g. "res256_L23_up4": stage, layer name, kind
    spec: LayerSpec
    batch: int
    channels_scale: float = 1.0  # < 1 shrinks channels for CPU smoke runs

    @property
    def in_channels(self) -> int:
        return max(1, int(self.spec.inp.channels * self.channels_scale))

    @property
    def out_channels(self) -> int:
        return max(1, int(self.spec.out.channels * self.channels_scale))

    @property
    def conv_size(self) -> int:
        """Spatial size after the full-padded conv: what filtered_lrelu reads."""
        return self.spec.inp.size + self.spec.kernel_size - 1

    def filters(self, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        fu, fd = self.spec.filters()
        return tuple(None if f is None else torch.from_numpy(f).to(device) for f in (fu, fd))


def _pick(res: int) -> list[LayerSpec]:
    """The stage's 4x-upsampling head layer and its last (largest) critically sampled conv layer."""
    head = generator_specs(res, head_layers=HEAD_LAYERS)[-(HEAD_LAYERS + 1):]  # the layers this stage adds
    up4 = [layer for layer in head if layer.up == 4]
    last = [layer for layer in head if layer.critical and not layer.torgb][-1:]
    return up4 + last


def gpu_layers(batch: int = 32) -> list[BenchLayer]:
    return [BenchLayer(id=f"res{res}_{s.name}_up{s.up}d{s.down}", spec=s, batch=batch) for res in (256, 512, 1024) for s in _pick(res)]


def smoke_layers() -> list[BenchLayer]:
    """The same layer kinds at 32², one image, 1/256 of the channels: for CPU smoke runs."""
    return [BenchLayer(id=f"smoke32_{s.name}_up{s.up}d{s.down}", spec=s, batch=1, channels_scale=1 / 256) for s in _pick(32)]


def flrelu_flops(layer: BenchLayer) -> float:
    """SPEC 9's count for separable polyphase filtered_lrelu, per batch."""
    s = layer.spec
    c, hc, out = layer.out_channels, layer.conv_size, s.out.size
    st = out * s.down + s.down_taps - s.down
    up_fir = 2 * c * (hc * st + st * st) * s.up_taps / s.up
    down_fir = 2 * c * (st * out + out * out) * s.down_taps
    return (up_fir + 5 * c * st * st + down_fir) * layer.batch
