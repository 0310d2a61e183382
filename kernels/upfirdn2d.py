"""upfirdn2d: upsample, FIR filter, downsample, with three implementations.

y = decimate(correlate(pad(zero_insert(x, up), padding), f'), down) * gain, where f' is the
filter flipped unless ``flip_filter`` (so the default is a true convolution), exactly as the
StyleGAN3 op. A 1-D filter is separable: it runs along x, then along y.

- 'triton': a polyphase kernel. Each output pixel reads only the taps that land on real input
  samples (ceil(taps / up) per axis), so the zero-inserted signal never exists in memory.
  Separable filters run as two 1-D passes with a float32 intermediate of the size
  [N, C, H_in, W_out]; 2-D filters run as one pass. Accumulation is float32 (float64 for
  float64 inputs); output is in the input dtype.
- 'cuda': conv_transpose2d (upsampling) / strided conv2d (downsampling) from cuDNN/ATen,
  computed in float32 (float64 for float64 input).
- 'ref': kernels/reference.py.

The backward of each path is the same op with the roles swapped (up <-> down, filter flipped,
padding mirrored), so gradients of any order work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import _args
from kernels._dispatch import choose
from kernels.reference import upfirdn2d_ref

MAX_TRITON_SCALE = 8  # up and down factors the Triton kernel covers: 1..8
MAX_TRITON_TAPS = 64  # filter taps per axis the Triton kernel covers


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl=None):
    """Pad, upsample, filter and downsample a batch of 2-D images.

    Args:
        x: [N, C, H, W] float16, bfloat16, float32 or float64.
        f: float32/float64 filter, 1-D [K] (separable) or 2-D [fh, fw], or None for one tap.
        up: upsampling factor, int or [x, y]; zeros are inserted between samples.
        down: downsampling factor, int or [x, y]; samples are dropped.
        padding: int, [x, y] or [x0, x1, y0, y1], applied after upsampling; negative crops.
        flip_filter: False for convolution (the default), True for correlation.
        gain: overall scaling of the signal magnitude.
        impl: 'triton', 'cuda', 'ref' or None (best for x's device).

    Returns:
        [N, C, out_h, out_w] in x's dtype, with
        out = (in * up + pad0 + pad1 - taps + down) // down per axis.
    """
    _args.check_x(x)
    _args.check_filter("f", f, x)
    upx, upy = _args.parse_scaling("up", up)
    downx, downy = _args.parse_scaling("down", down)
    pad = _args.parse_padding(padding)
    if not isinstance(flip_filter, bool):
        raise TypeError(f"flip_filter must be a bool, got {flip_filter!r}")
    if not isinstance(gain, (int, float)) or isinstance(gain, bool):
        raise TypeError(f"gain must be a number, got {gain!r}")
    _args.upfirdn2d_out_size(x.shape[3], x.shape[2], f, (upx, upy), (downx, downy), pad)
    fw, fh = _args.filter_size(f)
    unsupported = None
    if max(upx, upy, downx, downy) > MAX_TRITON_SCALE:
        unsupported = f"up/down factors above {MAX_TRITON_SCALE} are outside the Triton kernel"
    elif max(fw, fh) > MAX_TRITON_TAPS:
        unsupported = f"filters over {MAX_TRITON_TAPS} taps are outside the Triton kernel"
    impl = choose("upfirdn2d", x, impl, unsupported)
    if impl == "ref":
        return upfirdn2d_ref(x, f, (upx, upy), (downx, downy), pad, flip_filter, gain)
    # Fast paths take the correlation filter (flip and gain folded in) in the compute dtype.
    fdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    h = _args.filter_for(f, x, gain, flip_filter).to(fdt)
    px0, px1, py0, py1 = pad
    if impl == "cuda":  # computed in float32 (float64) like the other paths, then cast back
        t = x.to(fdt)
        if h.ndim == 2:
            t = _Upfirdn2dAten.apply(t, h, upx, upy, downx, downy, px0, px1, py0, py1)
        else:
            t = _Upfirdn2dAten.apply(t, h[None, :], upx, 1, downx, 1, px0, px1, 0, 0)
            t = _Upfirdn2dAten.apply(t, h[:, None], 1, upy, 1, downy, 0, 0, py0, py1)
        return t.to(x.dtype)
    from kernels._upfirdn2d_triton import upfirdn2d_pass

    if h.ndim == 2:
        return upfirdn2d_pass(x, h, upx, upy, downx, downy, px0, px1, py0, py1, x.dtype)
    # Separable: along x into a float32 intermediate (never zero-inserted), then along y.
    t = upfirdn2d_pass(x, h[None, :].contiguous(), upx, 1, downx, 1, px0, px1, 0, 0, fdt)
    return upfirdn2d_pass(t, h[:, None].contiguous(), 1, upy, 1, downy, 0, 0, py0, py1, x.dtype)


def grad_padding(in_w, in_h, out_w, out_h, fw, fh, upx, upy, downx, downy, px0, py0):
    """Padding of the transposed op: dx = upfirdn2d(dy, flip(f), up=down, down=up, this)."""
    return (
        fw - px0 - 1,
        in_w * upx - out_w * downx + px0 - upx + 1,
        fh - py0 - 1,
        in_h * upy - out_h * downy + py0 - upy + 1,
    )


def _aten_forward(x, h, upx, upy, downx, downy, px0, px1, py0, py1):
    """One pass with a 2-D correlation filter h [fh, fw] from ATen convolutions."""
    n, c, in_h, in_w = x.shape
    fh, fw = h.shape
    out_w, out_h = _args.upfirdn2d_out_size(in_w, in_h, h, (upx, upy), (downx, downy), (px0, px1, py0, py1))
    w = h.to(x.dtype)
    if upx == 1 and upy == 1:
        x = F.pad(x, [px0, px1, py0, py1])  # negative values crop
        return F.conv2d(x, w[None, None].expand(c, 1, fh, fw), stride=(downy, downx), groups=c)
    # Transposed convolution with the flipped filter = full convolution of the zero-inserted
    # signal; output index i of upfirdn2d reads its sample (taps - 1 - pad0) + i * down.
    t = F.conv_transpose2d(x, w.flip([0, 1])[None, None].expand(c, 1, fh, fw), stride=(upy, upx), groups=c)
    offy, offx = fh - 1 - py0, fw - 1 - px0
    lasty, lastx = offy + (out_h - 1) * downy, offx + (out_w - 1) * downx
    ly, lx = max(0, -offy), max(0, -offx)
    t = F.pad(t, [lx, max(0, lastx + 1 - t.shape[3]), ly, max(0, lasty + 1 - t.shape[2])])
    return t[:, :, offy + ly : lasty + ly + 1 : downy, offx + lx : lastx + lx + 1 : downx]


class _Upfirdn2dAten(torch.autograd.Function):
    """ATen pass whose backward is the same pass transposed: differentiable to any order."""

    @staticmethod
    def forward(ctx, x, h, upx, upy, downx, downy, px0, px1, py0, py1):
        y = _aten_forward(x, h, upx, upy, downx, downy, px0, px1, py0, py1)
        ctx.save_for_backward(h)
        ctx.args = (x.shape[3], x.shape[2], upx, upy, downx, downy, px0, py0)
        return y

    @staticmethod
    def backward(ctx, dy):
        (h,) = ctx.saved_tensors
        in_w, in_h, upx, upy, downx, downy, px0, py0 = ctx.args
        fh, fw = h.shape
        p = grad_padding(in_w, in_h, dy.shape[3], dy.shape[2], fw, fh, upx, upy, downx, downy, px0, py0)
        dx = _Upfirdn2dAten.apply(dy, h.flip([0, 1]), downx, downy, upx, upy, *p)
        return (dx,) + (None,) * 9
