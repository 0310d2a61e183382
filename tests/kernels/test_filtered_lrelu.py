"""filtered_lrelu: reference vs numpy, fast paths vs reference on StyleGAN3-T layer kinds."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from kernels import filtered_lrelu
from tests.conftest import TRITON_DEVICE, assert_close, gpu
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


def _assert_compiled_matches_eager(kind, dtype, device, impl, db_scale=None, **shape):
    """torch.compile(fullgraph=True) vs eager: output, dx and db (a sum over N, H, W)."""
    x, b, kw = _inputs(kind, dtype, device, **shape)
    fn = lambda x, b: filtered_lrelu(x, b=b, impl=impl, **kw)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True)
    assert_close(compiled(x, b), fn(x, b))
    dy = torch.randn_like(fn(x, b))
    got = torch.autograd.grad(compiled(x, b), (x, b), dy)
    want = torch.autograd.grad(fn(x, b), (x, b), dy)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1], scale=db_scale or x[:, 0].numel())


def test_compiled_matches_eager_cpu():
    _assert_compiled_matches_eager("up2_down2", torch.float32, "cpu", "cuda", db_scale=100)


def _second_order(impl, kind, dtype=torch.float32):
    """d/d(dy) of |dx|^2 for dx = d filtered_lrelu / dx (dy): exercises the mask pass twice."""
    x, b, kw = _inputs(kind, dtype, TRITON_DEVICE if impl == "triton" else "cpu")
    y = filtered_lrelu(x, b=b, impl=impl, **kw)
    dy = torch.linspace(-1, 1, y.numel(), dtype=dtype, device=y.device).reshape(y.shape).requires_grad_()
    (dx,) = torch.autograd.grad(y, x, dy, create_graph=True)
    return torch.autograd.grad(dx.square().sum(), dy)[0]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_double_backward_matches_reference(kind):
    torch.manual_seed(1)
    got = _second_order("triton", kind)
    torch.manual_seed(1)
    want = _second_order("ref", kind)
    assert_close(got, want, scale=float(want.abs().max()))


def test_fused_forward_allocates_no_upsampled_buffer():
    """The op allocates exactly y and the 2-bit mask; the composite allocates the fp32 upsampled tile."""
    from torch.profiler import ProfilerActivity, profile

    if TRITON_DEVICE != "cpu":
        pytest.skip("CPU allocation profiling; the GPU variant is test_fused_forward_gpu_peak_memory")
    x, b, kw = _inputs("up2_down2", torch.float32, "cpu", n=2, c=8)
    s = (8 - 1) * 2 + 12  # upsampled positions per axis that the outputs read
    upsampled_bytes = 2 * 8 * s * s * 4
    for impl, expect_buffer in (("triton", False), ("cuda", True)):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            y = filtered_lrelu(x, b=b, impl=impl, **kw)
        # Filters and scalars are at most 32 taps of float64: ignore allocations of 256 bytes or less.
        allocs = [e.cpu_memory_usage for e in prof.events() if e.name.startswith("aten::empty") and e.cpu_memory_usage > 256]
        assert (max(allocs) >= upsampled_bytes) == expect_buffer, (impl, allocs)
        if impl == "triton":
            mask_bytes = 2 * 8 * s * ((s + 3) // 4)
            assert sorted(allocs) == sorted([y.numel() * 4, mask_bytes])


def test_no_mask_without_grad():
    from torch.profiler import ProfilerActivity, profile

    if TRITON_DEVICE != "cpu":
        pytest.skip("CPU allocation profiling")
    x, b, kw = _inputs("up2_down2", torch.float32, "cpu")
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        y = filtered_lrelu(x, b=b, impl="triton", **kw)
    allocs = [e.cpu_memory_usage for e in prof.events() if e.name.startswith("aten::empty") and e.cpu_memory_usage > 256]
    assert allocs == [y.numel() * 4]


def test_opcheck():
    from kernels._filtered_lrelu_triton import correlation_filters, filtered_lrelu_fwd, filtered_lrelu_masked

    from tests.conftest import OPCHECK_UTILS

    x, b, kw = _inputs("up2_down2", torch.float32, TRITON_DEVICE)
    c1, c2 = correlation_filters(kw["fu"], kw["fd"], 2, False, torch.float32, x.device)
    args = (x, b, None, c1, c2, 2, 2, 9, 9, 8, 8, 2**0.5, 0.2, 256.0, True)
    torch.library.opcheck(filtered_lrelu_fwd, args, test_utils=OPCHECK_UTILS)
    d = torch.rand(2, 3, device=TRITON_DEVICE, requires_grad=True)
    torch.library.opcheck(filtered_lrelu_fwd, (x, b, d) + args[3:], test_utils=OPCHECK_UTILS)
    _, mask = filtered_lrelu_fwd(*args)
    dy = torch.randn(2, 3, 8, 8, device=TRITON_DEVICE, requires_grad=True)
    margs = (dy, mask, c2.flip(0).contiguous(), c1.flip(0).contiguous(), 2, 11, 11, 2, -2, -2, 10, 10, 26, 26, 2**0.5, 0.2)
    torch.library.opcheck(filtered_lrelu_masked, margs, test_utils=OPCHECK_UTILS)


def test_2d_filters_fall_back_with_one_warning():
    import warnings

    from kernels import _dispatch

    _dispatch._warned.clear()
    x = torch.randn(1, 2, 6, 6, device=TRITON_DEVICE)
    f2 = torch.randn(4, 4, device=TRITON_DEVICE) / 4
    with pytest.warns(RuntimeWarning, match="2-D"):
        y = filtered_lrelu(x, f2, f2, up=2, down=2, padding=3, impl="triton")
    assert_close(y, filtered_lrelu(x, f2, f2, up=2, down=2, padding=3, impl="ref"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        filtered_lrelu(x, f2, f2, up=2, down=2, padding=3, impl="triton")


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_fused_matches_eager_gpu(dtype):
    _assert_compiled_matches_eager("up4_down2", dtype, "cuda", "triton", n=4, c=64)


@gpu
def test_1024_training_shape_and_peak_memory():
    """A 1024² head layer at batch 32 in bf16: no size limit, and no upsampled buffer in memory."""
    fu = _kaiser(12, 256, 300, 2048).float().cuda()
    fd = _kaiser(12, 512, 100, 1024).float().cuda()
    x = torch.randn(32, 64, 1046, 1046, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    kw = dict(fu=fu, fd=fd, up=2, down=2, padding=(9, 8, 9, 8), clamp=256.0)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    y = filtered_lrelu(x, b=b, impl="triton", **kw)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    s = (y.shape[2] - 1) * 2 + 12
    upsampled_fp32 = 32 * 64 * s * s * 4
    assert peak < upsampled_fp32 / 2, (peak, upsampled_fp32)
    r = filtered_lrelu(x[:2, -3:].detach().float(), b=b[-3:].detach().float(), impl="ref", **kw)
    assert_close(y[:2, -3:], r.to(torch.bfloat16))
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.isfinite(dx).all()


@pytest.mark.parametrize("impl", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["up2_down2", "up4_down2", "torgb"])
def test_in_scale_matches_reference(kind, dtype, impl):
    """Demodulation folded into the load: output and gradients for x, b and the scale."""
    device = TRITON_DEVICE if impl == "triton" else "cpu"
    x, b, kw = _inputs(kind, dtype, device)
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    d = (torch.rand(x.shape[0], x.shape[1], dtype=sdt, device=device) + 0.5).requires_grad_()
    y = filtered_lrelu(x, b=b, in_scale=d, impl=impl, **kw)
    r = filtered_lrelu(x, b=b, in_scale=d, impl="ref", **kw)
    assert_close(y, r)
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, b, d), dy)
    want = torch.autograd.grad(r, (x, b, d), dy)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1], scale=x[:, 0].numel())
    assert_close(got[2], want[2], dtype=dtype, scale=x[0, 0].numel())


def test_in_scale_reference_matches_numpy():
    x, b, kw = _inputs("odd_asym_flip_clamp", torch.float64, "cpu")
    d = torch.rand(x.shape[0], x.shape[1], dtype=torch.float64) + 0.5
    want = filtered_lrelu((x * d[:, :, None, None]).detach(), b=b, impl="ref", **kw)
    f = lambda t: None if t is None else t.numpy()  # noqa: E731
    np_want = numpy_ref.filtered_lrelu((x * d[:, :, None, None]).detach().numpy(), f(kw["fu"]), f(kw["fd"]),
                                       b.detach().numpy(), kw["up"], kw["down"], kw["padding"], kw["gain"],
                                       kw["slope"], kw["clamp"], kw["flip_filter"])
    assert_close(filtered_lrelu(x, b=b, in_scale=d, impl="ref", **kw), torch.from_numpy(np_want))
    assert_close(want, torch.from_numpy(np_want))


def test_in_scale_gradgradcheck_triton():
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, device=TRITON_DEVICE, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, device=TRITON_DEVICE, requires_grad=True)
    d = (torch.rand(1, 2, dtype=torch.float64, device=TRITON_DEVICE) + 0.5).requires_grad_()
    fu = _random_filter(4).to(TRITON_DEVICE)
    fn = lambda x, b, d: filtered_lrelu(x, fu, fu, b, up=2, down=2, padding=(3, 2, 3, 2), in_scale=d, impl="triton")  # noqa: E731
    fast = TRITON_DEVICE == "cpu"
    assert torch.autograd.gradcheck(fn, (x, b, d), fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, (x, b, d), fast_mode=fast)


@pytest.mark.parametrize("up,down", [(u, d) for u in (1, 2, 4) for d in (1, 2, 4)])
def test_every_up_down_combination(up, down):
    """All of up, down in {1, 2, 4} with 6 taps per factor, plus the 32-tap limit; batch 1, 7 channels."""
    for ku, kd in ((6 * up if up > 1 else 1, 6 * down if down > 1 else 1), (32, 32)):
        x = torch.randn(1, 7, 9, 9, device=TRITON_DEVICE, requires_grad=True)
        b = torch.randn(7, device=TRITON_DEVICE, requires_grad=True)
        fu = (_random_filter(ku).float().to(TRITON_DEVICE) if ku > 1 else None)
        fd = (_random_filter(kd).float().to(TRITON_DEVICE) if kd > 1 else None)
        pad = (ku + kd) // 2
        kw = dict(fu=fu, fd=fd, up=up, down=down, padding=(pad, pad - 1, pad + 1, pad), clamp=1.0)
        y = filtered_lrelu(x, b=b, impl="triton", **kw)
        r = filtered_lrelu(x, b=b, impl="ref", **kw)
        assert_close(y, r)
        dy = torch.randn_like(y)
        got = torch.autograd.grad(y, (x, b), dy)
        want = torch.autograd.grad(r, (x, b), dy)
        assert_close(got[0], want[0])
        assert_close(got[1], want[1], scale=81)
