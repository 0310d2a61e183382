"""Frozen timm feature networks of the projected discriminator and their random projections.

SPEC 4.2 (input pipeline), 4.4 (feature networks), 4.5 (random CCM + CSM projections). Each
`FeatureNetwork` takes the (augmented) D input in [-1, 1] and returns four projected feature maps
with [64, 64, 128, 256] channels at twice the size of the backbone's stride-4/8/16/32 levels
(112/56/28/14 for a 224 input). Nothing here trains: the timm trunk, the DeiT "reassemble" convs
and the CCM/CSM convs are frozen (requires_grad False) and always in eval mode, while gradients
still flow through them to the input image (the G step needs activation gradients).

Weights: `weights="pretrained"` loads the timm weights from the Hugging Face cache (or the hub),
a path string loads a local weights file through timm's `pretrained_cfg_overlay=dict(file=PATH)`,
and `weights="random"` is the explicit opt-in to randomly initialized trunks (tests, CPU quick
start). Missing pretrained weights raise a RuntimeError that says how to provide them.

Legend: x_NCHW images (N batch, C channels, H = W pixels); f_NCHW feature maps; tokens of the
ViT are already reshaped to NCHW by timm's `forward_intermediates`.
"""

from __future__ import annotations

import os

import timm
import torch
import torch.nn.functional as F
from torch import nn

LITE0 = "tf_efficientnet_lite0"
DEIT_B = "deit_base_distilled_patch16_224"
DEIT_S = "deit_small_distilled_patch16_224"  # the classifier of the guidance loss (SPEC 5.6)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VIT_SIZE = 224  # DeiT always sees 224x224; lite0 sees 224 only below 224 (SPEC 4.2)

# Per backbone: normalization stats, whether the input is always resized to 224, trunk channels.
BACKBONES = {
    LITE0: dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), always_224=False, channels=(24, 40, 112, 320)),
    DEIT_B: dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, always_224=True, channels=(96, 192, 384, 768)),
}
DEIT_INDICES = (2, 5, 8, 11)  # 0-based blocks whose token outputs are taken (SPEC 4.4)
PROJ_COUT = 64  # CCM width unit: CCM outputs PROJ_COUT * [1, 2, 4, 8]
OUT_CHANNELS = (PROJ_COUT, PROJ_COUT, 2 * PROJ_COUT, 4 * PROJ_COUT)  # after the CSM: [64, 64, 128, 256]


def _offline_message(name: str) -> str:
    hf_id = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None) or f"timm/{name}"
    return (
        f"Pretrained weights for the timm model {name!r} could not be found offline: they are not "
        f"in the Hugging Face cache and the hub cannot be reached (or HF_HUB_OFFLINE=1). Provide "
        f"them in one of these ways: (1) pass weights=<path to a local .safetensors/.pth file of "
        f"{name}> (loaded through timm's pretrained_cfg_overlay=dict(file=PATH)); (2) pre-populate "
        f"the Hugging Face cache with the repository {hf_id!r} (e.g. `hf download {hf_id}` on a "
        f"machine with network access, then copy the cache directory, see HF_HOME); or (3) pass "
        f"weights='random' to train with randomly initialized, frozen networks (not the "
        f"pretrained model the method relies on)."
    )


def create_timm_model(name: str, weights: str | os.PathLike, **kwargs) -> nn.Module:
    """Build a timm model with pretrained, local-file or random weights.

    Args:
        name: timm model name.
        weights: "pretrained" (Hugging Face cache or hub), "random" (timm's random init), or a
            path to a local weights file of this model.
        **kwargs: passed to `timm.create_model` (e.g. features_only, out_indices).

    Returns:
        The timm model, as built by timm (train mode, requires_grad untouched).

    Raises:
        RuntimeError: pretrained weights were requested and could not be found; the message says
            how to provide them.
        ValueError: `weights` is neither "pretrained", "random" nor a path to an existing file.
    """
    if weights == "random":
        return timm.create_model(name, pretrained=False, **kwargs)
    if weights != "pretrained":
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise ValueError(
                f"weights for {name!r} must be 'pretrained', 'random' or a path to an existing "
                f"weights file, got {weights!r}")
        kwargs["pretrained_cfg_overlay"] = dict(file=path)
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except OSError as e:  # huggingface_hub's LocalEntryNotFoundError is an OSError
        raise RuntimeError(_offline_message(name)) from e


class FrozenModule(nn.Module):
    """A module that never trains: parameters frozen, always in eval mode.

    `train(mode)` keeps the module in eval mode whatever the parent asks, and `requires_grad_`
    refuses to unfreeze. Gradients still flow through it to its inputs.
    """

    def freeze(self) -> None:
        """Set requires_grad False on every parameter and switch to eval mode."""
        for p in self.parameters():
            p.requires_grad = False
        super().train(False)

    def train(self, mode: bool = True) -> FrozenModule:
        """Stay in eval mode (BatchNorm running statistics, no dropout) whatever `mode` is."""
        return super().train(False)

    def requires_grad_(self, requires_grad: bool = True) -> FrozenModule:
        """Frozen for good: only requires_grad=False is accepted."""
        if requires_grad:
            raise ValueError(f"{type(self).__name__} is frozen; its parameters never require grad")
        return super().requires_grad_(False)


class DeitReassemble(nn.Module):
    """Random "reassemble" convs after the DeiT-B token maps (SPEC 4.4).

    Each of the four 768x14x14 token maps goes through a 1x1 conv to [96, 192, 384, 768] channels,
    then level 0 a transposed conv 4x4/s4 (-> 56²), level 1 a transposed conv 2x2/s2 (-> 28²),
    level 2 nothing (14²), level 3 a 3x3/s2/p1 conv (-> 7²). PyTorch default init, with bias.
    """

    def __init__(self, vit_features: int = 768, features: tuple[int, ...] = (96, 192, 384, 768)):
        super().__init__()
        f0, f1, f2, f3 = features
        self.level0 = nn.Sequential(nn.Conv2d(vit_features, f0, 1), nn.ConvTranspose2d(f0, f0, 4, stride=4))
        self.level1 = nn.Sequential(nn.Conv2d(vit_features, f1, 1), nn.ConvTranspose2d(f1, f1, 2, stride=2))
        self.level2 = nn.Sequential(nn.Conv2d(vit_features, f2, 1))
        self.level3 = nn.Sequential(nn.Conv2d(vit_features, f3, 1), nn.Conv2d(f3, f3, 3, stride=2, padding=1))

    def forward(self, f_list: list[torch.Tensor]) -> list[torch.Tensor]:
        """Four [N, 768, 14, 14] maps -> [N, 96, 56, 56], [N, 192, 28, 28], [N, 384, 14, 14], [N, 768, 7, 7]."""
        return [self.level0(f_list[0]), self.level1(f_list[1]), self.level2(f_list[2]), self.level3(f_list[3])]


class RandomProjection(nn.Module):
    """CCM (1x1 conv per level) followed by the CSM top-down fusion (SPEC 4.5).

    CCM: level k -> PROJ_COUT * 2^k channels. CSM, each fusion = optional add, bilinear x2 upsample
    (align_corners=True), 1x1 conv: o3 = conv(up2(c3)), o2 = conv(up2(o3 + c2)),
    o1 = conv(up2(o2 + c1)), o0 = conv(up2(o1 + c0)); outputs [64, 64, 128, 256] channels, each at
    twice its level's size. PyTorch default init, with bias.
    """

    def __init__(self, in_channels: tuple[int, ...], cout: int = PROJ_COUT):
        super().__init__()
        ccm_out = [cout, 2 * cout, 4 * cout, 8 * cout]
        self.ccm = nn.ModuleList(nn.Conv2d(ci, co, 1) for ci, co in zip(in_channels, ccm_out))
        # CSM: every level halves its channels except the top-resolution one (64 -> 64).
        csm_out = [cout, cout, 2 * cout, 4 * cout]
        self.csm = nn.ModuleList(nn.Conv2d(ci, co, 1) for ci, co in zip(ccm_out, csm_out))

    def forward(self, f_list: list[torch.Tensor]) -> list[torch.Tensor]:
        """Four trunk maps (levels 0..3, high to low resolution) -> four projected maps."""
        c0, c1, c2, c3 = (conv(f) for conv, f in zip(self.ccm, f_list))
        o3 = self.csm[3](_up2(c3))
        o2 = self.csm[2](_up2(o3 + c2))
        o1 = self.csm[1](_up2(o2 + c1))
        o0 = self.csm[0](_up2(o1 + c0))
        return [o0, o1, o2, o3]


def _up2(x_NCHW: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 upsample with align_corners=True (the CSM's fusion upsample)."""
    return F.interpolate(x_NCHW, scale_factor=2, mode="bilinear", align_corners=True)


class FeatureNetwork(FrozenModule):
    """One frozen backbone: normalize + resize, timm trunk, random projections (SPEC 4.2-4.5).

    Args:
        name: "tf_efficientnet_lite0" or "deit_base_distilled_patch16_224".
        weights: "pretrained", "random" or a path to a local weights file (see module docstring).
        min_size: lite0 sees inputs below this side resized up to it (SPEC 4.2: 224; the `tiny`
            preset's CPU-sized D uses 128). DeiT always sees 224.

    Attributes:
        channels: output channels per level, (64, 64, 128, 256).
    """

    def __init__(self, name: str, weights: str | os.PathLike = "pretrained", *, min_size: int = VIT_SIZE):
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
        info = BACKBONES[name]
        if min_size < 32 or (info["always_224"] and min_size != VIT_SIZE):
            raise ValueError(f"{name}: min_size must be >= 32{' and is 224 (a ViT of 224² patches)' if info['always_224'] else ''}"
                             f", got {min_size}")
        self.name, self.always_224, self.min_size = name, info["always_224"], min_size
        self.register_buffer("mean", torch.tensor(info["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(info["std"]).view(1, 3, 1, 1), persistent=False)
        if name == LITE0:
            self.trunk = create_timm_model(name, weights, features_only=True, out_indices=(1, 2, 3, 4))
            self.reassemble = None
        else:
            self.trunk = create_timm_model(name, weights)
            self.trunk.prune_intermediate_layers(list(DEIT_INDICES), prune_norm=True, prune_head=True)
            self.reassemble = DeitReassemble(self.trunk.embed_dim, info["channels"])
        self.proj = RandomProjection(info["channels"])
        self.channels = OUT_CHANNELS
        self.freeze()

    def input_size(self, resolution: int) -> int:
        """Side length the trunk sees for a D input of side `resolution` (SPEC 4.2)."""
        return VIT_SIZE if self.always_224 else max(resolution, self.min_size)

    def level_sizes(self, resolution: int) -> tuple[int, ...]:
        """Side lengths of the four projected maps for a D input of side `resolution`."""
        s = self.input_size(resolution)
        # Stride-2 steps of the trunk: TF-"SAME" convs of lite0 give ceil(s / 2^k); DeiT is 224-only.
        return tuple(2 * -(-s // 2 ** (k + 2)) for k in range(4))

    def forward(self, x_NCHW: torch.Tensor) -> list[torch.Tensor]:
        """D input in [-1, 1] (after DiffAugment) -> four projected maps.

        (x + 1) / 2, per-backbone normalization, bilinear resize to 224 (align_corners=False, no
        antialias) for DeiT always and for lite0 below min_size (to min_size), trunk, reassemble
        (DeiT), CCM + CSM.
        """
        x_NCHW = (x_NCHW + 1) / 2
        x_NCHW = (x_NCHW - self.mean.to(x_NCHW.dtype)) / self.std.to(x_NCHW.dtype)
        size = self.input_size(x_NCHW.shape[-1])
        if x_NCHW.shape[-1] != size or x_NCHW.shape[-2] != size:
            x_NCHW = F.interpolate(x_NCHW, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
        if self.reassemble is None:
            f_list = self.trunk(x_NCHW)
        else:
            f_list = self.trunk.forward_intermediates(
                x_NCHW, indices=list(DEIT_INDICES), output_fmt="NCHW", intermediates_only=True)
            f_list = self.reassemble(f_list)
        return self.proj(list(f_list))
