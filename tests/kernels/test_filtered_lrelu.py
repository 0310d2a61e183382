"""filtered_lrelu: reference vs numpy, fast paths vs reference on StyleGAN3-T layer kinds."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from kernels import filtered_lrelu
from tests.conftest import TRITON_DEVICE, assert_close
from tests.kernels import numpy_ref


def _kaiser(taps, cutoff, width, fs):
    return torch.from_numpy(scipy.signal.firwin(numtaps=taps, cutoff=cutoff, width=width, fs=fs).astype(np.float64))


def _random_filter(taps):
    f = torch.randn(taps, dtype=torch.float64)
    return f / f.sum() if abs(f.sum()) > 0.3 else f / f.square().sum().sqrt()


# name -> (in size, up, down, padding, fu, fd, gain, slope, clamp, flip_filter)
KINDS = {
    "up2_down2": (10, 2, 2, (9, 8, 9, 8), _kaiser(12, 2, 12, 32), _kaiser(12, 2.378, 11.2, 32), 2**0.5, 0.2, 256.0, False),
    "up4_down2": (10, 4, 2, (16, 13, 16, 13), _kaiser(24, 4, 8, 64), _kaiser(12, 8, 3.7, 32), 2**0.5, 0.2, 256.0, False),
    "critical_crop": (20, 2, 2, (-3, -4, -3, -4), _kaiser(12, 8, 3.7, 32), _kaiser(12, 8, 3.7, 32), 2**0.5, 0.2, 256.0, False),
    "torgb": (7, 1, 1, 0, None, None, 1.0, 1.0, 256.0, False),
    "odd_asym_flip_clamp": (9, 2, 1, (3, 2, 4, 1), _random_filter(5), _random_filter(3), 1.3, 0.1, 0.4, True),
    "slope1_down4": (13, 1, 4, (2, 3, 1, 2), None, _random_filter(8), 1.0, 1.0, None, False),
}


def _inputs(kind, dtype, device, n=2, c=3):
    size, up, down, pad, fu, fd, gain, slope, clamp, flip = KINDS[kind]
    x = torch.randn(n, c, size, size, dtype=dtype, device=device, requires_grad=True)
    b = torch.randn(c, dtype=dtype, device=device, requires_grad=True)
    fu = None if fu is None else fu.to(device=device, dtype=torch.float32 if dtype != torch.float64 else dtype)
    fd = None if fd is None else fd.to(device=device, dtype=torch.float32 if dtype != torch.float64 else dtype)
    kw = dict(fu=fu, fd=fd, up=up, down=down, padding=pad, gain=gain, slope=slope, clamp=clamp, flip_filter=flip)
    return x, b, kw


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_reference_matches_numpy(kind):
    x, b, kw = _inputs(kind, torch.float64, "cpu")
    pad = kw["padding"]
    pad = (pad,) * 4 if isinstance(pad, int) else pad
    f = lambda t: None if t is None else t.numpy()  # noqa: E731
    want = numpy_ref.filtered_lrelu(x.detach().numpy(), f(kw["fu"]), f(kw["fd"]), b.detach().numpy(), kw["up"],
                                    kw["down"], pad, kw["gain"], kw["slope"], kw["clamp"], kw["flip_filter"])
    assert_close(filtered_lrelu(x, b=b, impl="ref", **kw), torch.from_numpy(want))


@pytest.mark.parametrize("impl", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_matches_reference(kind, dtype, impl):
    device = TRITON_DEVICE if impl == "triton" else "cpu"
    x, b, kw = _inputs(kind, dtype, device)
    y = filtered_lrelu(x, b=b, impl=impl, **kw)
    r = filtered_lrelu(x, b=b, impl="ref", **kw)
    assert y.dtype == dtype and y.shape == r.shape
    assert_close(y, r)
    dy = torch.randn_like(y)
    dx, db = torch.autograd.grad(y, (x, b), dy)
    rdx, rdb = torch.autograd.grad(r, (x, b), dy)
    assert_close(dx, rdx)
    assert_close(db, rdb, scale=x[:, 0].numel())


@pytest.mark.parametrize("impl", ["ref", "cuda", "triton"])
def test_gradcheck_and_gradgradcheck(impl):
    """Double backward is what the stem's path-length regularization needs."""
    device = TRITON_DEVICE if impl == "triton" else "cpu"
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, device=device, requires_grad=True)
    fu = _random_filter(4).to(device)
    fd = _random_filter(4).to(device)
    fn = lambda x, b: filtered_lrelu(x, fu, fd, b, up=2, down=2, padding=(3, 2, 3, 2), clamp=1.5, impl=impl)  # noqa: E731
    fast = impl == "triton" and device == "cpu"
    assert torch.autograd.gradcheck(fn, (x, b), fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, (x, b), fast_mode=fast)


def test_compiled_matches_eager_cpu():
    x, b, kw = _inputs("up2_down2", torch.float32, "cpu")
    fn = lambda x, b: filtered_lrelu(x, b=b, impl="cuda", **kw)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True)
    assert_close(compiled(x, b), fn(x, b))
    dy = torch.randn_like(fn(x, b))
    got = torch.autograd.grad(compiled(x, b), (x, b), dy)
    want = torch.autograd.grad(fn(x, b), (x, b), dy)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1], scale=100)
