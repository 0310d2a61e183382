"""Generator architecture config and its named presets.

Widths are the effective (already doubled) values of SPEC 2.1. Decisions of SPEC 11 that the
architecture owns are fields here and are written into every checkpoint's JSON.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class GeneratorConfig:
    resolution: int  # output pixels per side of this stage
    c_dim: int = 0  # number of classes; 0 = unconditional
    z_dim: int = 64  # latent width
    w_dim: int = 512  # intermediate latent width
    embed_dim: int = 320  # class-embedding width (tf_efficientnet_lite0's last stage)
    embed_rows: int = 1000  # class-embedding table rows; grows to c_dim when c_dim > 1000
    channel_base: int = 65536  # channels = min(channel_base / 2 / cutoff, channel_max)
    channel_max: int = 1024
    syn_layers: int = 10  # conv layers of the 16² stem
    head_layers: int = 7  # conv layers added per superres stage
    stem_res: int = 16
    up_factor: int = 2
    conv_clamp: float | None = 256.0  # activation clamp of every synthesis layer (None = off)
    dtype: str = "bfloat16"  # synthesis compute dtype: "bfloat16" or "float32"; weights stay fp32
    # D1: does synthesis.input keep training in superres stages? True = the original's behaviour
    # (gradients flow back through the frozen stem); False drops the stem backward.
    train_input: bool = True
    w_avg_beta: float = 0.998  # per-class w_avg tracking decay
    mapping_lr_mult: float = 0.01

    def __post_init__(self):
        r = self.resolution // self.stem_res if self.resolution % self.stem_res == 0 else 0
        if r < 1 or r & (r - 1):
            raise ValueError(f"resolution must be {self.stem_res} times a power of 2, got {self.resolution}")
        if self.c_dim < 0:
            raise ValueError(f"c_dim must be >= 0, got {self.c_dim}")
        if self.syn_layers < 3 or self.head_layers < 3:
            raise ValueError("syn_layers and head_layers must be >= 3 (the formulas divide by layers - 2)")
        if self.dtype not in ("bfloat16", "float32"):
            raise ValueError(f"dtype must be 'bfloat16' or 'float32', got {self.dtype!r}")

    @property
    def torch_dtype(self):
        import torch

        return torch.bfloat16 if self.dtype == "bfloat16" else torch.float32


def paper(resolution: int, c_dim: int = 0) -> GeneratorConfig:
    """The published ImageNet recipe: 101.88M parameters at 16² with 1000 classes."""
    return GeneratorConfig(resolution=resolution, c_dim=c_dim)


def light(resolution: int, c_dim: int = 0) -> GeneratorConfig:
    """Small/curated data (SPEC 5.9): widths 32768/512 doubled, 7 stem layers, 4 per head."""
    return GeneratorConfig(resolution=resolution, c_dim=c_dim, channel_base=16384, channel_max=256, syn_layers=7,
                           head_layers=4)


def tiny(resolution: int, c_dim: int = 0) -> GeneratorConfig:
    """Trains on a 2-core CPU in minutes: 32 channels, 4 stem layers, 3 per head, w 128."""
    return GeneratorConfig(resolution=resolution, c_dim=c_dim, channel_base=2048, channel_max=32, syn_layers=4,
                           head_layers=3, w_dim=128, dtype="float32")


PRESETS = {"paper": paper, "light": light, "tiny": tiny}

# The discriminator's field of each preset: the smallest side EfficientNet-lite0 sees (inputs below
# it are resized up to it; DeiT always sees 224). SPEC 4.2's 224 for paper and light; `tiny` is
# CPU-sized: at 128 its D forward+backward is about 2.4x faster on a 2-core CPU (measured,
# README), and with one logit per head the projected heads still judge the whole image.
D_INPUT_SIZE = {"paper": 224, "light": 224, "tiny": 128}
# And the width of its heads' DownBlocks (a multiplier of SPEC 4.6's channels): `tiny`'s quarter
# width makes the heads, most of D's cost at 128, about 7x cheaper on a CPU (measured, README).
D_HEAD_WIDTH = {"paper": 1.0, "light": 1.0, "tiny": 0.25}
