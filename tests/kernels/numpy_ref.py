"""Independent float64 definitions in numpy, written as loops over tiny inputs.

They share no code with kernels/ and follow the StyleGAN3 op definitions literally: insert
zeros, pad or crop, convolve, decimate.
"""

from __future__ import annotations

import math

import numpy as np


def upfirdn2d(x, f, up=(1, 1), down=(1, 1), pad=(0, 0, 0, 0), flip_filter=False, gain=1.0):
    """x [N,C,H,W], f [K] (separable) or [fh,fw] or None; up/down (x, y); pad (x0, x1, y0, y1)."""
    x = np.asarray(x, dtype=np.float64)
    if f is None:
        f = np.ones((1, 1))
    f = np.asarray(f, dtype=np.float64)
    f2 = np.outer(f, f) if f.ndim == 1 else f
    f2 = f2 * gain
    (ux, uy), (dx, dy) = up, down
    px0, px1, py0, py1 = pad
    n, c, h, w = x.shape
    z = np.zeros((n, c, h * uy, w * ux))
    z[:, :, ::uy, ::ux] = x
    # Pad with zeros, then crop negative amounts.
    z = np.pad(z, ((0, 0), (0, 0), (max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))))
    z = z[:, :, max(-py0, 0) : z.shape[2] - max(-py1, 0), max(-px0, 0) : z.shape[3] - max(-px1, 0)]
    fh, fw = f2.shape
    k = f2 if flip_filter else f2[::-1, ::-1]  # convolution = correlation with the flipped filter
    oh, ow = z.shape[2] - fh + 1, z.shape[3] - fw + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = np.einsum("ncij,ij->nc", z[:, :, i : i + fh, j : j + fw], k)
    return out[:, :, ::dy, ::dx]


def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    x = np.asarray(x, dtype=np.float64).copy()
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + np.asarray(b, dtype=np.float64).reshape(shape)
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    table = {
        "linear": (lambda v, a: v, 0.0, 1.0),
        "relu": (lambda v, a: np.maximum(v, 0.0), 0.0, math.sqrt(2)),
        "lrelu": (lambda v, a: np.where(v >= 0, v, v * a), 0.2, math.sqrt(2)),
        "tanh": (lambda v, a: np.tanh(v), 0.0, 1.0),
        "sigmoid": (lambda v, a: sig(v), 0.0, 1.0),
        "elu": (lambda v, a: np.where(v > 0, v, np.expm1(v)), 0.0, 1.0),
        "selu": (lambda v, a: 1.0507009873554805 * np.where(v > 0, v, 1.6732632423543772 * np.expm1(v)), 0.0, 1.0),
        "softplus": (lambda v, a: np.log1p(np.exp(v)), 0.0, 1.0),
        "swish": (lambda v, a: v * sig(v), 0.0, math.sqrt(2)),
    }
    fn, da, dg = table[act]
    y = fn(x, da if alpha is None else alpha) * (dg if gain is None else gain)
    if clamp is not None:
        y = np.clip(y, -clamp, clamp)
    return y


def filtered_lrelu(x, fu, fd, b, up, down, pad, gain, slope, clamp, flip_filter=False):
    y = bias_act(x, b)
    y = upfirdn2d(y, fu, up=(up, up), pad=pad, gain=up * up, flip_filter=flip_filter)
    y = bias_act(y, act="lrelu", alpha=slope, gain=gain, clamp=clamp)
    return upfirdn2d(y, fd, down=(down, down), flip_filter=flip_filter)


def modulated_conv2d(x, w, s, demodulate=True, padding=0, input_gain=None):
    """Per-sample loops: build sample n's filter, then a direct convolution."""
    x, w, s = (np.asarray(a, dtype=np.float64) for a in (x, w, s))
    n, i, h, wd = x.shape
    o, _, kh, kw = w.shape
    if demodulate:
        w = w / np.sqrt(np.mean(w**2, axis=(1, 2, 3), keepdims=True))
        s = s / np.sqrt(np.mean(s**2))
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh, ow = xp.shape[2] - kh + 1, xp.shape[3] - kw + 1
    out = np.zeros((n, o, oh, ow))
    for b in range(n):
        wn = w * s[b][None, :, None, None]
        if demodulate:
            wn = wn / np.sqrt(np.sum(wn**2, axis=(1, 2, 3), keepdims=True) + 1e-8)
        if input_gain is not None:
            wn = wn * np.broadcast_to(np.asarray(input_gain, dtype=np.float64), (n, i))[b][None, :, None, None]
        for r in range(oh):
            for col in range(ow):
                out[b, :, r, col] = np.einsum("oikl,ikl->o", wn, xp[b, :, r : r + kh, col : col + kw])
    return out
