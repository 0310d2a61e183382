"""modulated_conv2d: the StyleGAN2/3 modulated (and demodulated) convolution.

Definition (kernels/reference.py, the grouped form of the original implementation): with
demodulation, pre-normalize w per output channel and s by one batch-global RMS (fp16 headroom
only), build W_n = w * s[n], scale it to unit norm per output channel (eps 1e-8), then apply
input_gain and run one grouped convolution.

Implementations:
- 'triton': the shared-weight form below with the modulation (x * s) done by a Triton
  channel-scale kernel and cuDNN as the convolution engine. The demodulation scale pays most
  when it is not a pass of its own: with return_dcoefs=True the op returns the undemodulated
  output and d, and filtered_lrelu(..., in_scale=d) applies d inside its fused load.
- 'cuda': the equivalent shared-weight form with ATen ops: scale x by the styles, run one
  ordinary conv2d for the whole batch, multiply by d[n, o] = rsqrt(sum_i s[n,i]^2 sum_k
  w[o,i,k]^2 + 1e-8). No [N, O, I, k, k] tensor; the weight gradient is an ordinary conv
  weight gradient. input_gain scales x only and does not enter d, matching the grouped form.
- 'ref': the grouped form.
Weight and styles may be float32 while x is bfloat16/float16: they are combined in float32
and cast to x's dtype for the convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import _args
from kernels._dispatch import choose
from kernels.reference import modulated_conv2d_ref


def modulated_conv2d(x, weight, styles, demodulate=True, padding=0, input_gain=None, impl=None, return_dcoefs=False):
    """Per-sample modulated convolution.

    Args:
        x: [N, I, H, W] float16/bfloat16/float32/float64.
        weight: [O, I, kh, kw] shared weight (any float dtype, x's device).
        styles: [N, I] per-sample input-channel scales (any float dtype, x's device).
        demodulate: normalize each sample's modulated filter to unit norm per output channel.
        padding: int conv2d padding (k - 1 gives StyleGAN3's "full" convolution).
        input_gain: None, a number, or a tensor broadcastable to [N, I].
        impl: 'triton', 'cuda', 'ref' or None (best for x's device).
        return_dcoefs: return (y before demodulation, d [N, O] float32) instead of y, so the
            caller can fold d into filtered_lrelu(in_scale=d); d is None without demodulation.

    Returns:
        [N, O, H + 2 * padding - kh + 1, W + 2 * padding - kw + 1] in x's dtype (or the pair).
    """
    _args.check_x(x)
    _args.check_x(weight, ndim=4, name="weight")
    _args.check_x(styles, ndim=2, name="styles")
    for name, t in (("weight", weight), ("styles", styles)):
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    n, i = x.shape[:2]
    if weight.shape[1] != i:
        raise ValueError(f"weight has {weight.shape[1]} input channels but x has {i}")
    if tuple(styles.shape) != (n, i):
        raise ValueError(f"styles must have shape {(n, i)}, got {tuple(styles.shape)}")
    if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
        raise ValueError(f"padding must be a non-negative int, got {padding!r}")
    if not isinstance(demodulate, bool):
        raise TypeError(f"demodulate must be a bool, got {demodulate!r}")
    if input_gain is not None and isinstance(input_gain, torch.Tensor) and input_gain.device != x.device:
        raise ValueError(f"input_gain is on {input_gain.device} but x is on {x.device}")

    impl = choose("modulated_conv2d", x, impl)
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    if impl == "ref":
        y = modulated_conv2d_ref(x, weight, styles, demodulate, padding, input_gain)
        if not return_dcoefs:
            return y
        d = _coefficients(weight, styles, demodulate, input_gain, cdt)[2]
        return (y, None) if d is None else ((y.to(cdt) / d[:, :, None, None]).to(x.dtype), d)
    w, s, d = _coefficients(weight, styles, demodulate, input_gain, cdt)
    if impl == "triton":
        from kernels._scale_triton import scale_channels

        y = F.conv2d(scale_channels(x, s), w.to(x.dtype), padding=padding)
        if return_dcoefs:
            return y, d
        return y if d is None else scale_channels(y, d)
    y = F.conv2d(x * s[:, :, None, None].to(x.dtype), w.to(x.dtype), padding=padding)
    if return_dcoefs:
        return y, d
    return y if d is None else y * d[:, :, None, None].to(y.dtype)


def _coefficients(weight, styles, demodulate, input_gain, cdt):
    """(pre-normalized weight, input scale s [N, I], demodulation d [N, O] or None), in cdt."""
    w, s = weight.to(cdt), styles.to(cdt)
    d = None
    if demodulate:  # fp16 headroom in the original; demodulation cancels both factors up to eps
        w = w * w.square().mean([1, 2, 3], keepdim=True).rsqrt()
        s = s * s.square().mean().rsqrt()
        d = (s.square() @ w.square().sum([2, 3]).t() + 1e-8).rsqrt()
    if input_gain is not None:
        s = s * torch.as_tensor(input_gain, dtype=cdt, device=s.device).expand(s.shape)
    return w, s, d
