"""bias_act: reference vs independent numpy, Triton vs reference, gradients of two orders."""

from __future__ import annotations

import warnings

import pytest
import torch

from kernels import bias_act
from kernels.reference import ACTIVATIONS
from tests.conftest import OPCHECK_UTILS, TRITON_DEVICE, assert_close, gpu
from tests.kernels import numpy_ref


@pytest.mark.parametrize("clamp", [None, 0.7])
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_reference_matches_numpy(act, clamp):
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    want = numpy_ref.bias_act(x.numpy(), b.numpy(), 1, act, None, None, clamp)
    assert_close(bias_act(x, b, act=act, clamp=clamp, impl="ref"), torch.from_numpy(want))
    want = numpy_ref.bias_act(x.numpy(), None, 1, act, 0.3, 1.7, None)
    assert_close(bias_act(x, None, act=act, alpha=0.3, gain=1.7, impl="ref"), torch.from_numpy(want))


CASES = [
    # (shape, dim, act, alpha, gain, clamp)
    ((2, 7, 3, 5), 1, "lrelu", None, None, None),
    ((2, 7, 3, 5), 1, "lrelu", 0.1, 1.3, 0.8),
    ((2, 3, 1, 1), 1, "relu", None, None, 0.5),
    ((1, 9), 1, "linear", None, 2.0, None),
    ((5, 4, 3), 2, "lrelu", 1.0, None, 256.0),  # slope 1 (ToRGB-like)
    ((6, 5), 0, "linear", None, None, 0.3),
    ((13,), 0, "relu", None, 0.5, None),
    ((3, 7, 11, 13), 1, "lrelu", None, None, 1.0),  # several 1024-element programs, ragged tail
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_triton_matches_reference(case, with_bias, dtype):
    shape, dim, act, alpha, gain, clamp = case
    x = torch.randn(shape, dtype=dtype, device=TRITON_DEVICE, requires_grad=True)
    b = torch.randn(shape[dim], dtype=dtype, device=TRITON_DEVICE, requires_grad=True) if with_bias else None
    kw = dict(dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
    y = bias_act(x, b, impl="triton", **kw)
    r = bias_act(x, b, impl="ref", **kw)
    assert y.dtype == dtype and y.shape == r.shape
    assert_close(y, r)
    dy = torch.randn_like(y)
    inputs = (x, b) if with_bias else (x,)
    got = torch.autograd.grad(y, inputs, dy)
    want = torch.autograd.grad(r, inputs, dy)
    assert_close(got[0], want[0])
    if with_bias:  # db sums many elements: allow the sum's magnitude
        assert_close(got[1], want[1], scale=y.numel() / shape[dim])


@pytest.mark.parametrize("impl", ["ref", "cuda", "triton"])
@pytest.mark.parametrize("act,clamp", [("linear", None), ("relu", 0.6), ("lrelu", 0.6), ("lrelu", None)])
def test_gradcheck_and_gradgradcheck(act, clamp, impl):
    device = TRITON_DEVICE if impl == "triton" else "cpu"
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, device=device)
    x = (x + 0.05 * x.sign()).requires_grad_()  # keep samples away from the kinks
    b = torch.randn(3, dtype=torch.float64, device=device).requires_grad_()
    fn = lambda x, b: bias_act(x, b, act=act, clamp=clamp, impl=impl)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def test_exact_zero_and_clamp_boundary_conventions():
    """x + b == 0 takes slope 1; |y| == clamp counts as clamped (zero gradient). Same in every path."""
    x = torch.tensor([[0.0, -1.0, 1.0, 2.0, 0.5]], dtype=torch.float64, device=TRITON_DEVICE, requires_grad=True)
    for impl in ("ref", "cuda", "triton"):
        y = bias_act(x, act="lrelu", alpha=0.25, gain=1.0, clamp=1.0, impl=impl)
        (dx,) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(y.detach().cpu(), torch.tensor([[0.0, -0.25, 1.0, 1.0, 0.5]], dtype=torch.float64))
        torch.testing.assert_close(dx.cpu(), torch.tensor([[1.0, 0.25, 0.0, 0.0, 1.0]], dtype=torch.float64))


def test_layouts_preserved_and_strided_inputs():
    x = torch.randn(2, 6, 5, 4, device=TRITON_DEVICE).to(memory_format=torch.channels_last).requires_grad_()
    b = torch.randn(6, device=TRITON_DEVICE)
    y = bias_act(x, b, act="lrelu", impl="triton")
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, bias_act(x, b, act="lrelu", impl="ref"))
    # Expanded (stride-0) gradient from .sum() and a transposed view as input.
    assert_close(torch.autograd.grad(y.sum(), x)[0], torch.autograd.grad(bias_act(x, b, act="lrelu", impl="ref").sum(), x)[0])
    xt = torch.randn(4, 6, 5, device=TRITON_DEVICE).transpose(0, 2)
    bt = torch.randn(6, device=TRITON_DEVICE)
    assert_close(bias_act(xt, bt, act="relu", impl="triton"), bias_act(xt, bt, act="relu", impl="ref"))


def test_other_activations_fall_back_with_one_warning():
    from kernels import _dispatch

    _dispatch._warned.clear()
    x = torch.randn(2, 3, device=TRITON_DEVICE)
    with pytest.warns(RuntimeWarning, match="activation 'tanh' has no Triton kernel"):
        y = bias_act(x, act="tanh", impl="triton")
    assert_close(y, bias_act(x, act="tanh", impl="ref"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bias_act(x, act="tanh", impl="triton")


def test_opcheck():
    from kernels._bias_act_triton import bias_act_fwd, bias_act_grad

    x = torch.randn(2, 3, 4, device=TRITON_DEVICE, requires_grad=True)
    b = torch.randn(3, device=TRITON_DEVICE, requires_grad=True)
    torch.library.opcheck(bias_act_fwd, (x, b, 1, 0.2, 1.41, 0.5), test_utils=OPCHECK_UTILS)
    dy = torch.randn(2, 3, 4, device=TRITON_DEVICE, requires_grad=True)
    torch.library.opcheck(bias_act_grad, (dy, x.detach(), b.detach(), 1, 0.2, 1.41, -1.0), test_utils=OPCHECK_UTILS)


def test_compiled_matches_eager_cpu():
    x = torch.randn(4, 8, 5, 5, requires_grad=True)
    b = torch.randn(8, requires_grad=True)
    fn = lambda x, b: bias_act(x, b, act="lrelu", clamp=1.0, impl="ref").square().sum()  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True)
    assert_close(compiled(x, b), fn(x, b), scale=100)
    got = torch.autograd.grad(compiled(x, b), (x, b))
    want = torch.autograd.grad(fn(x, b), (x, b))
    assert_close(got[0], want[0])
    assert_close(got[1], want[1], scale=100)


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_triton_matches_eager_gpu(dtype):
    x = torch.randn(8, 512, 16, 16, device="cuda", dtype=dtype, requires_grad=True)
    b = torch.randn(512, device="cuda", dtype=dtype, requires_grad=True)
    fn = lambda x, b: bias_act(x, b, act="lrelu", clamp=256.0, impl="triton")  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True)
    assert_close(compiled(x, b), fn(x, b))
    dy = torch.randn_like(x)
    got = torch.autograd.grad(compiled(x, b), (x, b), dy)
    want = torch.autograd.grad(fn(x, b), (x, b), dy)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1], scale=8 * 16 * 16)
