"""DiffAugment: color + translation + cutout, per sample, differentiable (SPEC 4.3).

Applied with probability 1 in the [-1, 1] image domain, drawn afresh on every call (the
discriminator calls it once per backbone). Every draw is per sample and the ops are vectorized
over the batch: no Python loop over samples, no host syncs, static shapes (traceable by
torch.compile when no generator is passed).

Draws happen in the original implementation's order (brightness, saturation, contrast,
translation rows then columns, cutout rows then columns), so a seeded generator reproduces a
fixed augmentation. `draw_params` and `apply_params` split the random part from the
deterministic part; tests check the latter against explicit loops.

Legend: x_NCHW images (N batch, C channels, H rows, W columns); *_N per-sample values;
*_NH / *_NW per-sample row / column indices or flags; mask_NHW keep-mask of the cutout.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

TRANSLATION_RATIO = 0.125  # max shift = int(ratio * size + 0.5) pixels
CUTOUT_RATIO = 0.2  # cutout side = int(ratio * size + 0.5) pixels (DiffAugment paper default: 0.5)


class AugmentParams(NamedTuple):
    """Per-sample draws of one DiffAugment call (all shaped [N], on the image's device).

    brightness_N: added offset, U(-0.5, 0.5). saturation_N: factor, U(0, 2).
    contrast_N: factor, U(0.5, 1.5). shift_h_N / shift_w_N: integer row / column offsets in
    [-s, s]; output pixel i reads input pixel i + shift. cutout_h_N / cutout_w_N: integer
    cutout centres; the square covers [centre - side // 2, centre - side // 2 + side).
    """

    brightness_N: torch.Tensor
    saturation_N: torch.Tensor
    contrast_N: torch.Tensor
    shift_h_N: torch.Tensor
    shift_w_N: torch.Tensor
    cutout_h_N: torch.Tensor
    cutout_w_N: torch.Tensor


def shift_limit(size: int, ratio: float = TRANSLATION_RATIO) -> int:
    """Largest translation in pixels for an image side `size`: int(size * ratio + 0.5)."""
    return int(size * ratio + 0.5)


def cutout_side(size: int, ratio: float = CUTOUT_RATIO) -> int:
    """Cutout square side in pixels for an image side `size`: int(size * ratio + 0.5)."""
    return int(size * ratio + 0.5)


def draw_params(n: int, h: int, w: int, *, device: torch.device | str = "cpu",
                generator: torch.Generator | None = None, translation_ratio: float = TRANSLATION_RATIO,
                cutout_ratio: float = CUTOUT_RATIO) -> AugmentParams:
    """Draw the per-sample augmentation parameters for a batch of n images of size h x w.

    Args:
        n, h, w: batch size and image size.
        device: where the draws live (the image's device).
        generator: optional torch.Generator on `device` for reproducible draws; None uses the
            global RNG (the only choice under torch.compile).
        translation_ratio: max shift as a fraction of the side (SPEC: 1/8).
        cutout_ratio: cutout side as a fraction of the side (SPEC: 0.2).

    Returns:
        AugmentParams with float32 color factors and int64 offsets, each of shape [n].
    """
    kw = dict(device=device, generator=generator)
    brightness_N = torch.rand(n, **kw) - 0.5
    saturation_N = torch.rand(n, **kw) * 2
    contrast_N = torch.rand(n, **kw) + 0.5
    s_h, s_w = shift_limit(h, translation_ratio), shift_limit(w, translation_ratio)
    shift_h_N = torch.randint(-s_h, s_h + 1, (n,), **kw)
    shift_w_N = torch.randint(-s_w, s_w + 1, (n,), **kw)
    # Centres in [0, size - 1] for odd sides and [0, size] for even sides, as in the original.
    k_h, k_w = cutout_side(h, cutout_ratio), cutout_side(w, cutout_ratio)
    cutout_h_N = torch.randint(0, h + (1 - k_h % 2), (n,), **kw)
    cutout_w_N = torch.randint(0, w + (1 - k_w % 2), (n,), **kw)
    return AugmentParams(brightness_N, saturation_N, contrast_N, shift_h_N, shift_w_N, cutout_h_N, cutout_w_N)


def _per_sample(v_N: torch.Tensor, x_NCHW: torch.Tensor) -> torch.Tensor:
    return v_N.to(x_NCHW.dtype).view(-1, 1, 1, 1)


def color(x_NCHW: torch.Tensor, brightness_N: torch.Tensor, saturation_N: torch.Tensor,
          contrast_N: torch.Tensor) -> torch.Tensor:
    """Brightness, then saturation, then contrast (SPEC 4.3).

    x += b; x = (x - mean_c) * s + mean_c (mean over channels, per pixel);
    x = (x - mean_chw) * k + mean_chw (mean over channels and pixels, per sample).
    """
    x_NCHW = x_NCHW + _per_sample(brightness_N, x_NCHW)
    mean_N1HW = x_NCHW.mean(dim=1, keepdim=True)
    x_NCHW = (x_NCHW - mean_N1HW) * _per_sample(saturation_N, x_NCHW) + mean_N1HW
    mean_N111 = x_NCHW.mean(dim=(1, 2, 3), keepdim=True)
    return (x_NCHW - mean_N111) * _per_sample(contrast_N, x_NCHW) + mean_N111


def translate(x_NCHW: torch.Tensor, shift_h_N: torch.Tensor, shift_w_N: torch.Tensor) -> torch.Tensor:
    """Integer translation with zero fill: out[n, :, i, j] = x[n, :, i + dh_n, j + dw_n] or 0.

    Gathers from a 1-pixel zero-padded copy with indices clamped onto the padding (SPEC 4.3),
    separably (rows, then columns).
    """
    n, c, h, w = x_NCHW.shape
    x_pad = F.pad(x_NCHW, [1, 1, 1, 1])
    rows_NH = (torch.arange(h, device=x_NCHW.device) + shift_h_N.view(-1, 1) + 1).clamp(0, h + 1)
    cols_NW = (torch.arange(w, device=x_NCHW.device) + shift_w_N.view(-1, 1) + 1).clamp(0, w + 1)
    x_pad = x_pad.gather(2, rows_NH.view(n, 1, h, 1).expand(n, c, h, w + 2))
    return x_pad.gather(3, cols_NW.view(n, 1, 1, w).expand(n, c, h, w))


def cutout(x_NCHW: torch.Tensor, cutout_h_N: torch.Tensor, cutout_w_N: torch.Tensor,
           side_h: int, side_w: int) -> torch.Tensor:
    """Zero a side_h x side_w rectangle per sample, centred as in AugmentParams, clipped at borders."""
    _, _, h, w = x_NCHW.shape
    lo_h, lo_w = (cutout_h_N - side_h // 2).view(-1, 1), (cutout_w_N - side_w // 2).view(-1, 1)
    rows_H, cols_W = torch.arange(h, device=x_NCHW.device), torch.arange(w, device=x_NCHW.device)
    in_NH = (rows_H >= lo_h) & (rows_H < lo_h + side_h)
    in_NW = (cols_W >= lo_w) & (cols_W < lo_w + side_w)
    keep_NHW = ~(in_NH.unsqueeze(2) & in_NW.unsqueeze(1))
    return x_NCHW * keep_NHW.unsqueeze(1).to(x_NCHW.dtype)


def apply_params(x_NCHW: torch.Tensor, p: AugmentParams, *, cutout_ratio: float = CUTOUT_RATIO) -> torch.Tensor:
    """Apply drawn parameters: color, translation, cutout (deterministic, differentiable in x)."""
    _, _, h, w = x_NCHW.shape
    x_NCHW = color(x_NCHW, p.brightness_N, p.saturation_N, p.contrast_N)
    x_NCHW = translate(x_NCHW, p.shift_h_N, p.shift_w_N)
    return cutout(x_NCHW, p.cutout_h_N, p.cutout_w_N, cutout_side(h, cutout_ratio), cutout_side(w, cutout_ratio))


def diff_augment(x_NCHW: torch.Tensor, *, generator: torch.Generator | None = None,
                 translation_ratio: float = TRANSLATION_RATIO, cutout_ratio: float = CUTOUT_RATIO) -> torch.Tensor:
    """DiffAugment 'color,translation,cutout' with p = 1, fresh per-sample draws (SPEC 4.3).

    Args:
        x_NCHW: images in [-1, 1], any float dtype; gradients flow back to it.
        generator: optional torch.Generator on x's device for reproducible draws.
        translation_ratio: max shift as a fraction of the side (default 1/8).
        cutout_ratio: cutout side as a fraction of the side (default 0.2).

    Returns:
        The augmented images, same shape and dtype as x_NCHW.
    """
    if x_NCHW.ndim != 4:
        raise ValueError(f"diff_augment expects an NCHW batch, got shape {tuple(x_NCHW.shape)}")
    n, _, h, w = x_NCHW.shape
    p = draw_params(n, h, w, device=x_NCHW.device, generator=generator,
                    translation_ratio=translation_ratio, cutout_ratio=cutout_ratio)
    return apply_params(x_NCHW, p, cutout_ratio=cutout_ratio)
