"""modulated_conv2d: grouped reference vs numpy loops, shared-weight form vs reference."""

from __future__ import annotations

import pytest
import torch

from kernels import modulated_conv2d
from tests.conftest import TRITON_DEVICE, assert_close, gpu
from tests.kernels import numpy_ref

# (N, I, O, H, k, demodulate, padding, input_gain)
CASES = [
    (2, 5, 4, 6, 3, True, 2, None),  # a synthesis layer (full padding)
    (3, 7, 3, 5, 1, False, 0, None),  # ToRGB: 1x1, no demodulation
    (1, 3, 7, 4, 3, True, 1, 0.7),  # batch 1, input gain
    (2, 4, 5, 1, 3, True, 2, "per_channel"),  # 1x1 input
]


def _inputs(case, dtype, requires_grad=True):
    n, i, o, h, k, demod, pad, gain = case
    x = torch.randn(n, i, h, h, dtype=dtype, requires_grad=requires_grad)
    w = torch.randn(o, i, k, k, dtype=torch.float64 if dtype == torch.float64 else torch.float32, requires_grad=requires_grad)
    s = torch.randn(n, i, dtype=w.dtype, requires_grad=requires_grad)
    if gain == "per_channel":
        gain = torch.rand(i, dtype=w.dtype) + 0.5
    return x, w, s, dict(demodulate=demod, padding=pad, input_gain=gain)


@pytest.mark.parametrize("case", CASES)
def test_reference_matches_numpy(case):
    x, w, s, kw = _inputs(case, torch.float64, requires_grad=False)
    g = kw["input_gain"]
    g = g.numpy() if isinstance(g, torch.Tensor) else g
    want = numpy_ref.modulated_conv2d(x.numpy(), w.numpy(), s.numpy(), kw["demodulate"], kw["padding"], g)
    assert_close(modulated_conv2d(x, w, s, impl="ref", **kw), torch.from_numpy(want))


@pytest.mark.parametrize("impl", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case, dtype, impl):
    """Shared-weight form ('cuda') and Triton modulation + cuDNN conv ('triton') vs the grouped
    reference: output and the gradients for x, weight and styles."""
    device = TRITON_DEVICE if impl == "triton" else "cpu"
    x, w, s, kw = _inputs(case, dtype)
    x, w, s = (t.detach().to(device).requires_grad_() for t in (x, w, s))
    if isinstance(kw["input_gain"], torch.Tensor):
        kw["input_gain"] = kw["input_gain"].to(device)
    y = modulated_conv2d(x, w, s, impl=impl, **kw)
    r = modulated_conv2d(x, w, s, impl="ref", **kw)
    assert y.dtype == dtype
    # Outputs are O(1) with demodulation; without it they scale with sqrt(I * k * k) * |s|.
    scale = 1.0 if kw["demodulate"] else float(r.detach().double().abs().max())
    assert_close(y, r, scale=scale)
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, w, s), dy)
    want = torch.autograd.grad(r, (x, w, s), dy)
    assert_close(got[0], want[0], scale=scale)
    # Weight and style grads are float32 sums over the batch and the image: compare relative
    # to their magnitude, with the tolerance of the dtype the convolution ran in.
    for g, e in zip(got[1:], want[1:]):
        assert_close(g, e, dtype=dtype, scale=float(e.abs().max()))


@pytest.mark.parametrize("impl", ["ref", "cuda"])
def test_gradcheck_and_gradgradcheck(impl):
    x, w, s, kw = _inputs((2, 3, 2, 3, 3, True, 1, None), torch.float64)
    fn = lambda x, w, s: modulated_conv2d(x, w, s, impl=impl, **kw)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, s))
    assert torch.autograd.gradgradcheck(fn, (x, w, s))


@pytest.mark.parametrize("impl", ["ref", "cuda", "triton"])
def test_return_dcoefs_recomposes(impl):
    """(y before demodulation) * d == the demodulated output; d is None without demodulation."""
    device = TRITON_DEVICE if impl == "triton" else "cpu"
    x, w, s, kw = _inputs(CASES[0], torch.float64, requires_grad=False)
    x, w, s = x.to(device), w.to(device), s.to(device)
    yu, d = modulated_conv2d(x, w, s, impl=impl, return_dcoefs=True, **kw)
    assert d.shape == (x.shape[0], w.shape[0]) and d.dtype == torch.float64
    assert_close(yu * d[:, :, None, None], modulated_conv2d(x, w, s, impl="ref", **kw))
    y, none = modulated_conv2d(x, w, s, impl=impl, return_dcoefs=True, demodulate=False, padding=2)
    assert none is None
    assert_close(y, modulated_conv2d(x, w, s, impl="ref", demodulate=False, padding=2), scale=float(y.abs().max()))


def test_scale_channels_opcheck_and_gradcheck():
    from kernels._scale_triton import scale_channels

    from tests.conftest import OPCHECK_UTILS

    x = torch.randn(2, 3, 4, 5, device=TRITON_DEVICE, requires_grad=True)
    s = torch.randn(2, 3, device=TRITON_DEVICE, requires_grad=True)
    torch.library.opcheck(scale_channels, (x, s), test_utils=OPCHECK_UTILS)
    xd = torch.randn(2, 3, 2, 3, device=TRITON_DEVICE, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()
    sd = torch.randn(2, 3, device=TRITON_DEVICE, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(scale_channels, (xd, sd))
    assert torch.autograd.gradgradcheck(scale_channels, (xd, sd))


def test_compiled_matches_eager_cpu():
    x, w, s, kw = _inputs(CASES[0], torch.float32)
    fn = lambda x, w, s: modulated_conv2d(x, w, s, impl="cuda", **kw)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True)
    assert_close(compiled(x, w, s), fn(x, w, s))
    dy = torch.randn_like(fn(x, w, s))
    got = torch.autograd.grad(compiled(x, w, s), (x, w, s), dy)
    want = torch.autograd.grad(fn(x, w, s), (x, w, s), dy)
    for g, e in zip(got, want):
        assert_close(g, e, scale=float(e.abs().max()))


@gpu
def test_compiled_synthesis_layer_matches_eager_gpu():
    """Modulated conv (Triton modulation) + fused filtered_lrelu with the demodulation fold."""
    from kernels import filtered_lrelu

    x = torch.randn(4, 64, 36, 36, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(32, 64, 3, 3, device="cuda", requires_grad=True)
    s = torch.randn(4, 64, device="cuda", requires_grad=True)
    b = torch.randn(32, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    f = torch.ones(12, device="cuda") / 12

    def layer(x, w, s, b):
        y, d = modulated_conv2d(x, w, s, padding=2, impl="triton", return_dcoefs=True)
        return filtered_lrelu(y, f, f, b, up=2, down=2, padding=(9, 8, 9, 8), clamp=256.0, in_scale=d, impl="triton")

    compiled = torch.compile(layer, fullgraph=True)
    assert_close(compiled(x, w, s, b), layer(x, w, s, b))
    dy = torch.randn_like(layer(x, w, s, b))
    got = torch.autograd.grad(compiled(x, w, s, b), (x, w, s, b), dy)
    want = torch.autograd.grad(layer(x, w, s, b), (x, w, s, b), dy)
    for g, e in zip(got, want):
        assert_close(g, e, dtype=torch.bfloat16, scale=float(e.abs().max()))
