"""The per-layer profile (bench/profile_layers.py) as a benchmark: one G + D profile per stage.

CPU smoke: tiny preset at 16² and 32² (fp32, batch 2, lite0, random D weights). GPU: the paper
preset at every stage 16²..1024² (bf16 synthesis, D under bf16 autocast, batch 8 = the README
recipe's batch per GPU, DeiT-B + lite0). The D feature networks use random weights here: timings
do not depend on the weight values and the GPU machine has no pretrained cache. The benchmark's
own time is the whole profile (one round); the per-part medians are in extra_info["rows"]. Under
--benchmark-disable (the CI smoke) each part runs once after one warm-up.
"""

from __future__ import annotations

import pytest

from bench.conftest import DEVICE, HAS_CUDA
from bench.profile_layers import markdown, run_profile

GPU_STAGES = (16, 32, 64, 128, 256, 512, 1024)
CASES = [pytest.param("tiny", res, id=f"tiny{res}") for res in (16, 32)] + [
    pytest.param("paper", res, id=f"paper{res}", marks=pytest.mark.skipif(not HAS_CUDA, reason="GPU size: needs a CUDA GPU"))
    for res in GPU_STAGES
]


@pytest.mark.parametrize("preset,res", CASES)
def bench_profile(benchmark, roofline, preset, res):
    if preset == "tiny" and HAS_CUDA:
        pytest.skip("CPU smoke size: the GPU runs the paper preset")
    result = {}
    quick = dict(repeats=1, warmup=1) if benchmark.disabled else {}  # --benchmark-disable: a smoke run

    def fn():
        result.update(run_profile(res, device=DEVICE, preset=preset, d_weights="random", **quick))

    benchmark.pedantic(fn, rounds=1, iterations=1, warmup_rounds=0)
    rows = result["rows"]
    totals = {net: sum(r["fwd_ms"] + (r["bwd_ms"] or 0.0) for r in rows if r["net"] == net) for net in ("G", "D")}
    benchmark.extra_info.update(
        device=roofline.device, matmul_tflops=roofline.matmul_tflops, matmul_dtype=roofline.matmul_dtype,
        meta=result["meta"], G_fwd_bwd_ms=totals["G"], D_fwd_bwd_ms=totals["D"], rows=rows,
        markdown=markdown(result),
    )
