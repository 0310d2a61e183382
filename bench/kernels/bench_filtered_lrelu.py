"""filtered_lrelu per impl on real head-layer shapes (256², 512², 1024² stages, batch 32, bf16).

Impls: the fused Triton kernel, the 'cuda' composite, the reference and torch.compile of the
reference. Bytes that must move: x read + y written (+ the 2-bit mask written when a gradient
is needed); backward adds dy read, mask read, dx written. Reported against the measured copy
bandwidth; FLOPs (SPEC 9's count) against the measured matmul rate.
"""

from __future__ import annotations

import pytest
import torch

from bench.conftest import DEVICE, HAS_CUDA, run_benchmark
from bench.layers import flrelu_flops, gpu_layers, smoke_layers
from kernels import filtered_lrelu

LAYERS = [pytest.param(layer, id=layer.id) for layer in smoke_layers()] + [
    pytest.param(layer, id=layer.id, marks=pytest.mark.skipif(not HAS_CUDA, reason="GPU size: needs a CUDA GPU"))
    for layer in gpu_layers()
]
DTYPE = torch.bfloat16 if HAS_CUDA else torch.float32
_compiled_ref = {}


def _call(impl, x, b, kw):
    if impl != "compiled_ref":
        return filtered_lrelu(x, b=b, impl=impl, **kw)
    key = tuple(sorted((k, v if not isinstance(v, torch.Tensor) else v.shape) for k, v in kw.items()))
    if key not in _compiled_ref:
        _compiled_ref[key] = torch.compile(lambda x, b: filtered_lrelu(x, b=b, impl="ref", **kw))
    return _compiled_ref[key](x, b)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", ["triton", "cuda", "ref", "compiled_ref"])
@pytest.mark.parametrize("layer", LAYERS)
def bench_filtered_lrelu(benchmark, roofline, layer, impl, backward):
    s = layer.spec
    n, c, h = layer.batch, layer.out_channels, layer.conv_size
    st = (s.out.size - 1) * s.down + s.down_taps
    if impl in ("ref", "compiled_ref", "cuda") and HAS_CUDA:
        need = n * c * st * st * 4 * (6 if backward else 3)  # fp32 upsampled buffers the composites keep
        if need > 0.5 * torch.cuda.get_device_properties(0).total_memory:
            pytest.skip(f"{impl} would need about {need / 2**30:.0f} GiB for its upsampled buffers")
    if impl == "compiled_ref" and (not HAS_CUDA or not layer.id.startswith("res256")):
        pytest.skip("torch.compile of the reference: GPU only, 256² layers only (compile time)")
    x = torch.randn(n, c, h, h, device=DEVICE, dtype=DTYPE, requires_grad=backward)
    b = torch.zeros(c, device=DEVICE, dtype=DTYPE, requires_grad=backward)
    fu, fd = layer.filters(DEVICE)
    kw = dict(fu=fu, fd=fd, up=s.up, down=s.down, padding=s.padding, gain=1.0 if s.torgb else 2**0.5,
              slope=1.0 if s.torgb else 0.2, clamp=256.0)
    y = _call(impl, x, b, kw)
    dy = torch.randn_like(y)

    def fn():
        out = _call(impl, x, b, kw)
        if backward:
            torch.autograd.grad(out, (x, b), dy)

    seconds = run_benchmark(benchmark, fn, rounds=10 if HAS_CUDA else 2, warmup_rounds=2 if HAS_CUDA else 1)
    if seconds is None:
        return
    mask = n * c * st * ((st + 3) // 4)
    nbytes = (x.numel() + y.numel()) * x.element_size()
    if backward:
        nbytes += mask + mask + (x.numel() + y.numel()) * x.element_size()
    flops = flrelu_flops(layer) * (3 if backward else 1)
    benchmark.extra_info.update(
        device=roofline.device, dtype=str(DTYPE), layer=s.name, shape=[n, c, h, h], out_shape=list(y.shape), up=s.up,
        down=s.down, impl=impl, backward=backward, median_ms=seconds * 1e3, gbps=nbytes / seconds / 1e9,
        fraction_of_copy_bw=nbytes / seconds / 1e9 / roofline.copy_gbps, tflops=flops / seconds / 1e12,
        fraction_of_matmul=flops / seconds / 1e12 / roofline.matmul_tflops,
    )
