"""Plain-PyTorch reference implementations of every op in kernels/.

These are the definitions the fast paths are tested and benchmarked against. They are written
to be read: zero insertion is materialized, the modulated convolution is the grouped form, and
nothing is fused. Autograd comes from PyTorch, so every op is differentiable to any order.

Precision: float32 and float64 inputs are computed in their own dtype; float16 and bfloat16
inputs are computed in float32 and the result is cast back, so a low-precision fast path is
compared against a float32 computation from the same inputs.

Tensor legend: x_NCHW activations, f filters ([K] separable or [fh, fw]), w_OIkk conv weights,
s_NI styles, b_C biases.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernels._args import filter_for, filter_size, parse_padding, parse_scaling

# name -> (function of x and alpha, default alpha, default gain)
ACTIVATIONS = {
    "linear": (lambda x, a: x, 0.0, 1.0),
    "relu": (lambda x, a: torch.where(x >= 0, x, torch.zeros_like(x)), 0.0, math.sqrt(2)),
    "lrelu": (lambda x, a: torch.where(x >= 0, x, x * a), 0.2, math.sqrt(2)),
    "tanh": (lambda x, a: torch.tanh(x), 0.0, 1.0),
    "sigmoid": (lambda x, a: torch.sigmoid(x), 0.0, 1.0),
    "elu": (lambda x, a: F.elu(x), 0.0, 1.0),
    "selu": (lambda x, a: F.selu(x), 0.0, 1.0),
    "softplus": (lambda x, a: F.softplus(x), 0.0, 1.0),
    "swish": (lambda x, a: torch.sigmoid(x) * x, 0.0, math.sqrt(2)),
}


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def upfirdn2d_ref(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    """Upsample by zero insertion, pad (negative crops), FIR filter, downsample by decimation.

    Args:
        x: [N, C, H, W] input.
        f: 1-D filter [K] (applied separably along both axes) or 2-D filter [fh, fw]; None = 1 tap.
        up, down: int or [x, y] integer factors.
        padding: int, [x, y] or [x0, x1, y0, y1]; applied after upsampling.
        flip_filter: False = convolution (filter flipped), True = correlation.
        gain: overall signal gain; a 1-D filter gets gain ** 0.5 per axis.

    Returns:
        [N, C, out_h, out_w] in x's dtype.
    """
    upx, upy = parse_scaling("up", up)
    downx, downy = parse_scaling("down", down)
    px0, px1, py0, py1 = parse_padding(padding)
    dtype = x.dtype
    x = x.to(_compute_dtype(x))
    n, c, h, w = x.shape
    # Zero insertion: every input sample followed by (up - 1) zeros along each axis.
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    x = x.reshape(n, c, h * upy, w * upx)
    # Pad, then crop for negative padding.
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    fw, fh = filter_size(f)
    if x.shape[2] < fh or x.shape[3] < fw:
        raise ValueError(f"padding {padding!r} leaves an input smaller than the {fw}x{fh} filter")
    # Correlate with the (flipped unless flip_filter) filter, depthwise.
    f = filter_for(f, x, gain, flip_filter).to(x.dtype)
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].expand(c, 1, *f.shape), groups=c)
    else:
        x = F.conv2d(x, f[None, None, None, :].expand(c, 1, 1, -1), groups=c)
        x = F.conv2d(x, f[None, None, :, None].expand(c, 1, -1, 1), groups=c)
    # Decimate.
    return x[:, :, ::downy, ::downx].to(dtype)


def bias_act_ref(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    """y = clamp(act(x + b) * gain, -clamp, clamp), with b broadcast along `dim`.

    Args:
        x: input of any shape.
        b: bias [x.shape[dim]] or None.
        dim: the dimension b runs along.
        act: a name in ACTIVATIONS.
        alpha: activation parameter (lrelu slope); None = the activation's default.
        gain: output scale; None = the activation's default (sqrt(2) for relu, lrelu, swish).
        clamp: clamp the output to [-clamp, clamp]; None = no clamping.
    """
    fn, def_alpha, def_gain = ACTIVATIONS[act]
    alpha = def_alpha if alpha is None else float(alpha)
    gain = def_gain if gain is None else float(gain)
    dtype = x.dtype
    x = x.to(_compute_dtype(x))
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + b.to(x.dtype).reshape(shape)
    x = fn(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:  # |x| >= clamp is clamped: zero gradient there
        x = torch.where(x.abs() < clamp, x, x.sign() * clamp)
    return x.to(dtype)


def filtered_lrelu_ref(x, fu=None, fd=None, b=None, up=1, down=1, padding=0, gain=math.sqrt(2),
                       slope=0.2, clamp=None, flip_filter=False, in_scale=None):
    """Scale, bias, upsample (FIR fu, gain up**2), leaky ReLU with gain and clamp, downsample (FIR fd).

    in_scale [N, C] (optional) multiplies x per sample and channel before the bias: a modulated
    convolution's demodulation coefficients, folded here.

    The upsampled intermediate is float32 (float64 for float64 input). Output size per axis:
    (in * up + pad0 + pad1 - (fu_taps - 1) - (fd_taps - 1) + (down - 1)) // down.
    """
    if not isinstance(up, int) or not isinstance(down, int):
        raise TypeError(f"up and down must be ints, got up={up!r}, down={down!r}")
    dtype = x.dtype
    x = x.to(_compute_dtype(x))
    if in_scale is not None:
        x = x * in_scale.to(x.dtype)[:, :, None, None]
    x = bias_act_ref(x, b)
    x = upfirdn2d_ref(x, fu, up=up, padding=padding, gain=up**2, flip_filter=flip_filter)
    x = bias_act_ref(x, act="lrelu", alpha=slope, gain=gain, clamp=clamp)
    x = upfirdn2d_ref(x, fd, down=down, flip_filter=flip_filter)
    return x.to(dtype)


def modulated_conv2d_ref(x, weight, styles, demodulate=True, padding=0, input_gain=None):
    """Modulated convolution in the grouped form of the original implementation.

    Args:
        x: [N, I, H, W] input.
        weight: [O, I, kh, kw] shared weight.
        styles: [N, I] per-sample input-channel scales.
        demodulate: pre-normalize weight and styles, then scale each sample's filter to unit norm.
        padding: conv2d padding (k - 1 for the "full" convolution of StyleGAN3).
        input_gain: None, a scalar, [I] or [N, I] extra input scale.

    Returns:
        [N, O, H', W'] in x's dtype.
    """
    dtype = x.dtype
    cdt = _compute_dtype(x)
    x, w, s = x.to(cdt), weight.to(cdt), styles.to(cdt)
    n, i = s.shape
    o, _, kh, kw = w.shape
    if demodulate:  # fp16 headroom only; demodulation cancels both factors up to eps.
        w = w * w.square().mean([1, 2, 3], keepdim=True).rsqrt()
        s = s * s.square().mean().rsqrt()
    w = w[None] * s[:, None, :, None, None]  # [N, O, I, kh, kw]
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()[:, :, None, None, None]
    if input_gain is not None:
        g = torch.as_tensor(input_gain, dtype=cdt, device=x.device).expand(n, i)
        w = w * g[:, None, :, None, None]
    y = F.conv2d(x.reshape(1, n * i, *x.shape[2:]), w.reshape(n * o, i, kh, kw), padding=padding, groups=n)
    return y.reshape(n, o, *y.shape[2:]).to(dtype)
