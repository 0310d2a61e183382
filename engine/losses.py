"""The training phases' losses (SPEC 5.3-5.6): D-input blur, hinge losses, path length, guidance.

Legend: img_NCHW images in [-1, 1], logits_NL discriminator logits (all heads, all backbones),
ws_NLW per-layer latents.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BLUR_RADIUS = 6  # floor(3 * max sigma 2): the blur kernel has a fixed length, zero taps beyond r


def blur(img_NCHW: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Base-2 Gaussian blur, taps 2^-(x/sigma)^2 for |x| <= floor(3 sigma), normalized, separable.

    A fixed 13-tap kernel with zero taps past the radius: sigma may be a tensor that changes
    every step without changing any shape (no recompiles). sigma 0 (or 3 sigma < 1) is identity.
    """
    fdt = torch.float64 if img_NCHW.dtype == torch.float64 else torch.float32
    if isinstance(sigma, torch.Tensor):
        sigma = sigma.to(device=img_NCHW.device, dtype=fdt)
    else:
        sigma = torch.tensor(sigma, dtype=fdt, device=img_NCHW.device)
    x = torch.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, dtype=fdt, device=img_NCHW.device)
    f = torch.exp2(-(x / sigma.clamp(min=1e-8)).square()) * (x.abs() <= torch.floor(3 * sigma))
    f = (f / f.sum()).to(img_NCHW.dtype)
    c = img_NCHW.shape[1]
    y = F.conv2d(F.pad(img_NCHW, [BLUR_RADIUS] * 4), f.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, f.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def reduce_terms(terms_NL: torch.Tensor, split: tuple[int, ...], reduction: str) -> torch.Tensor:
    """Per backbone, mean over its logits per sample -> [N, B]; then (D2) "sum": sum over samples
    and backbones (the original), or "mean": batch mean, summed over backbones."""
    per = torch.stack([t.mean(1) for t in terms_NL.split(list(split), dim=1)], dim=1)
    return per.sum() if reduction == "sum" else per.mean(0).sum()


def g_loss(logits_NL: torch.Tensor, split, reduction: str) -> torch.Tensor:
    return reduce_terms(-logits_NL, split, reduction)


def d_loss(fake_logits_NL: torch.Tensor, real_logits_NL: torch.Tensor, split, reduction: str) -> torch.Tensor:
    """Hinge: relu(1 + fake) + relu(1 - real), one combined loss (one backward per chunk)."""
    return reduce_terms(F.relu(1 + fake_logits_NL), split, reduction) + reduce_terms(F.relu(1 - real_logits_NL), split, reduction)


def path_length_penalty(synthesis, ws_NLW: torch.Tensor, pl_mean: torch.Tensor, decay: float):
    """Path-length penalty (SPEC 5.5); run eagerly (double backward). Returns (penalty [N], new pl_mean)."""
    img = synthesis(ws_NLW)
    noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
    (grad,) = torch.autograd.grad((img * noise).sum(), ws_NLW, create_graph=True, only_inputs=True)
    lengths = grad.square().sum(2).mean(1).sqrt()
    new_mean = pl_mean.lerp(lengths.mean().detach(), decay)
    return (lengths - new_mean).square(), new_mean
