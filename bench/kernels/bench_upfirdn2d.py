"""upfirdn2d per impl on the generator's shapes, forward and forward+backward, GB/s in extra_info.

Shapes: the two upfirdn2d passes inside filtered_lrelu of a 16² stem layer (1024 channels,
38² conv output), of a 256² head layer (256 channels) and of the last 1024² layers (64
channels, 1044² maps), batch 8 as in the spec's recipe (batch_gpu 8). Bytes moved = input read
+ output written (the minimum any implementation must move); GB/s is held against the
measured copy bandwidth.
"""

from __future__ import annotations

import pytest
import torch

from bench.conftest import DEVICE, HAS_CUDA, run_benchmark
from kernels import upfirdn2d

# name -> (N, C, H, taps, up, down, padding)
GPU_SHAPES = {
    "stem16_up2": (8, 1024, 38, 12, 2, 1, (9, 8, 9, 8)),
    "stem16_down2": (8, 1024, 82, 12, 1, 2, 0),
    "res256_up2": (8, 256, 278, 12, 2, 1, (9, 8, 9, 8)),
    "res256_down2": (8, 256, 562, 12, 1, 2, 0),
    "res1024_up2": (8, 64, 1046, 12, 2, 1, (9, 8, 9, 8)),
    "res1024_down2": (8, 64, 2098, 12, 1, 2, 0),
}
SMOKE_SHAPES = {"smoke_up2": (1, 4, 12, 12, 2, 1, (9, 8, 9, 8)), "smoke_down2": (1, 4, 24, 12, 1, 2, 0)}
SHAPES = {**SMOKE_SHAPES, **GPU_SHAPES}
SHAPE_PARAMS = [pytest.param(k, id=k) for k in SMOKE_SHAPES] + [
    pytest.param(k, id=k, marks=pytest.mark.skipif(not HAS_CUDA, reason="GPU size: needs a CUDA GPU"))
    for k in GPU_SHAPES
]
DTYPES = [torch.bfloat16] if HAS_CUDA else [torch.float32]


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", ["triton", "cuda", "ref"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPE_PARAMS)
def bench_upfirdn2d(benchmark, roofline, shape, dtype, impl, backward):
    n, c, h, taps, up, down, pad = SHAPES[shape]
    x = torch.randn(n, c, h, h, device=DEVICE, dtype=dtype, requires_grad=backward)
    f = torch.randn(taps, device=DEVICE)
    f = f / f.sum()
    y = upfirdn2d(x, f, up=up, down=down, padding=pad, gain=up * up, impl=impl)
    dy = torch.randn_like(y)

    def fn():
        out = upfirdn2d(x, f, up=up, down=down, padding=pad, gain=up * up, impl=impl)
        if backward:
            torch.autograd.grad(out, x, dy)

    seconds = run_benchmark(benchmark, fn)
    if seconds is None:
        return
    # Forward: read x, write y. Backward adds read dy, write dx.
    nbytes = (x.numel() + y.numel()) * x.element_size() * (2 if backward else 1)
    benchmark.extra_info.update(
        device=roofline.device, dtype=str(dtype), shape=[n, c, h, h], out_shape=list(y.shape), up=up, down=down,
        taps=taps, impl=impl, backward=backward, median_ms=seconds * 1e3, gbps=nbytes / seconds / 1e9,
        copy_gbps=roofline.copy_gbps, fraction_of_copy_bw=nbytes / seconds / 1e9 / roofline.copy_gbps,
    )
