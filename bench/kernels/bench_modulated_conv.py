"""modulated_conv2d per impl on real head-layer shapes (256², 512², 1024², batch 32, bf16).

Impls: triton, the shared-weight 'cuda' form, the grouped reference, torch.compile of the
reference, and a plain cuDNN conv2d of the same shape (the yardstick: the target is at least
80 % of its speed). TFLOP/s over the measured matmul rate.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.conftest import DEVICE, HAS_CUDA, run_benchmark
from bench.layers import gpu_layers, smoke_layers
from kernels import modulated_conv2d

LAYERS = [pytest.param(layer, id=layer.id) for layer in smoke_layers()] + [
    pytest.param(layer, id=layer.id, marks=pytest.mark.skipif(not HAS_CUDA, reason="GPU size: needs a CUDA GPU"))
    for layer in gpu_layers()
]
DTYPE = torch.bfloat16 if HAS_CUDA else torch.float32


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", ["triton", "cuda", "ref", "compiled_ref", "plain_conv2d"])
@pytest.mark.parametrize("layer", LAYERS)
def bench_modulated_conv2d(benchmark, roofline, layer, impl, backward):
    if impl == "compiled_ref" and (not HAS_CUDA or not layer.id.startswith("res256")):
        pytest.skip("torch.compile of the reference: GPU only, 256² layers only (compile time)")
    s = layer.spec
    n, i, o, h, k = layer.batch, layer.in_channels, layer.out_channels, s.inp.size, s.kernel_size
    x = torch.randn(n, i, h, h, device=DEVICE, dtype=DTYPE, requires_grad=backward)
    w = torch.randn(o, i, k, k, device=DEVICE, requires_grad=backward)
    st = torch.randn(n, i, device=DEVICE, requires_grad=backward)
    inputs = (x, w, st)
    if impl == "plain_conv2d":
        wb = w.detach().to(DTYPE).requires_grad_(backward)
        call = lambda: F.conv2d(x, wb, padding=k - 1)  # noqa: E731
        inputs = (x, wb)
    elif impl == "compiled_ref":
        compiled = torch.compile(lambda x, w, st: modulated_conv2d(x, w, st, demodulate=not s.torgb, padding=k - 1, impl="ref"))
        call = lambda: compiled(x, w, st)  # noqa: E731
    else:
        call = lambda: modulated_conv2d(x, w, st, demodulate=not s.torgb, padding=k - 1, impl=impl)  # noqa: E731
    y = call()
    dy = torch.randn_like(y)

    def fn():
        out = call()
        if backward:
            torch.autograd.grad(out, inputs, dy)

    seconds = run_benchmark(benchmark, fn, rounds=10 if HAS_CUDA else 2, warmup_rounds=2 if HAS_CUDA else 1)
    if seconds is None:
        return
    hc = h + k - 1
    flops = 2 * n * i * o * k * k * hc * hc * (3 if backward else 1)
    benchmark.extra_info.update(
        device=roofline.device, dtype=str(DTYPE), layer=s.name, shape=[n, i, h, h], out_channels=o, impl=impl,
        backward=backward, median_ms=seconds * 1e3, tflops=flops / seconds / 1e12,
        fraction_of_matmul=flops / seconds / 1e12 / roofline.matmul_tflops,
    )
