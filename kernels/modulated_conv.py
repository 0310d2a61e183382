"""modulated_conv2d: the StyleGAN2/3 modulated (and demodulated) convolution.

Definition (kernels/reference.py, the grouped form of the original implementation): with
demodulation, pre-normalize w per output channel and s by one batch-global RMS (fp16 headroom
only), build W_n = w * s[n], scale it to unit norm per output channel (eps 1e-8), then apply
input_gain and run one grouped convolution.

Implementations today:
- 'cuda': the equivalent shared-weight form: scale x by the styles, run one ordinary conv2d
  for the whole batch, multiply by d[n, o] = rsqrt(sum_i s[n,i]^2 sum_k w[o,i,k]^2 + 1e-8).
  No [N, O, I, k, k] tensor; the weight gradient is an ordinary conv weight gradient.
  input_gain scales x only and does not enter d, matching the grouped form's order.
- 'triton': not yet written (next kernel issue); falls back to 'cuda' with one warning.
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


def modulated_conv2d(x, weight, styles, demodulate=True, padding=0, input_gain=None, impl=None):
    """Per-sample modulated convolution.

    Args:
        x: [N, I, H, W] float16/bfloat16/float32/float64.
        weight: [O, I, kh, kw] shared weight (any float dtype, x's device).
        styles: [N, I] per-sample input-channel scales (any float dtype, x's device).
        demodulate: normalize each sample's modulated filter to unit norm per output channel.
        padding: int conv2d padding (k - 1 gives StyleGAN3's "full" convolution).
        input_gain: None, a number, or a tensor broadcastable to [N, I].
        impl: 'triton', 'cuda', 'ref' or None (best for x's device).

    Returns:
        [N, O, H + 2 * padding - kh + 1, W + 2 * padding - kw + 1] in x's dtype.
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

    impl = choose("modulated_conv2d", x, impl, "the Triton modulated_conv2d is not written yet")
    if impl == "ref":
        return modulated_conv2d_ref(x, weight, styles, demodulate, padding, input_gain)
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    w, s = weight.to(cdt), styles.to(cdt)
    if demodulate:
        w = w * w.square().mean([1, 2, 3], keepdim=True).rsqrt()
        s = s * s.square().mean().rsqrt()
        d = (s.square() @ w.square().sum([2, 3]).t() + 1e-8).rsqrt()  # [N, O]
    if input_gain is not None:
        s = s * torch.as_tensor(input_gain, dtype=cdt, device=x.device).expand(n, i)
    y = F.conv2d(x * s[:, :, None, None].to(x.dtype), w.to(x.dtype), padding=padding)
    if demodulate:
        y = y * d[:, :, None, None].to(y.dtype)
    return y
