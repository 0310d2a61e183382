"""Triton per-sample, per-channel scaling y = x * s[n, c], registered with torch.library.

The modulation step of modulated_conv2d's shared-weight form. Walks dense storage linearly
(contiguous or channels_last): n = (k // stride_n) % N and c = (k // stride_c) % C. Other
layouts are copied to dense first, deliberately. Arithmetic in float32 (float64 for float64).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from kernels._launch import LaunchConfig

BLOCK = 1024


@triton.jit
def _scale_kernel(x_ptr, s_ptr, y_ptr, numel, N, C, stride_n, stride_c, F64: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    n = (offs // stride_n) % N
    c = (offs // stride_c) % C
    if F64:
        v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float64) * tl.load(s_ptr + n * C + c, mask=mask, other=0.0).to(tl.float64)
    else:
        v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) * tl.load(s_ptr + n * C + c, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, v.to(y_ptr.dtype.element_ty), mask=mask)


def _dense(t: torch.Tensor) -> torch.Tensor:
    if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last):
        return t
    return t.contiguous()


def launch_config(dtype: torch.dtype) -> LaunchConfig:
    """Compile-time settings of one launch (x's dtype): the constexprs and warps of _scale_kernel.
    scale_channels uses it, and so does tests/kernels/aot_compile.py."""
    return LaunchConfig.of(F64=dtype == torch.float64, BLOCK=BLOCK,
                           num_warps=4)  # Triton's default, stated so the AOT test compiles the same


def launch_args(x, s, y):
    """(grid, positional arguments, launch config) of one launch over x's dense storage."""
    n, c = x.shape[:2]
    args = (x, s, y, x.numel(), n, c, x.stride(0) if n > 1 else 1, x.stride(1) if c > 1 else 1)
    return (triton.cdiv(x.numel(), BLOCK),), args, launch_config(x.dtype)


@triton_op("sgxl::scale_channels", mutates_args={})
def scale_channels(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x [N, C, H, W] times s [N, C] (float32/float64), in x's dtype and layout."""
    x = _dense(x)
    s = s.contiguous()
    y = torch.empty_like(x)
    if x.numel():
        grid, args, cfg = launch_args(x, s, y)
        wrap_triton(_scale_kernel)[grid](*args, **cfg.launch_kwargs())
    return y


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, dy):
    x, s = ctx.saved_tensors
    dx = scale_channels(dy, s) if ctx.needs_input_grad[0] else None
    ds = (dy.to(s.dtype) * x.to(s.dtype)).sum([2, 3]) if ctx.needs_input_grad[1] else None
    return dx, ds


scale_channels.register_autograd(_backward, setup_context=_setup)
