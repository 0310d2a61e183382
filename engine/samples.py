"""Sample grids as PNG: images in [-1, 1] quantized the StyleGAN way, tiled row by row, written atomically."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(img_NCHW: torch.Tensor) -> np.ndarray:
    """[-1, 1] float -> uint8 NHWC: clamp(x * 127.5 + 128, 0, 255) (SPEC 7, 8.1)."""
    return (img_NCHW.detach().float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def tile(grid_RCHWC: np.ndarray) -> np.ndarray:
    r, c, h, w, ch = grid_RCHWC.shape
    return grid_RCHWC.transpose(0, 2, 1, 3, 4).reshape(r * h, c * w, ch)


def save_png(img_HWC: np.ndarray, path: str | Path) -> Path:
    """Atomic PNG write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(img_HWC).save(tmp, format="PNG")
    tmp.replace(path)
    return path


def grid_of(img_NHWC: np.ndarray, cols: int | None = None) -> np.ndarray:
    """Tile N images row by row (cols = ceil(sqrt(N)) by default), black where the grid is short."""
    n = img_NHWC.shape[0]
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    padded = np.zeros((rows * cols, *img_NHWC.shape[1:]), dtype=np.uint8)
    padded[:n] = img_NHWC
    return tile(padded.reshape(rows, cols, *img_NHWC.shape[1:]))


def save_grid(img_NCHW: torch.Tensor, path: str | Path, cols: int | None = None, scale: int = 1) -> Path:
    """Images in [-1, 1] as one PNG grid, row by row; scale > 1 enlarges each pixel (nearest)."""
    grid = grid_of(to_uint8(img_NCHW), cols)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return save_png(grid, path)
