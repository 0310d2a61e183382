"""filtered_lrelu: bias, upsample, leaky ReLU with gain and clamp, downsample.

The activation of every StyleGAN3 synthesis layer. Semantics (kernels/reference.py):
bias first; zero-insert upsample with fu and gain up**2; leaky ReLU (x == 0 counts as
non-negative) times gain, then clamp; filter with fd and decimate. The upsampled intermediate
is float32 (float64 for float64 input); the output has x's dtype.

Implementations today:
- 'triton': the composite of the Triton upfirdn2d and bias_act kernels (unfused). The fused
  single-pass kernel with a sign mask replaces it in the next kernel issue; the API stays.
- 'cuda': the same composite over the ATen upfirdn2d and bias_act paths.
- 'ref': kernels/reference.py.
Every path is differentiable to any order (its pieces are).
"""

from __future__ import annotations

import math

import torch

from kernels import _args
from kernels._dispatch import choose
from kernels.bias_act import bias_act
from kernels.reference import filtered_lrelu_ref
from kernels.upfirdn2d import upfirdn2d


def filtered_lrelu(x, fu=None, fd=None, b=None, up=1, down=1, padding=0, gain=math.sqrt(2), slope=0.2,
                   clamp=None, flip_filter=False, impl=None):
    """Filtered leaky ReLU of a batch of 2-D images.

    Args:
        x: [N, C, H, W] float16/bfloat16/float32/float64.
        fu: upsampling filter, 1-D [K] or 2-D [fh, fw] float32/float64, or None (one tap).
        fd: downsampling filter, same forms, or None.
        b: bias [C] with x's dtype and device, or None.
        up: integer upsampling factor >= 1.
        down: integer downsampling factor >= 1.
        padding: int, [x, y] or [x0, x1, y0, y1] after upsampling; negative crops.
        gain: scale applied after the leaky ReLU (sqrt(2) in StyleGAN3, 1 for ToRGB).
        slope: negative slope of the leaky ReLU (1 makes it linear).
        clamp: clamp the activation to [-clamp, clamp] before fd; None = no clamp.
        flip_filter: False for convolution, True for correlation.
        impl: 'triton', 'cuda', 'ref' or None (best for x's device).

    Returns:
        [N, C, out_h, out_w] in x's dtype, out = (in * up + pad0 + pad1 - (fu_taps - 1)
        - (fd_taps - 1) + (down - 1)) // down per axis.
    """
    _args.check_x(x)
    _args.check_filter("fu", fu, x)
    _args.check_filter("fd", fd, x)
    _args.check_same("b", b, x, shape=(x.shape[1],))
    for name, v in (("up", up), ("down", down)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"{name} must be an int, got {v!r}")
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    pad = _args.parse_padding(padding)
    for name, v in (("gain", gain), ("slope", slope)):
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise TypeError(f"{name} must be a number, got {v!r}")
    if clamp is not None and (not isinstance(clamp, (int, float)) or clamp < 0):
        raise ValueError(f"clamp must be a non-negative number or None, got {clamp!r}")
    if not isinstance(flip_filter, bool):
        raise TypeError(f"flip_filter must be a bool, got {flip_filter!r}")
    fuw, fuh = _args.filter_size(fu)
    fdw, fdh = _args.filter_size(fd)
    mid_w, mid_h = _args.upfirdn2d_out_size(x.shape[3], x.shape[2], fu, up, 1, pad)
    if mid_w < fdw or mid_h < fdh:
        raise ValueError(f"padding {padding!r} leaves {mid_w}x{mid_h} samples, fewer than fd's {fdw}x{fdh} taps")

    impl = choose("filtered_lrelu", x, impl)
    if impl == "ref":
        return filtered_lrelu_ref(x, fu, fd, b, up, down, pad, gain, slope, clamp, flip_filter)
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    t = x.to(cdt)
    if b is not None:
        t = bias_act(t, b.to(cdt), impl=impl)
    t = upfirdn2d(t, fu, up=up, padding=pad, gain=up**2, flip_filter=flip_filter, impl=impl)
    t = bias_act(t, act="lrelu", alpha=slope, gain=gain, clamp=clamp, impl=impl)
    return upfirdn2d(t, fd, down=down, flip_filter=flip_filter, impl=impl).to(x.dtype)
