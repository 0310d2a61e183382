"""filtered_lrelu: bias, upsample, leaky ReLU with gain and clamp, downsample.

The activation of every StyleGAN3 synthesis layer. Semantics (kernels/reference.py):
bias first; zero-insert upsample with fu and gain up**2; leaky ReLU (x == 0 counts as
non-negative) times gain, then clamp; filter with fd and decimate. The upsampled intermediate
is float32 (float64 for float64 input); the output has x's dtype.

Implementations:
- 'triton': one fused pass per output tile (kernels/_filtered_lrelu_triton.py): bias,
  zero-insert upsample with fu, leaky ReLU with gain and clamp, fd and decimation, with the
  upsampled tile held on chip in float32. When x or b needs a gradient the forward also writes
  a 2-bit sign/clamp mask (4 codes per byte); the backward is the same fused pass with the
  roles swapped reading that mask, and it is linear in its input, so double backward works.
  Covers separable (1-D) filters up to 32 taps with up, down in {1, 2, 4} (all three StyleGAN3-T
  layer kinds). 2-D filters and anything else use 'cuda' with one warning.
- 'cuda': the composite of the ATen upfirdn2d and bias_act paths.
- 'ref': kernels/reference.py.
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
                   clamp=None, flip_filter=False, impl=None, in_scale=None):
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
        in_scale: optional [N, C] float32/float64 scale of x per sample and channel, applied
            before the bias. Pass a modulated convolution's demodulation coefficients here
            (modulated_conv2d(..., return_dcoefs=True)) and the fused kernel applies them while
            loading x, saving a full pass over the conv output.

    Returns:
        [N, C, out_h, out_w] in x's dtype, out = (in * up + pad0 + pad1 - (fu_taps - 1)
        - (fd_taps - 1) + (down - 1)) // down per axis.
    """
    _args.check_x(x)
    _args.check_filter("fu", fu, x)
    _args.check_filter("fd", fd, x)
    _args.check_same("b", b, x, shape=(x.shape[1],))
    if in_scale is not None:
        if not isinstance(in_scale, torch.Tensor) or in_scale.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"in_scale must be a float32 or float64 tensor or None, got {getattr(in_scale, 'dtype', type(in_scale))}")
        if in_scale.device != x.device:
            raise ValueError(f"in_scale is on {in_scale.device} but x is on {x.device}")
        if tuple(in_scale.shape) != tuple(x.shape[:2]):
            raise ValueError(f"in_scale must have shape {tuple(x.shape[:2])}, got {tuple(in_scale.shape)}")
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

    unsupported = None
    if impl in (None, "triton") and x.device.type == "cuda" or impl == "triton":
        from kernels._filtered_lrelu_triton import fused_covers

        unsupported = fused_covers(fu, fd, up, down, x)
    impl = choose("filtered_lrelu", x, impl, unsupported)
    if impl == "ref":
        return filtered_lrelu_ref(x, fu, fd, b, up, down, pad, gain, slope, clamp, flip_filter, in_scale)
    if impl == "triton":
        from kernels._filtered_lrelu_triton import correlation_filters, filtered_lrelu_fwd

        cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
        c1, c2 = correlation_filters(fu, fd, up, flip_filter, cdt, x.device)
        out_w = (x.shape[3] * up + pad[0] + pad[1] - (fuw - 1) - (fdw - 1) + (down - 1)) // down
        out_h = (x.shape[2] * up + pad[2] + pad[3] - (fuh - 1) - (fdh - 1) + (down - 1)) // down
        needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, b, in_scale))
        scale = None if in_scale is None else in_scale.to(cdt).contiguous()
        y, _ = filtered_lrelu_fwd(x, b, scale, c1, c2, up, down, pad[0], pad[2], out_h, out_w, float(gain), float(slope),
                                  None if clamp is None else float(clamp), needs_grad)
        return y
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    t = x.to(cdt)
    if in_scale is not None:
        t = t * in_scale.to(cdt)[:, :, None, None]
    if b is not None:
        t = bias_act(t, b.to(cdt), impl=impl)
    t = upfirdn2d(t, fu, up=up, padding=pad, gain=up**2, flip_filter=flip_filter, impl=impl)
    t = bias_act(t, act="lrelu", alpha=slope, gain=gain, clamp=clamp, impl=impl)
    return upfirdn2d(t, fd, down=down, flip_filter=flip_filter, impl=impl).to(x.dtype)
