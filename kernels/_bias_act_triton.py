"""Triton bias_act for piecewise-linear activations, registered with torch.library.

The kernels walk the tensor's storage linearly. That is valid for any dense layout
(contiguous or channels_last): the bias index of storage offset k is (k // stride[dim]) %
size[dim]. Other layouts (slices, expanded gradients with stride 0) are copied to a dense
tensor first, deliberately. Arithmetic is float32 (float64 for float64 input).

Activation encoding: y = where(z >= 0, z, z * slope) * gain, z = x + b, with slope 1 for
linear, 0 for relu and alpha for lrelu; clamp < 0 means no clamp.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from kernels._launch import LaunchConfig, split_f32

BLOCK = 1024


@triton.jit
def _bias_act_kernel(
    x_ptr, b_ptr, dy_ptr, out_ptr, numel, stride_dim, size_dim,
    slope_hi, slope_lo, gain_hi, gain_lo, clamp_hi, clamp_lo,
    HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr, GRAD: tl.constexpr, F64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # Scalars arrive as float32 pairs (hi + lo) so that float64 inputs keep float64 accuracy.
    if F64:
        slope = tl.cast(slope_hi, tl.float64) + tl.cast(slope_lo, tl.float64)
        gain = tl.cast(gain_hi, tl.float64) + tl.cast(gain_lo, tl.float64)
        clamp = tl.cast(clamp_hi, tl.float64) + tl.cast(clamp_lo, tl.float64)
    else:
        slope = slope_hi
        gain = gain_hi
        clamp = clamp_hi
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    if F64:
        z = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float64)
    else:
        z = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        ch = (offs // stride_dim) % size_dim
        z += tl.load(b_ptr + ch, mask=mask, other=0.0).to(z.dtype)
    s = tl.where(z >= 0, 1.0, slope).to(z.dtype) * gain
    y = z * s
    if GRAD:
        # d y / d x = s where the clamp does not bite, 0 where it does.
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(z.dtype)
        if HAS_CLAMP:
            s = tl.where(tl.abs(y) < clamp, s, 0.0)
        out = dy * s
    else:
        out = y
        if HAS_CLAMP:
            out = tl.minimum(tl.maximum(out, -clamp), clamp)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def _dense(t: torch.Tensor) -> torch.Tensor:
    if t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        return t
    return t.contiguous()


def launch_config(dtype: torch.dtype, *, has_bias: bool, has_clamp: bool, grad: bool) -> LaunchConfig:
    """Compile-time settings of one launch: the constexprs and warps of _bias_act_kernel.
    _launch uses it, and so does tests/kernels/aot_compile.py."""
    return LaunchConfig.of(HAS_BIAS=has_bias, HAS_CLAMP=has_clamp, GRAD=grad, F64=dtype == torch.float64, BLOCK=BLOCK,
                           num_warps=4)  # Triton's default, stated so the AOT test compiles the same


def launch_args(x, b, dy, out, dim, slope, gain, clamp):
    """(grid, positional arguments, launch config) of one launch over x's dense storage."""
    numel = x.numel()
    size_dim = x.shape[dim]
    stride_dim = x.stride(dim) if size_dim > 1 else 1
    cfg = launch_config(x.dtype, has_bias=b is not None, has_clamp=clamp >= 0, grad=dy is not None)
    args = (x, b if b is not None else x, dy if dy is not None else x, out,
            numel, stride_dim, size_dim, *split_f32(slope), *split_f32(gain), *split_f32(clamp))
    return (triton.cdiv(numel, BLOCK),), args, cfg


def _launch(x, b, dy, out, dim, slope, gain, clamp):
    if x.numel() == 0:
        return
    grid, args, cfg = launch_args(x, b, dy, out, dim, slope, gain, clamp)
    wrap_triton(_bias_act_kernel)[grid](*args, **cfg.launch_kwargs())


@triton_op("sgxl::bias_act_fwd", mutates_args={})
def bias_act_fwd(x: torch.Tensor, b: torch.Tensor | None, dim: int, slope: float, gain: float,
                 clamp: float) -> torch.Tensor:
    x = _dense(x)
    y = torch.empty_like(x)
    _launch(x, b, None, y, dim, slope, gain, clamp)
    return y


@triton_op("sgxl::bias_act_grad", mutates_args={})
def bias_act_grad(dy: torch.Tensor, x: torch.Tensor, b: torch.Tensor | None, dim: int, slope: float,
                  gain: float, clamp: float) -> torch.Tensor:
    """d(bias_act)/dx applied to dy; the result has x's dtype and layout."""
    x = _dense(x)
    if dy.stride() != x.stride() or dy.dtype != x.dtype:
        dy = torch.empty_like(x).copy_(dy)
    dx = torch.empty_like(x)
    _launch(x, b, dy, dx, dim, slope, gain, clamp)
    return dx


def _reduce_to_bias(dx: torch.Tensor, dim: int) -> torch.Tensor:
    dims = [d for d in range(dx.ndim) if d != dim]
    return dx.sum(dims) if dims else dx


def _fwd_setup(ctx, inputs, output):
    x, b, dim, slope, gain, clamp = inputs
    ctx.save_for_backward(x, b)
    ctx.args = (dim, slope, gain, clamp)


def _fwd_backward(ctx, dy):
    x, b = ctx.saved_tensors
    dim = ctx.args[0]
    dx = bias_act_grad(dy, x, b, *ctx.args)
    db = _reduce_to_bias(dx, dim) if b is not None and ctx.needs_input_grad[1] else None
    return dx, db, None, None, None, None


def _grad_setup(ctx, inputs, output):
    dy, x, b, dim, slope, gain, clamp = inputs
    ctx.save_for_backward(x, b)
    ctx.args = (dim, slope, gain, clamp)


def _grad_backward(ctx, ddx):
    # The gradient is dy * mask(x + b) with a mask that is piecewise constant in x and b:
    # its derivative in dy is the same op, in x and b it is zero almost everywhere.
    x, b = ctx.saved_tensors
    return bias_act_grad(ddx, x, b, *ctx.args), None, None, None, None, None, None


bias_act_fwd.register_autograd(_fwd_backward, setup_context=_fwd_setup)
bias_act_grad.register_autograd(_grad_backward, setup_context=_grad_setup)
