"""Inference latency and throughput of the EMA generator (a Generator in eval mode), eager and compiled.

Inside the timing: the mapping (z + class embedding -> w), truncation (psi 0.7 towards the
class's w_avg row, on every ws), the synthesis network and its x0.25 output scale, under
torch.no_grad; the image stays on the device as float32 (no uint8 quantization, no
device-to-host copy); a synchronize closes every call. Outside: building the model, drawing z
and the labels, compilation (warm-up rounds; the first call's seconds are reported apart).

GPU: paper preset (bf16 synthesis), 1000 classes, at 128², 256², 512², 1024²; batch 1
(latency: the per-sample seconds compared with the paper's Table 3, bench/paper.py) and batch 64
(throughput); eager, and compiled with torch.compile(mode="reduce-overhead", fullgraph=True)
(inductor + CUDA graphs, which removes most of batch 1's launch overhead). CPU smoke: tiny preset
at 16² and 32², batch 1, eager.
"""

from __future__ import annotations

import gc
import time

import pytest
import torch

from bench.conftest import DEVICE, HAS_CUDA, run_benchmark, sync
from bench.paper import TABLE3_SECONDS
from bench.profile_layers import generator_forward_flops
from engine.compile import maybe_compile
from model.generator import build_generator

C_DIM = 1000
PSI = 0.7
COMPILE_MODE = "reduce-overhead"
TIMED = ("mapping + truncation (psi 0.7, class w_avg) + synthesis + x0.25 output, no_grad; output stays on the "
         "device as float32 (no uint8 quantization, no device-to-host copy); synchronize after each call")

GPU = pytest.mark.skipif(not HAS_CUDA, reason="GPU size: needs a CUDA GPU")
CASES = [pytest.param("tiny", res, 1, id=f"tiny{res}_b1") for res in (16, 32)] + [
    pytest.param("paper", res, batch, id=f"paper{res}_b{batch}", marks=GPU) for res in (128, 256, 512, 1024) for batch in (1, 64)
]


def _compile(G: torch.nn.Module) -> torch.nn.Module:
    """The one compile call of the inference benchmark (CUDA graphs through mode="reduce-overhead")."""
    return maybe_compile(G, enabled=True, device=DEVICE, mode=COMPILE_MODE)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("preset,res,batch", CASES)
def bench_generator_inference(benchmark, roofline, preset, res, batch, compiled):
    if compiled and not HAS_CUDA:
        pytest.skip("torch.compile runs on GPU only")
    if preset == "tiny" and HAS_CUDA:
        pytest.skip("CPU smoke size: the GPU runs the paper preset")
    torch._dynamo.reset()
    G = build_generator(preset, res, C_DIM).to(DEVICE).eval().requires_grad_(False)
    z = torch.randn(batch, G.cfg.z_dim, device=DEVICE)
    c = torch.randint(0, C_DIM, (batch,), device=DEVICE)
    psi = torch.tensor(PSI, device=DEVICE)  # a 0-d tensor: truncation on, no recompiles
    model = _compile(G) if compiled else G

    def fn():
        with torch.no_grad():
            model(z, c, psi=psi)

    info = dict(device=roofline.device, preset=preset, resolution=res, batch=batch, dtype=G.cfg.dtype, c_dim=C_DIM,
                compiled=compiled, compile_mode=COMPILE_MODE if compiled else None, timed=TIMED)
    if HAS_CUDA:
        torch.cuda.reset_peak_memory_stats()
    try:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        info["first_call_s"] = time.perf_counter() - t0
        seconds = run_benchmark(benchmark, fn, rounds=(20 if batch == 1 else 5) if HAS_CUDA else 3,
                                warmup_rounds=3 if HAS_CUDA else 1)
    except Exception as e:  # OutOfMemoryError, or one wrapped by the compiler: record it, do not crash
        if not isinstance(e, torch.OutOfMemoryError) and "out of memory" not in str(e).lower():
            raise
        info["out_of_memory"] = str(e).splitlines()[0]
        seconds = None
    info["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30 if HAS_CUDA else None
    if seconds is not None:
        flops = generator_forward_flops(G, batch)
        info.update(median_ms=seconds * 1e3, ms_per_image=seconds * 1e3 / batch, images_per_s=batch / seconds,
                    tflops=flops / seconds / 1e12, fraction_of_matmul=flops / seconds / 1e12 / roofline.matmul_tflops)
        if batch == 1 and res in TABLE3_SECONDS["StyleGAN-XL"]:
            info.update({f"paper_{k}_s": v[res] for k, v in TABLE3_SECONDS.items()})
            info.update({f"speedup_vs_paper_{k}": v[res] / seconds for k, v in TABLE3_SECONDS.items()})
    benchmark.extra_info.update(info)
    model = G = None
    gc.collect()
    if HAS_CUDA:
        torch.cuda.empty_cache()
    if "out_of_memory" in info:
        pytest.skip(f"out of memory at {res}², batch {batch}: {info['out_of_memory']}")
