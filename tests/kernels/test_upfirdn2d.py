"""upfirdn2d: reference vs independent numpy, fast paths vs reference, gradients, compile."""

from __future__ import annotations

import itertools

import pytest
import torch

from kernels import upfirdn2d
from tests.conftest import OPCHECK_UTILS, TRITON_DEVICE, assert_close, gpu
from tests.kernels import numpy_ref

SCALES = (1, 2, 4, 8)

# (up, down, padding, filter shape, flip_filter, gain): generator shapes plus awkward ones.
CASES = [
    (2, 1, (6, 5, 6, 5), (12,), False, 4.0),  # 2x upsample of a StyleGAN3-T layer
    (1, 2, 3, (12,), False, 1.0),  # 2x downsample
    (4, 1, (13, 10, 13, 10), (24,), False, 4.0),  # the 4x up layer of a superres head
    (1, 1, (-2, -3, 1, -1), (5,), True, 1.5),  # negative padding crops
    ((2, 1), (1, 3), (1, 2, 3, 4), (4, 5), False, 1.0),  # anisotropic, 2-D asymmetric filter
    (2, 2, (3, -1, -2, 4), (3, 6), True, 0.5),  # 2-D, flip, crop
    (8, 8, (7, 7, 7, 7), (8,), False, 1.0),
    (1, 1, 0, None, False, 1.0),  # no filter: identity
]
IMPLS = ["cuda", "triton"]


def _filter(shape, dtype=torch.float64, device="cpu"):
    """A random filter scaled to unit energy, so outputs stay O(1) like the tolerance table assumes."""
    if shape is None:
        return None
    f = torch.randn(shape, dtype=torch.float64)
    f = f / f.square().sum().sqrt()  # separable: the 2-D energy is this squared
    return f.to(dtype=dtype, device=device)


def _run(x, f, case, impl):
    up, down, padding, _, flip, gain = case
    return upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain, impl=impl)


def _pad4(p):
    return (p,) * 4 if isinstance(p, int) else tuple(p)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@pytest.mark.parametrize("case", CASES)
def test_reference_matches_numpy(case):
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64)
    f = _filter(case[3])
    up, down, padding, _, flip, gain = case
    want = numpy_ref.upfirdn2d(x.numpy(), None if f is None else f.numpy(), _pair(up), _pair(down), _pad4(padding), flip, gain)
    got = _run(x, f, case, "ref")
    assert got.shape == want.shape
    assert_close(got, torch.from_numpy(want))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case, dtype, impl):
    device = TRITON_DEVICE if impl == "triton" else "cpu"
    x = torch.randn(2, 3, 9, 10, dtype=dtype, device=device, requires_grad=True)
    f = _filter(case[3], torch.float32, device)
    y = _run(x, f, case, impl)
    r = _run(x, f, case, "ref")
    assert y.dtype == dtype and y.shape == r.shape
    assert_close(y, r)
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    (rdx,) = torch.autograd.grad(r, x, dy)
    assert_close(dx, rdx)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("up,down", list(itertools.product(SCALES, SCALES)))
def test_every_scale_pair(up, down, impl):
    """Every up/down pair in {1,2,4,8}^2 on a prime-sized input with an odd-length filter."""
    device = TRITON_DEVICE if impl == "triton" else "cpu"
    x = torch.randn(1, 2, 5, 3, dtype=torch.float32, device=device, requires_grad=True)
    f = torch.randn(7, dtype=torch.float32, device=device)
    pad = (3, 2, 4, 1)
    y = upfirdn2d(x, f, up=up, down=down, padding=pad, impl=impl)
    r = upfirdn2d(x, f, up=up, down=down, padding=pad, impl="ref")
    assert_close(y, r)
    dy = torch.randn_like(y)
    assert_close(torch.autograd.grad(y, x, dy)[0], torch.autograd.grad(r, x, dy)[0])


@pytest.mark.parametrize("impl", IMPLS)
def test_odd_shapes_and_layouts(impl):
    """1x1 images, batch 1, 7 channels, channels_last input, and an expanded (stride-0) grad."""
    device = TRITON_DEVICE if impl == "triton" else "cpu"
    f = torch.randn(4, device=device)
    x = torch.randn(1, 7, 1, 1, device=device, requires_grad=True)
    y = upfirdn2d(x, f, up=2, padding=2, impl=impl)
    r = upfirdn2d(x, f, up=2, padding=2, impl="ref")
    assert_close(y, r)
    # y.sum() sends back an expanded gradient with stride 0.
    assert_close(torch.autograd.grad(y.sum(), x)[0], torch.autograd.grad(r.sum(), x)[0])
    xc = torch.randn(2, 5, 11, 13, device=device).to(memory_format=torch.channels_last)
    assert_close(upfirdn2d(xc, f, down=2, padding=1, impl=impl), upfirdn2d(xc.contiguous(), f, down=2, padding=1, impl="ref"))
    xs = torch.randn(2, 6, 11, 13, device=device)[:, ::2, 1:, :]  # a strided view
    assert_close(upfirdn2d(xs, f, up=2, impl=impl), upfirdn2d(xs.contiguous(), f, up=2, impl="ref"))


@pytest.mark.parametrize("block_h,block_w,num_warps", [(1, 1, 1), (4, 8, 2), (8, 4, 4), (16, 32, 4), (32, 64, 8)])
def test_launch_sweep(block_h, block_w, num_warps):
    """Tiles that split the output unevenly, including 1x1 tiles, give the same result."""
    from kernels._upfirdn2d_triton import upfirdn2d_pass

    x = torch.randn(2, 3, 11, 7, device=TRITON_DEVICE, requires_grad=True)
    h = torch.randn(5, 4, device=TRITON_DEVICE)
    y = upfirdn2d_pass(x, h, 2, 2, 1, 1, 2, 1, 3, 0, torch.float32, block_h, block_w, num_warps)
    # The same correlation through the public op: a 2-D filter is flipped unless flip_filter.
    r = upfirdn2d(x, h, up=2, padding=(2, 1, 3, 0), flip_filter=True, impl="ref")
    assert_close(y, r)
    dy = torch.randn_like(y)
    assert_close(torch.autograd.grad(y, x, dy)[0], torch.autograd.grad(r, x, dy)[0])


@pytest.mark.parametrize("impl", ["ref", "cuda", "triton"])
def test_gradcheck_and_gradgradcheck(impl):
    device = TRITON_DEVICE if impl == "triton" else "cpu"
    x = torch.randn(1, 2, 4, 3, dtype=torch.float64, device=device, requires_grad=True)
    f = torch.randn(4, dtype=torch.float64, device=device)
    fn = lambda x: upfirdn2d(x, f, up=2, down=1, padding=(3, 2, 1, 4), impl=impl)  # noqa: E731
    fn2 = lambda x: upfirdn2d(x, f.outer(f)[:3], up=1, down=2, padding=(1, 0, 2, 1), flip_filter=True, impl=impl)  # noqa: E731
    fast = impl == "triton" and device == "cpu"  # the interpreter is slow: random projections
    for g in (fn, fn2):
        assert torch.autograd.gradcheck(g, (x,), fast_mode=fast)
        assert torch.autograd.gradgradcheck(g, (x,), fast_mode=fast)


def test_opcheck():
    from kernels._upfirdn2d_triton import upfirdn2d_pass

    x = torch.randn(2, 3, 5, 4, device=TRITON_DEVICE, requires_grad=True)
    h = torch.randn(1, 6, device=TRITON_DEVICE)
    args = (x, h, 2, 1, 1, 1, 3, 2, 0, 0, torch.float32)
    torch.library.opcheck(upfirdn2d_pass, args, test_utils=OPCHECK_UTILS)


@pytest.mark.parametrize("impl", ["ref", "cuda"])
def test_compiled_matches_eager_cpu(impl):
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    f = torch.randn(12)
    fn = lambda x: upfirdn2d(x, f, up=2, padding=(6, 5, 6, 5), gain=4, impl=impl).square().sum()  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True)
    assert_close(compiled(x), fn(x), scale=10)
    assert_close(torch.autograd.grad(compiled(x), x)[0], torch.autograd.grad(fn(x), x)[0], scale=10)


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_triton_matches_eager_gpu(dtype):
    x = torch.randn(4, 64, 36, 36, device="cuda", dtype=dtype, requires_grad=True)
    f = torch.randn(12, device="cuda")
    fn = lambda x: upfirdn2d(x, f, up=2, padding=(6, 5, 6, 5), gain=4, impl="triton")  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True)
    assert_close(compiled(x), fn(x))
    dy = torch.randn(4, 64, 72, 72, device="cuda", dtype=dtype)
    assert_close(torch.autograd.grad(compiled(x), x, dy)[0], torch.autograd.grad(fn(x), x, dy)[0])


@gpu
def test_large_tensor_64bit_offsets():
    """More than 2**31 elements in the output: offsets must not overflow 32 bits."""
    x = torch.randn(3, 512, 1024, 1024, device="cuda", dtype=torch.bfloat16)  # 1.6e9 elements
    f = torch.tensor([[1.0, 1.0]], device="cuda")  # 2-D [1, 2]: filter along x only
    y = upfirdn2d(x, f, up=(2, 1), padding=(1, 0, 0, 0), impl="triton")
    assert y.numel() > 2**31
    r = upfirdn2d(x[-1:, -4:], f, up=(2, 1), padding=(1, 0, 0, 0), impl="ref")
    assert_close(y[-1:, -4:], r)


def test_impl_none_picks_reference_on_cpu():
    x = torch.randn(1, 1, 4, 4)
    assert torch.equal(upfirdn2d(x, torch.ones(2), up=2, padding=1), upfirdn2d(x, torch.ones(2), up=2, padding=1, impl="ref"))


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="impl='triton' needs a CUDA tensor"):
        upfirdn2d(torch.randn(1, 1, 4, 4), torch.ones(2), impl="triton")


def test_uncovered_config_falls_back_with_one_warning():
    from kernels import _dispatch

    _dispatch._warned.clear()
    x = torch.randn(1, 2, 3, 3, device=TRITON_DEVICE)
    f = torch.randn(3, device=TRITON_DEVICE)
    with pytest.warns(RuntimeWarning, match="up/down factors above 8"):
        y = upfirdn2d(x, f, up=9, padding=1, impl="triton")
    assert_close(y, upfirdn2d(x, f, up=9, padding=1, impl="ref"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        upfirdn2d(x, f, up=9, padding=1, impl="triton")  # the second time is silent
