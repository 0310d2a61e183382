"""Triton polyphase upfirdn2d pass, registered with torch.library.

One pass correlates a 2-D filter h [fh, fw] (flip and gain already folded in) with the
zero-inserted, padded input and decimates the result. For output row oy the taps that hit real
samples are ty = ty0 + m * up with ty0 = (pad0 - oy * down) mod up, reading input row
iy = (oy * down + ty - pad0) / up: ceil(fh / up) taps per output row instead of fh, and no
zero-inserted buffer. Columns likewise. Strides are passed explicitly (any layout, including
expanded gradients with stride 0); batch and channel offsets are 64-bit.

Legend: x_NCHW input, h_HW correlation filter, y_NCHW output.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from kernels._args import upfirdn2d_out_size
from kernels._launch import LaunchConfig


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Upfirdn2dLaunch:
    """Launch settings of the pass; upfirdn2d_pass takes them as arguments so tests can sweep."""

    block_h: int = 16  # output rows per program
    block_w: int = 32  # output columns per program
    num_warps: int = 4


DEFAULT_LAUNCH = Upfirdn2dLaunch()


def launch_config(dtype: torch.dtype, upx: int, upy: int, downx: int, downy: int, fh: int, fw: int,
                  launch: Upfirdn2dLaunch = DEFAULT_LAUNCH) -> LaunchConfig:
    """Compile-time settings of one pass (x's dtype, filter [fh, fw]): the constexprs and warps
    of _upfirdn2d_kernel. upfirdn2d_pass uses it, and so does tests/kernels/aot_compile.py."""
    return LaunchConfig.of(
        UPX=upx, UPY=upy, DOWNX=downx, DOWNY=downy, FH=fh, FW=fw, ACC_F64=dtype == torch.float64,
        BLOCK_H=launch.block_h, BLOCK_W=launch.block_w, num_warps=launch.num_warps,
    )


def launch_args(x, h, y, upx, upy, downx, downy, px0, py0, launch: Upfirdn2dLaunch = DEFAULT_LAUNCH):
    """(grid, positional arguments, launch config) of one pass; h is already in the compute dtype."""
    n, c, in_h, in_w = x.shape
    out_h, out_w = y.shape[2:]
    cfg = launch_config(x.dtype, upx, upy, downx, downy, h.shape[0], h.shape[1], launch)
    grid = (n * c, triton.cdiv(out_h, launch.block_h) * triton.cdiv(out_w, launch.block_w))
    args = (x, h, y, c, in_h, in_w, out_h, out_w, *x.stride(), *y.stride(), px0, py0)
    return grid, args, cfg


@triton.jit
def _upfirdn2d_kernel(
    x_ptr, h_ptr, y_ptr,
    C, in_h, in_w, out_h, out_w,
    sxn, sxc, sxh, sxw, syn, syc, syh, syw,
    px0, py0,
    UPX: tl.constexpr, UPY: tl.constexpr, DOWNX: tl.constexpr, DOWNY: tl.constexpr,
    FH: tl.constexpr, FW: tl.constexpr, ACC_F64: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    pid_nc = tl.program_id(0)
    pid_t = tl.program_id(1)
    n = (pid_nc // C).to(tl.int64)
    c = (pid_nc % C).to(tl.int64)
    tiles_w = tl.cdiv(out_w, BLOCK_W)
    oy = (pid_t // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)
    ox = (pid_t % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)

    # Polyphase: first tap that lands on a real (non-inserted) sample, and the sample it reads.
    ty0 = (py0 - oy * DOWNY) % UPY
    ty0 = tl.where(ty0 < 0, ty0 + UPY, ty0)
    iy0 = (oy * DOWNY + ty0 - py0) // UPY  # exact division
    tx0 = (px0 - ox * DOWNX) % UPX
    tx0 = tl.where(tx0 < 0, tx0 + UPX, tx0)
    ix0 = (ox * DOWNX + tx0 - px0) // UPX

    x_base = x_ptr + n * sxn + c * sxc
    if ACC_F64:
        acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float64)
    else:
        acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    for my in range(0, (FH + UPY - 1) // UPY):
        ty = ty0 + my * UPY
        iy = iy0 + my
        valid_y = (ty < FH) & (iy >= 0) & (iy < in_h) & (oy < out_h)
        for mx in range(0, (FW + UPX - 1) // UPX):
            tx = tx0 + mx * UPX
            ix = ix0 + mx
            valid_x = (tx < FW) & (ix >= 0) & (ix < in_w) & (ox < out_w)
            m = valid_y[:, None] & valid_x[None, :]
            hv = tl.load(h_ptr + ty[:, None] * FW + tx[None, :], mask=m, other=0.0)
            xv = tl.load(x_base + iy[:, None].to(tl.int64) * sxh + ix[None, :].to(tl.int64) * sxw, mask=m, other=0.0)
            acc += hv.to(acc.dtype) * xv.to(acc.dtype)

    y_base = y_ptr + n * syn + c * syc
    y_off = oy[:, None].to(tl.int64) * syh + ox[None, :].to(tl.int64) * syw
    y_mask = (oy[:, None] < out_h) & (ox[None, :] < out_w)
    tl.store(y_base + y_off, acc.to(y_ptr.dtype.element_ty), mask=y_mask)


@triton_op("sgxl::upfirdn2d_pass", mutates_args={})
def upfirdn2d_pass(
    x: torch.Tensor, h: torch.Tensor,
    upx: int, upy: int, downx: int, downy: int,
    px0: int, px1: int, py0: int, py1: int,
    out_dtype: torch.dtype,
    block_h: int = DEFAULT_LAUNCH.block_h,
    block_w: int = DEFAULT_LAUNCH.block_w,
    num_warps: int = DEFAULT_LAUNCH.num_warps,
) -> torch.Tensor:
    """One polyphase pass with the correlation filter h [fh, fw]; see the module docstring.

    The launch arguments default to DEFAULT_LAUNCH; tests sweep them on purpose.
    """
    n, c, in_h, in_w = x.shape
    out_w, out_h = upfirdn2d_out_size(in_w, in_h, h, (upx, upy), (downx, downy), (px0, px1, py0, py1))
    fmt = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() else torch.contiguous_format
    y = torch.empty((n, c, out_h, out_w), dtype=out_dtype, device=x.device, memory_format=fmt)
    if y.numel() == 0:
        return y
    h = h.to(torch.float64 if x.dtype == torch.float64 else torch.float32).contiguous()
    launch = Upfirdn2dLaunch(block_h=block_h, block_w=block_w, num_warps=num_warps)
    grid, args, cfg = launch_args(x, h, y, upx, upy, downx, downy, px0, py0, launch)
    wrap_triton(_upfirdn2d_kernel)[grid](*args, **cfg.launch_kwargs())
    return y


def _setup_context(ctx, inputs, output):
    x, h, upx, upy, downx, downy, px0, px1, py0, py1, out_dtype, *launch = inputs
    ctx.save_for_backward(h)
    ctx.args = (x.shape[3], x.shape[2], upx, upy, downx, downy, px0, py0, x.dtype)
    ctx.launch = launch


def _backward(ctx, dy):
    from kernels.upfirdn2d import grad_padding

    (h,) = ctx.saved_tensors
    in_w, in_h, upx, upy, downx, downy, px0, py0, x_dtype = ctx.args
    fh, fw = h.shape
    p = grad_padding(in_w, in_h, dy.shape[3], dy.shape[2], fw, fh, upx, upy, downx, downy, px0, py0)
    dx = upfirdn2d_pass(dy, h.flip([0, 1]).contiguous(), downx, downy, upx, upy, *p, x_dtype, *ctx.launch)
    return (dx,) + (None,) * (10 + len(ctx.launch))


upfirdn2d_pass.register_autograd(_backward, setup_context=_setup_context)
