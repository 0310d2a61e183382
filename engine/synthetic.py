"""The built-in dataset: procedurally drawn, class-conditional shapes at any resolution.

Ten classes, each a shape with its own texture and hue family (disc, striped square, triangle,
ring, barred square, checkered square, dotted cross, star, wavy hexagon, crescent), drawn at a
random position, size and rotation with colour jitter over a random two-colour gradient
background. Image `index` of seed `seed` depends only on (seed, index): its parameters come from
`np.random.default_rng([seed, index])` and it is rendered from continuous coordinates in [0, 1]²,
so the same image at 32² and 64² shows the same content, like one dataset resized per stage.
Edges are antialiased by supersampling (4x below 128², 2x above) and box-filtering.
Labels are balanced: image `index` is class `index % 10`.

Legend: img_HWC uint8 image, fields_FSS scalar fields at the supersampled size,
fields_FRR the same fields box-filtered to the output size.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

CLASS_NAMES = ("disc", "striped_square", "triangle", "ring", "bars", "checker", "dotted_cross", "star",
               "wavy_hexagon", "crescent")
NUM_CLASSES = len(CLASS_NAMES)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _shape_and_texture(label: int, u: np.ndarray, v: np.ndarray, freq: float, phase: float):
    """Coverage mask m and texture t in [0, 1] of class `label` in shape coordinates (u, v).

    u, v: rotated, centred coordinates scaled so that the shape fits in the unit disc.
    """
    au, av = np.abs(u), np.abs(v)
    box = np.maximum(au, av)
    if label == 0:  # disc, radial shading
        r2 = u * u + v * v
        return r2 < 1.0, 0.6 * r2
    if label == 1:  # square with diagonal stripes
        return box < 0.8, 0.5 + 0.5 * np.sin(freq * (u + v) + phase)
    if label == 2:  # triangle, shaded along its height
        return np.maximum(v, 0.866 * au - 0.5 * v) < 0.5, 0.4 * (v + 1.0)
    if label == 3:  # ring with concentric bands
        r = np.sqrt(u * u + v * v)
        return np.abs(r - 0.75) < 0.25, 0.5 + 0.5 * np.sin(3.0 * freq * r + phase)
    if label == 4:  # bars
        return (box < 0.85) & (np.sin(3.5 * np.pi * u) > 0.0), 0.3 * (v + 1.0)
    if label == 5:  # checkered square
        k = np.floor((u + 0.85) * 2.36) + np.floor((v + 0.85) * 2.36)
        return box < 0.85, (k % 2.0).astype(np.float32)
    if label == 6:  # cross with dots
        return (np.minimum(au, av) < 0.3) & (box < 1.0), (np.sin(freq * u + phase) * np.sin(freq * v)) ** 2
    if label == 7:  # five-pointed star
        theta = np.arctan2(v, u)
        return np.sqrt(u * u + v * v) < 0.4 + 0.6 * (0.5 + 0.5 * np.cos(5.0 * theta)) ** 2, 0.0
    if label == 8:  # hexagon with waves
        return np.maximum(av, 0.866 * au + 0.5 * av) < 0.9, 0.5 + 0.5 * np.sin(freq * u + 2.0 * np.sin(2.0 * v) + phase)
    # crescent
    return (u * u + v * v < 1.0) & ((u - 0.45) ** 2 + v * v > 0.6), 0.2 * (u + 1.0)


def render(seed: int, index: int, resolution: int) -> tuple[np.ndarray, int]:
    """Image `index` of the synthetic dataset `seed` at `resolution`: (img_HWC uint8, label)."""
    if seed < 0 or index < 0 or resolution < 1:
        raise ValueError(f"seed and index must be >= 0 and resolution >= 1, got {seed}, {index}, {resolution}")
    label = index % NUM_CLASSES
    rng = np.random.default_rng([seed, index])
    # Python floats keep the float32 fields float32 (a NumPy float64 scalar would promote them).
    cx, cy = (float(a) for a in rng.uniform(0.3, 0.7, size=2))
    size = float(rng.uniform(0.17, 0.3))  # shape radius, fraction of the image side
    angle = float(rng.uniform(0.0, 2.0 * np.pi))
    freq, phase = float(rng.uniform(9.0, 14.0)), float(rng.uniform(0.0, 2.0 * np.pi))
    hue = label / NUM_CLASSES + rng.normal(0.0, 0.02)
    fg = _hsv(hue, rng.uniform(0.55, 0.95), rng.uniform(0.7, 1.0))
    fg2 = fg * rng.uniform(0.3, 0.6)  # texture colour: a darker shade of the same hue
    bg_hue = rng.uniform()
    bg1 = _hsv(bg_hue, rng.uniform(0.0, 0.35), rng.uniform(0.15, 0.9))
    bg2 = _hsv(bg_hue + rng.uniform(-0.15, 0.15), rng.uniform(0.0, 0.35), rng.uniform(0.15, 0.9))
    bg_angle, light_angle = (float(a) for a in rng.uniform(0.0, 2.0 * np.pi, size=2))

    ss = 4 if resolution < 128 else 2  # supersampling factor per axis
    side = resolution * ss
    coords = (np.arange(side, dtype=np.float32) + 0.5) / side
    x, y = coords[None, :], coords[:, None]
    cos_a, sin_a = math.cos(angle) / size, math.sin(angle) / size
    u = (x - cx) * cos_a + (y - cy) * sin_a
    v = (y - cy) * cos_a - (x - cx) * sin_a
    mask, texture = _shape_and_texture(label, u, v, freq, phase)
    m = mask.astype(np.float32)
    g = 0.5 + 0.7 * ((x - 0.5) * math.cos(bg_angle) + (y - 0.5) * math.sin(bg_angle))
    shade = 1.0 - 0.25 * (0.5 + (u * math.cos(light_angle) + v * math.sin(light_angle)) * 0.5)
    ms = m * shade
    # The image is linear in these fields, so they are box-filtered before colouring:
    # img = bg1 + g*(bg2-bg1) - m*bg1 - m*g*(bg2-bg1) + m*shade*fg + m*shade*t*(fg2-fg).
    fields_FSS = np.stack(np.broadcast_arrays(g, m, m * g, ms, ms * texture))
    fields_FRR = fields_FSS.reshape(5, resolution, ss, resolution, ss).mean(axis=(2, 4))
    colours_F3 = np.stack([bg2 - bg1, -bg1, bg1 - bg2, fg, fg2 - fg])
    img_HWC = bg1 + np.tensordot(fields_FRR, colours_F3, axes=(0, 0))
    return np.clip(img_HWC * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8), label
