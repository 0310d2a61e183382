"""Bad arguments raise ValueError/TypeError naming the argument, before any kernel runs."""

from __future__ import annotations

import pytest
import torch

from kernels import bias_act, filtered_lrelu, modulated_conv2d, upfirdn2d

x = torch.randn(1, 2, 8, 8)
f = torch.ones(3)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: upfirdn2d(x, f, up=0), ValueError, "up must be >= 1"),
        (lambda: upfirdn2d(x, f, down=-2), ValueError, "down must be >= 1"),
        (lambda: upfirdn2d(x, f, up=1.5), TypeError, "up must be an int"),
        (lambda: upfirdn2d(x, torch.ones(2, 2, 2)), ValueError, "f must be 1-D"),
        (lambda: upfirdn2d(x, f, padding=[1, 2, 3]), ValueError, "padding must have 1, 2 or 4 elements"),
        (lambda: upfirdn2d(x, f, padding=-4), ValueError, "padding"),
        (lambda: upfirdn2d(x, torch.ones(3, device="meta")), ValueError, "f is on meta"),
        (lambda: upfirdn2d(x, torch.ones(3, dtype=torch.int64)), TypeError, "f must be float32 or float64"),
        (lambda: upfirdn2d(x, torch.ones(3, requires_grad=True)), ValueError, "f must not require grad"),
        (lambda: upfirdn2d(torch.ones(1, 2, 8, 8, dtype=torch.int32), f), TypeError, "x must be float"),
        (lambda: upfirdn2d(torch.ones(2, 8, 8), f), ValueError, "x must have 4 dimensions"),
        (lambda: upfirdn2d(x, f, impl="cudnn"), ValueError, "impl must be one of"),
        (lambda: bias_act(x, torch.zeros(2, dtype=torch.float64)), TypeError, "b has dtype torch.float64"),
        (lambda: bias_act(x, torch.zeros(3)), ValueError, "b must have shape"),
        (lambda: bias_act(x, torch.zeros(2, device="meta")), ValueError, "b is on meta"),
        (lambda: bias_act(x, act="gelu"), ValueError, "act must be one of"),
        (lambda: bias_act(x, dim=4), ValueError, "dim must be"),
        (lambda: bias_act(x, clamp=-1), ValueError, "clamp must be"),
        (lambda: filtered_lrelu(x, f, f, up=0), ValueError, "up must be >= 1"),
        (lambda: filtered_lrelu(x, f, torch.ones(1, 1, 3)), ValueError, "fd must be 1-D"),
        (lambda: filtered_lrelu(x, f, f, padding=(1, 1, 1)), ValueError, "padding must have"),
        (lambda: filtered_lrelu(x, f, f, b=torch.zeros(2, dtype=torch.float16)), TypeError, "b has dtype"),
        (lambda: filtered_lrelu(x, f, f, in_scale=torch.ones(2, 2)), ValueError, "in_scale must have shape"),
        (lambda: filtered_lrelu(x, f, f, in_scale=torch.ones(1, 2, dtype=torch.float16)), TypeError, "in_scale must be"),
        (lambda: modulated_conv2d(x, torch.ones(3, 5, 3, 3), torch.ones(1, 2)), ValueError, "weight has 5 input channels"),
        (lambda: modulated_conv2d(x, torch.ones(3, 2, 3, 3), torch.ones(2, 2)), ValueError, "styles must have shape"),
        (lambda: modulated_conv2d(x, torch.ones(3, 2, 3, 3, device="meta"), torch.ones(1, 2)), ValueError, "weight is on meta"),
        (lambda: modulated_conv2d(x, torch.ones(3, 2, 3), torch.ones(1, 2)), ValueError, "weight must have 4 dimensions"),
    ],
)
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_filter_larger_than_input_names_the_problem():
    with pytest.raises(ValueError, match="smaller than the 12x12 filter"):
        upfirdn2d(torch.randn(1, 1, 4, 4), torch.ones(12), down=2)


def test_default_impl_per_device():
    """impl=None: Triton on CUDA; on CPU the ATen fallback for the FIR ops (measured faster there)
    and the reference for the others. The fallback is checked against the reference in each op's tests."""
    from kernels._dispatch import choose

    cpu = torch.zeros(1)
    assert choose("upfirdn2d", cpu, None) == "cuda" and choose("filtered_lrelu", cpu, None) == "cuda"
    assert choose("bias_act", cpu, None) == "ref" and choose("modulated_conv2d", cpu, None) == "ref"
    assert choose("upfirdn2d", cpu, "ref") == "ref"
