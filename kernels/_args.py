"""Argument parsing and validation shared by every op in kernels/.

Every public op checks its arguments here so that a bad call fails with the name of the
offending argument (``ValueError`` for a bad value or shape, ``TypeError`` for a bad type or
dtype) before any kernel runs.

Conventions follow the StyleGAN3 ops: scaling factors are an int or ``[x, y]``; padding is an
int, ``[x, y]`` or ``[x0, x1, y0, y1]``; filters are 1-D (separable, applied along both axes)
or 2-D ``[fh, fw]``.
"""

from __future__ import annotations

import torch

IMPLS = ("triton", "cuda", "ref")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_scaling(name: str, value) -> tuple[int, int]:
    """An int or a pair ``[sx, sy]`` of ints >= 1 -> ``(sx, sy)``."""
    if _is_int(value):
        value = [value, value]
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(_is_int(v) for v in value):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    sx, sy = value
    if sx < 1 or sy < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return sx, sy


def parse_padding(value) -> tuple[int, int, int, int]:
    """An int, ``[px, py]`` or ``[x0, x1, y0, y1]`` (negative values crop) -> 4-tuple."""
    if _is_int(value):
        return value, value, value, value
    if not isinstance(value, (list, tuple)) or not all(_is_int(v) for v in value):
        raise TypeError(f"padding must be an int or a list of ints, got {value!r}")
    if len(value) == 2:
        px, py = value
        return px, px, py, py
    if len(value) == 4:
        return tuple(value)
    raise ValueError(f"padding must have 1, 2 or 4 elements, got {len(value)}: {value!r}")


def check_impl(impl) -> None:
    if impl is not None and impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS} or None, got {impl!r}")


def check_x(x, ndim: int | None = 4, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions (NCHW), got shape {tuple(x.shape)}")


def check_filter(name: str, f, x: torch.Tensor) -> None:
    """A filter is a 1-D or 2-D float32/float64 tensor on x's device that needs no gradient."""
    if f is None:
        return
    if not isinstance(f, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(f).__name__}")
    if f.ndim not in (1, 2):
        raise ValueError(f"{name} must be 1-D (separable) or 2-D, got {f.ndim} dimensions")
    if f.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    if f.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be float32 or float64, got {f.dtype}")
    if f.device != x.device:
        raise ValueError(f"{name} is on {f.device} but x is on {x.device}")
    if f.requires_grad:
        raise ValueError(f"{name} must not require grad: filters are constants")


def check_same(name: str, t, x: torch.Tensor, shape: tuple | None = None) -> None:
    """A tensor argument that must share x's device and dtype (and optionally a shape)."""
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if t.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but x has dtype {x.dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def filter_size(f) -> tuple[int, int]:
    """(fw, fh) of a filter; None counts as a single tap."""
    if f is None:
        return 1, 1
    if f.ndim == 1:
        return f.shape[0], f.shape[0]
    return f.shape[1], f.shape[0]


def filter_for(f, x: torch.Tensor, gain: float, flip_filter: bool) -> torch.Tensor:
    """The filter as it is correlated with the signal: gain folded in, flipped unless asked not.

    Matches the NVlabs reference: a 1-D filter receives ``gain ** 0.5`` per axis.
    """
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    f = f * (gain ** (f.ndim / 2))
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    return f


def upfirdn2d_out_size(in_w, in_h, f, up, down, padding) -> tuple[int, int]:
    """(out_w, out_h) of upfirdn2d; raises if the padded, upsampled input is smaller than f."""
    upx, upy = parse_scaling("up", up)
    downx, downy = parse_scaling("down", down)
    px0, px1, py0, py1 = parse_padding(padding)
    fw, fh = filter_size(f)
    up_w = in_w * upx + px0 + px1
    up_h = in_h * upy + py0 + py1
    if up_w < fw or up_h < fh:
        raise ValueError(
            f"padding {padding!r} leaves an upsampled input of {up_w}x{up_h}, smaller than the "
            f"{fw}x{fh} filter"
        )
    return (up_w - fw + downx) // downx, (up_h - fh + downy) // downy
