"""One whole synthesis layer (modulated conv + filtered_lrelu) per path, on real head-layer shapes.

- ref: grouped conv + reference filtered_lrelu.
- cuda: shared-weight conv + the ATen filtered_lrelu composite.
- triton: Triton modulation + cuDNN conv + demodulation pass + fused filtered_lrelu.
- triton_fold: the same with the demodulation folded into the fused kernel's load
  (modulated_conv2d(return_dcoefs=True) + filtered_lrelu(in_scale=d)): what the generator runs.
"""

from __future__ import annotations

import pytest
import torch

from bench.conftest import DEVICE, HAS_CUDA, run_benchmark
from bench.layers import flrelu_flops, gpu_layers, smoke_layers
from kernels import filtered_lrelu, modulated_conv2d

LAYERS = [pytest.param(layer, id=layer.id) for layer in smoke_layers()] + [
    pytest.param(layer, id=layer.id, marks=pytest.mark.skipif(not HAS_CUDA, reason="GPU size: needs a CUDA GPU"))
    for layer in gpu_layers()
]
DTYPE = torch.bfloat16 if HAS_CUDA else torch.float32


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("path", ["triton_fold", "triton", "cuda", "ref"])
@pytest.mark.parametrize("layer", LAYERS)
def bench_synthesis_layer(benchmark, roofline, layer, path, backward):
    s = layer.spec
    n, i, o, h, k = layer.batch, layer.in_channels, layer.out_channels, s.inp.size, s.kernel_size
    st = (s.out.size - 1) * s.down + s.down_taps
    if path in ("ref", "cuda") and HAS_CUDA:
        need = n * o * st * st * 4 * (6 if backward else 3)
        if need > 0.5 * torch.cuda.get_device_properties(0).total_memory:
            pytest.skip(f"{path} would need about {need / 2**30:.0f} GiB for its upsampled buffers")
    x = torch.randn(n, i, h, h, device=DEVICE, dtype=DTYPE, requires_grad=backward)
    w = torch.randn(o, i, k, k, device=DEVICE, requires_grad=backward)
    st_ = torch.randn(n, i, device=DEVICE, requires_grad=backward)
    b = torch.zeros(o, device=DEVICE, dtype=DTYPE, requires_grad=backward)
    fu, fd = layer.filters(DEVICE)
    kw = dict(fu=fu, fd=fd, up=s.up, down=s.down, padding=s.padding, gain=1.0 if s.torgb else 2**0.5,
              slope=1.0 if s.torgb else 0.2, clamp=256.0)
    demod = not s.torgb

    def layer_fn():
        if path == "triton_fold":
            y, d = modulated_conv2d(x, w, st_, demodulate=demod, padding=k - 1, impl="triton", return_dcoefs=True)
            return filtered_lrelu(y, b=b, in_scale=d, impl="triton", **kw)
        y = modulated_conv2d(x, w, st_, demodulate=demod, padding=k - 1, impl=path)
        return filtered_lrelu(y, b=b, impl=path, **kw)

    out = layer_fn()
    dy = torch.randn_like(out)

    def fn():
        y = layer_fn()
        if backward:
            torch.autograd.grad(y, (x, w, st_, b), dy)

    seconds = run_benchmark(benchmark, fn, rounds=10 if HAS_CUDA else 2, warmup_rounds=2 if HAS_CUDA else 1)
    if seconds is None:
        return
    hc = h + k - 1
    flops = (2 * n * i * o * k * k * hc * hc + flrelu_flops(layer)) * (3 if backward else 1)
    benchmark.extra_info.update(
        device=roofline.device, dtype=str(DTYPE), layer=s.name, shape=[n, i, h, h], out_shape=list(out.shape),
        path=path, backward=backward, median_ms=seconds * 1e3, tflops=flops / seconds / 1e12,
        fraction_of_matmul=flops / seconds / 1e12 / roofline.matmul_tflops,
    )
