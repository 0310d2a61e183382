"""Sample grids as PNG: images in [-1, 1] quantized the StyleGAN way, tiled row by row."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(img_NCHW: torch.Tensor) -> np.ndarray:
    """[-1, 1] float -> uint8 NHWC: clamp(x * 127.5 + 128, 0, 255) (SPEC 7, 8.1)."""
    return (img_NCHW.detach().float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_grid(img_NCHW: torch.Tensor, path: str | Path, cols: int | None = None) -> Path:
    imgs = to_uint8(img_NCHW)
    n, h, w, c = imgs.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = imgs[i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(grid).save(tmp, format="PNG")
    tmp.replace(path)
    return path
