"""Fused Triton filtered_lrelu: one pass per output tile, the upsampled signal stays on chip.

Geometry, per axis, of one pass with correlation filters c1 [K1] and c2 [K2]:

    u(s) = sum_i src[i] * c1[i * U1 + p1 - s]             (zero-insert by U1, pad p1, FIR)
    a(s) = act(u(s) [+ bias])  or  u(s) * g(mask(s))       (MODE 0: lrelu, MODE 1: mask)
    y[o] = sum_t c2[t] * a(o * D2 + off2 + t)              (FIR, decimate by D2)

Both FIR stages of a tile are matrix products on chip: a banded [inputs x positions] matrix
built from c1 (the polyphase structure lives in its band: no zero-inserted buffer exists), the
activation on the [positions x positions] fp32 tile, then a banded [positions x outputs]
matrix built from c2. Separable filters give four tl.dot calls per tile:
    T1 = X @ A1x;  U = A1y @ T1;  V = act(U);  W = V @ D2x;  Y = D2y @ W.

MODE 0 (forward) writes a 2-bit code per upsampled position when a gradient is needed:
0 = negative branch (slope), 1 = positive branch (x == 0 included), 2 = clamped (zero
gradient). Four codes per byte along x, mask [N*C, S_h, ceil(S_w / 4)] uint8, written only
for the positions a tile owns, so tiles never overlap.

MODE 1 multiplies by gain * slope(code) instead of computing the activation. It is linear in
its input, and the adjoint of a MODE 1 pass with geometry G is a MODE 1 pass with
transpose(G) = (flip(c2), D2, K2 - 1 + off2, flip(c1), U1, p1 - K1 + 1); transpose is an
involution. Hence: backward of the forward = MODE 1 with transpose(G_fwd); backward of any
MODE 1 pass = MODE 1 with the transposed geometry. Gradients of every order follow.

Legend: src_NCHW input (x or a gradient), y_NCHW output, c1/c2 correlation filters with flip
and gains folded in.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from kernels._launch import LaunchConfig, next_pow2, split_f32

TILE = 16  # outputs per tile and axis; TILE * D2 is a multiple of 4, so mask bytes never straddle tiles
_BIG = tl.constexpr(1 << 20)  # makes floor division exact for the bounded negative numerators that occur


@triton.jit
def _scalar(hi, lo, F64: tl.constexpr):
    if F64:
        return tl.cast(hi, tl.float64) + tl.cast(lo, tl.float64)
    return tl.cast(hi, tl.float32)


@triton.jit
def _flrelu_kernel(
    src_ptr, b_ptr, scale_ptr, mask_ptr, c1_ptr, c2_ptr, y_ptr,
    C, in_h, in_w, out_h, out_w, s_h, s_w, mask_row,
    ss_n, ss_c, ss_h, ss_w, sy_n, sy_c, sy_h, sy_w,
    p1x, p1y, off2x, off2y,
    gain_hi, gain_lo, slope_hi, slope_lo, clamp_hi, clamp_lo,
    U1: tl.constexpr, D2: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
    T: tl.constexpr, SP: tl.constexpr, IP: tl.constexpr,
    MODE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_CLAMP: tl.constexpr, WRITE_MASK: tl.constexpr,
    F64: tl.constexpr, PREC: tl.constexpr,
):
    pid_nc = tl.program_id(0)
    pid_t = tl.program_id(1)
    n = (pid_nc // C).to(tl.int64)
    c = (pid_nc % C).to(tl.int64)
    tiles_w = tl.cdiv(out_w, T)
    o0y = (pid_t // tiles_w) * T
    o0x = (pid_t % tiles_w) * T
    s0y = o0y * D2 + off2y
    s0x = o0x * D2 + off2x
    # First input sample of the tile: ceil((s0 - p1) / U1), exact for negative numerators too.
    i0y = (s0y - p1y + U1 - 1 + _BIG * U1) // U1 - _BIG
    i0x = (s0x - p1x + U1 - 1 + _BIG * U1) // U1 - _BIG
    gain = _scalar(gain_hi, gain_lo, F64)
    slope = _scalar(slope_hi, slope_lo, F64)
    clamp = _scalar(clamp_hi, clamp_lo, F64)
    if F64:
        dt: tl.constexpr = tl.float64
    else:
        dt: tl.constexpr = tl.float32

    ii = tl.arange(0, IP)
    ss = tl.arange(0, SP)
    oo = tl.arange(0, T)
    iy = i0y + ii
    ix = i0x + ii
    valid = ((iy >= 0) & (iy < in_h))[:, None] & ((ix >= 0) & (ix < in_w))[None, :]
    src_off = n * ss_n + c * ss_c + iy[:, None].to(tl.int64) * ss_h + ix[None, :].to(tl.int64) * ss_w
    x = tl.load(src_ptr + src_off, mask=valid, other=0.0).to(dt)
    if HAS_SCALE:  # a modulated conv's demodulation coefficient d[n, c], folded into the load
        x = x * tl.load(scale_ptr + pid_nc).to(dt)
    if HAS_BIAS:  # bias on real samples only: inserted zeros and padding stay zero
        x = tl.where(valid, x + tl.load(b_ptr + c).to(dt), 0.0)

    # Up stage: banded matrices from c1 (polyphase structure in the band).
    t1x = (ix[:, None] * U1 + p1x) - (s0x + ss[None, :])  # [IP, SP]
    a1x = tl.load(c1_ptr + t1x, mask=(t1x >= 0) & (t1x < K1), other=0.0).to(dt)
    t1y = (iy[None, :] * U1 + p1y) - (s0y + ss[:, None])  # [SP, IP]
    a1y = tl.load(c1_ptr + t1y, mask=(t1y >= 0) & (t1y < K1), other=0.0).to(dt)
    u = tl.dot(x, a1x, input_precision=PREC, out_dtype=dt)  # [IP, SP]
    u = tl.dot(a1y, u, input_precision=PREC, out_dtype=dt)  # [SP, SP], fp32 on chip

    sy = s0y + ss
    sx = s0x + ss
    inside = ((sy >= 0) & (sy < s_h))[:, None] & ((sx >= 0) & (sx < s_w))[None, :]
    plane = pid_nc.to(tl.int64) * s_h * mask_row
    if MODE == 0:
        pos = u >= 0
        v = tl.where(pos, u, u * slope) * gain
        code = tl.where(pos, 1, 0)
        if HAS_CLAMP:
            clamped = tl.abs(v) >= clamp
            v = tl.where(clamped, tl.where(v > 0, clamp, tl.where(v < 0, -clamp, 0.0)), v)
            code = tl.where(clamped, 2, code)
        if WRITE_MASK:
            # Owned positions: [o0 * D2, (o0 + T) * D2), the last tile up to the end of the mask.
            last_y = o0y + T >= out_h
            last_x = o0x + T >= out_w
            own_y = (ss < T * D2) | last_y
            sh = (tl.arange(0, 4) * 2).to(tl.uint8)
            packed = tl.sum(code.to(tl.uint8).reshape(SP, SP // 4, 4) << sh[None, None, :], axis=2).to(tl.uint8)
            bx = s0x // 4 + tl.arange(0, SP // 4)
            own_bx = (tl.arange(0, SP // 4) < (T * D2) // 4) | last_x
            m_ok = (own_y & (sy >= 0) & (sy < s_h))[:, None] & (own_bx & (bx * 4 < s_w))[None, :]
            tl.store(mask_ptr + plane + sy[:, None].to(tl.int64) * mask_row + bx[None, :], packed, mask=m_ok)
    else:
        byte = tl.load(mask_ptr + plane + sy[:, None].to(tl.int64) * mask_row + (sx[None, :] // 4), mask=inside, other=0)
        code = (byte.to(tl.int32) >> ((sx[None, :] % 4) * 2)) & 3
        code = tl.where(inside, code, 2)
        g = tl.where(code == 1, gain, tl.where(code == 0, gain * slope, 0.0))
        v = u * g

    # Down stage: banded matrices from c2; s0 = o0 * D2 + off2 makes them tile-independent.
    t2x = ss[:, None] - oo[None, :] * D2  # [SP, T]
    d2x = tl.load(c2_ptr + t2x, mask=(t2x >= 0) & (t2x < K2), other=0.0).to(dt)
    t2y = ss[None, :] - oo[:, None] * D2  # [T, SP]
    d2y = tl.load(c2_ptr + t2y, mask=(t2y >= 0) & (t2y < K2), other=0.0).to(dt)
    w = tl.dot(v.to(dt), d2x, input_precision=PREC, out_dtype=dt)  # [SP, T]
    y = tl.dot(d2y, w, input_precision=PREC, out_dtype=dt)  # [T, T]

    oy = o0y + oo
    ox = o0x + oo
    y_off = n * sy_n + c * sy_c + oy[:, None].to(tl.int64) * sy_h + ox[None, :].to(tl.int64) * sy_w
    tl.store(y_ptr + y_off, y.to(y_ptr.dtype.element_ty), mask=(oy < out_h)[:, None] & (ox < out_w)[None, :])


def tile_sizes(u1: int, d2: int, k1: int, k2: int) -> tuple[int, int]:
    """(SP, IP): padded positions and inputs per tile axis for TILE outputs."""
    s = max((TILE - 1) * d2 + k2, TILE * d2)
    sp = next_pow2(max(16, s))
    ip = next_pow2(max(16, -(-(s + k1 - 1) // u1)))
    return sp, ip


def _precision(dtype: torch.dtype) -> str:
    # tf32x3 keeps float32 accuracy on tensor cores; bf16 outputs tolerate plain tf32.
    return {torch.float64: "ieee", torch.bfloat16: "tf32"}.get(dtype, "tf32x3")


def launch_config(mode: int, dtype: torch.dtype, u1: int, d2: int, k1: int, k2: int, *, has_bias: bool,
                  has_scale: bool, has_clamp: bool, write_mask: bool) -> LaunchConfig:
    """Compile-time settings of one pass: the constexprs and warps of _flrelu_kernel.

    The one place they are decided: _launch uses it, and so does tests/kernels/aot_compile.py.
    dtype is the source's; k1, k2 are the taps of c1, c2; the clamp only exists in MODE 0.
    """
    sp, ip = tile_sizes(u1, d2, k1, k2)
    return LaunchConfig.of(
        U1=u1, D2=d2, K1=k1, K2=k2, T=TILE, SP=sp, IP=ip,
        MODE=mode, HAS_BIAS=has_bias, HAS_SCALE=has_scale, HAS_CLAMP=has_clamp and mode == 0, WRITE_MASK=write_mask,
        F64=dtype == torch.float64, PREC=_precision(dtype), num_warps=8 if sp >= 128 else 4,
    )


def launch_args(mode, src, b, scale, mask, c1, c2, y, u1, p1x, p1y, d2, off2x, off2y, s_h, s_w, gain, slope, clamp,
                write_mask) -> tuple[tuple[int, int], tuple, LaunchConfig]:
    """(grid, positional arguments, launch config) of one pass; the tensors may be on any device."""
    n, c, in_h, in_w = src.shape
    out_h, out_w = y.shape[2:]
    cfg = launch_config(mode, src.dtype, u1, d2, c1.shape[0], c2.shape[0], has_bias=b is not None,
                        has_scale=scale is not None, has_clamp=clamp is not None, write_mask=write_mask)
    grid = (n * c, triton.cdiv(out_h, TILE) * triton.cdiv(out_w, TILE))
    args = (
        src, b if b is not None else src, scale if scale is not None else src, mask, c1, c2, y,
        c, in_h, in_w, out_h, out_w, s_h, s_w, mask.shape[-1] if mask.numel() else 1,
        *src.stride(), *y.stride(),
        p1x, p1y, off2x, off2y,
        *split_f32(gain), *split_f32(slope), *split_f32(-1.0 if clamp is None else clamp),
    )
    return grid, args, cfg


def _launch(mode, src, b, scale, mask, c1, c2, y, u1, p1x, p1y, d2, off2x, off2y, s_h, s_w, gain, slope, clamp, write_mask):
    if y.numel() == 0:
        return
    grid, args, cfg = launch_args(mode, src, b, scale, mask, c1, c2, y, u1, p1x, p1y, d2, off2x, off2y, s_h, s_w,
                                  gain, slope, clamp, write_mask)
    wrap_triton(_flrelu_kernel)[grid](*args, **cfg.launch_kwargs())


@triton_op("sgxl::filtered_lrelu_fwd", mutates_args={})
def filtered_lrelu_fwd(
    x: torch.Tensor, b: torch.Tensor | None, in_scale: torch.Tensor | None, c1: torch.Tensor, c2: torch.Tensor,
    up: int, down: int, px0: int, py0: int, out_h: int, out_w: int,
    gain: float, slope: float, clamp: float | None, write_mask: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward pass (MODE 0) of act(x * in_scale[n, c] + b[c]). Returns y and the sign/clamp
    mask (empty unless write_mask). in_scale is [N, C] float32 (contiguous) or None."""
    n, ch = x.shape[:2]
    s_h = (out_h - 1) * down + c2.shape[0]
    s_w = (out_w - 1) * down + c2.shape[0]
    y = torch.empty((n, ch, out_h, out_w), dtype=x.dtype, device=x.device)
    shape = (n * ch, s_h, (s_w + 3) // 4) if write_mask else (0,)
    mask = torch.empty(shape, dtype=torch.uint8, device=x.device)
    _launch(0, x, b, in_scale, mask, c1, c2, y, up, px0, py0, down, 0, 0, s_h, s_w, gain, slope, clamp, write_mask)
    return y, mask


@triton_op("sgxl::filtered_lrelu_masked", mutates_args={})
def filtered_lrelu_masked(
    src: torch.Tensor, mask: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor,
    u1: int, p1x: int, p1y: int, d2: int, off2x: int, off2y: int,
    out_h: int, out_w: int, s_h: int, s_w: int, gain: float, slope: float,
) -> torch.Tensor:
    """A MODE 1 pass: linear in src, with the activation replaced by the mask's slopes."""
    n, ch = src.shape[:2]
    y = torch.empty((n, ch, out_h, out_w), dtype=src.dtype, device=src.device)
    _launch(1, src, None, None, mask, c1, c2, y, u1, p1x, p1y, d2, off2x, off2y, s_h, s_w, gain, slope, None, False)
    return y


def transpose_geometry(c1, u1, p1x, p1y, c2, d2, off2x, off2y):
    """The geometry of the adjoint pass (see the module docstring); an involution."""
    k1, k2 = c1.shape[0], c2.shape[0]
    return (c2.flip(0).contiguous(), d2, k2 - 1 + off2x, k2 - 1 + off2y,
            c1.flip(0).contiguous(), u1, p1x - k1 + 1, p1y - k1 + 1)


def _fwd_setup(ctx, inputs, output):
    x, b, in_scale, c1, c2, up, down, px0, py0, out_h, out_w, gain, slope, clamp, write_mask = inputs
    _, mask = output
    ctx.save_for_backward(mask, c1, c2, in_scale, x if in_scale is not None else None)
    ctx.geom = (up, px0, py0, down, 0, 0)
    ctx.sizes = (x.shape[2], x.shape[3], (out_h - 1) * down + c2.shape[0], (out_w - 1) * down + c2.shape[0])
    ctx.act = (gain, slope)
    ctx.has_bias = b is not None


def _fwd_backward(ctx, dy, _dmask):
    mask, c1, c2, in_scale, x = ctx.saved_tensors
    if mask.numel() == 0:
        raise RuntimeError("filtered_lrelu: backward needs the mask; the forward ran without a gradient-requiring input")
    u1, p1x, p1y, d2, off2x, off2y = ctx.geom
    tc1, tu1, tp1x, tp1y, tc2, td2, toff2x, toff2y = transpose_geometry(c1, u1, p1x, p1y, c2, d2, off2x, off2y)
    in_h, in_w, s_h, s_w = ctx.sizes
    # Gradient at the point where the bias enters (x * in_scale + b), then through the scale.
    dz = filtered_lrelu_masked(dy, mask, tc1, tc2, tu1, tp1x, tp1y, td2, toff2x, toff2y, in_h, in_w, s_h, s_w, *ctx.act)
    db = dz.sum([0, 2, 3]) if ctx.has_bias and ctx.needs_input_grad[1] else None
    if in_scale is None:
        return dz, db, None, None, None, None, None, None, None, None, None, None, None, None, None
    dx = dz * in_scale[:, :, None, None].to(dz.dtype)
    dscale = (dz.to(in_scale.dtype) * x.to(in_scale.dtype)).sum([2, 3]) if ctx.needs_input_grad[2] else None
    return dx, db, dscale, None, None, None, None, None, None, None, None, None, None, None, None


def _masked_setup(ctx, inputs, output):
    src, mask, c1, c2, u1, p1x, p1y, d2, off2x, off2y, out_h, out_w, s_h, s_w, gain, slope = inputs
    ctx.save_for_backward(mask, c1, c2)
    ctx.geom = (u1, p1x, p1y, d2, off2x, off2y)
    ctx.sizes = (src.shape[2], src.shape[3], s_h, s_w)
    ctx.act = (gain, slope)


def _masked_backward(ctx, dy):
    mask, c1, c2 = ctx.saved_tensors
    u1, p1x, p1y, d2, off2x, off2y = ctx.geom
    tc1, tu1, tp1x, tp1y, tc2, td2, toff2x, toff2y = transpose_geometry(c1, u1, p1x, p1y, c2, d2, off2x, off2y)
    in_h, in_w, s_h, s_w = ctx.sizes
    dsrc = filtered_lrelu_masked(dy, mask, tc1, tc2, tu1, tp1x, tp1y, td2, toff2x, toff2y, in_h, in_w, s_h, s_w, *ctx.act)
    return (dsrc,) + (None,) * 15


filtered_lrelu_fwd.register_autograd(_fwd_backward, setup_context=_fwd_setup)
filtered_lrelu_masked.register_autograd(_masked_backward, setup_context=_masked_setup)


def correlation_filters(fu, fd, up: int, flip_filter: bool, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D correlation filters of the fused kernel: flip unless flip_filter, fu carries up per axis."""
    def prep(f, gain):
        f = torch.ones(1, dtype=torch.float64, device=device) if f is None else f
        f = f.to(dtype) * gain
        return (f if flip_filter else f.flip(0)).contiguous()

    return prep(fu, float(up)), prep(fd, 1.0)


def fused_covers(fu, fd, up: int, down: int, x: torch.Tensor) -> str | None:
    """None if the fused kernel covers this call, else the reason it does not."""
    if (fu is not None and fu.ndim != 1) or (fd is not None and fd.ndim != 1):
        return "2-D (non-separable) filters are outside the fused kernel"
    if up not in (1, 2, 4) or down not in (1, 2, 4):
        return "up/down factors outside {1, 2, 4} are outside the fused kernel"
    if max(1 if fu is None else fu.shape[0], 1 if fd is None else fd.shape[0]) > 32:
        return "filters over 32 taps are outside the fused kernel"
    if x.dtype == torch.float64 and x.device.type == "cuda":
        return "float64 on GPU is outside the fused kernel (tensor-core dots)"
    return None

