"""Training throughput per stage: one full iteration (G step + D step + EMA), eager and compiled.

The iteration is the training loop's own (engine/step.py's train_iteration) on one process with
one chunk (batch = batch_gpu), through engine/distributed.py's PlainBackend (torch.optim.Adam with
the SPEC 5.2 settings; the GPU machine has no DeepSpeed): G-main (D frozen; G(z, c) -> blur -> D
-> hinge g_loss, backward, Adam step), D-main (fakes from G under no_grad with the w_avg update,
then reals, each through blur and its own D call; one combined d_loss, backward, Adam step), then
the G_ema update. The models are built directly (model.generator.build_generator +
freeze_carried, ProjectedDiscriminator); compiled = engine/compile.py's regions. Not in
the timing: data loading (reals are a random device tensor), path-length regularization (stem,
every 4th iteration, from 1M images), classifier guidance, logging.

Figures in extra_info: images/s and sec/kimg (median iteration), the first iteration's seconds
(compilation included when compiled), model FLOPs utilization against the measured bf16 matmul
rate (bench/roofline.py) with the FLOPs model of SPEC 9 (per real image 4 x G forward from
model/specs.py, plus 4 x D forward counted by FlopCounterMode: three D forwards and the G step's
activation-gradient backward; head weight gradients neglected), peak memory, and energy per kimg
from NVML's energy counter (engine/telemetry.py; absent without NVML).

GPU: paper preset at every stage 16²..1024², batch 8 per GPU (the README recipe: --batch 64
--batch-gpu 8), bf16 synthesis, D under bf16 autocast (the engine's "auto"), DeiT-B + lite0 with
random weights (timing does not depend on weight values; the GPU machine has no pretrained
cache). A batch that runs out of memory is recorded (extra_info["fits"]) and halved until it
fits. CPU smoke: tiny preset at 16², batch 2, lite0 only, eager.
"""

from __future__ import annotations

import gc
import math
import time

import pytest
import torch

from bench.conftest import DEVICE, HAS_CUDA, run_benchmark, sync
from bench.profile_layers import discriminator_forward_flops, generator_forward_flops
from engine.config import OptimConfig
from engine.distributed import PlainBackend
from engine.step import train_iteration
from engine.telemetry import Telemetry
from model.config import D_HEAD_WIDTH, D_INPUT_SIZE, PRESETS
from model.discriminator import ProjectedDiscriminator
from model.feature_networks import DEIT_B, LITE0
from model.generator import build_generator, freeze_carried

C_DIM = 1000  # ImageNet-conditional, as the paper
BATCH_GPU = 8  # README recipe: batch 64 over 8 GPUs
GPU_STAGES = (16, 32, 64, 128, 256, 512, 1024)

CASES = [pytest.param("tiny", 16, 2, (LITE0,), id="tiny16_b2_lite0")] + [
    pytest.param("paper", res, BATCH_GPU, (DEIT_B, LITE0), id=f"paper{res}_b{BATCH_GPU}",
                 marks=pytest.mark.skipif(not HAS_CUDA, reason="GPU size: needs a CUDA GPU"))
    for res in GPU_STAGES
]


class TrainStep:
    """G, D and their optimizers for one stage in a PlainBackend; `step()` runs engine/step.py's
    train_iteration once (one chunk, blur at its start-of-stage strength, no path length)."""

    def __init__(self, preset: str, res: int, batch: int, backbones, *, compiled: bool, device: torch.device):
        self.batch, self.device = batch, device
        G = build_generator(preset, res, C_DIM).to(device)
        freeze_carried(G)
        D = ProjectedDiscriminator(backbones, C_DIM, weights="random", input_size=D_INPUT_SIZE[preset],
                                   head_width=D_HEAD_WIDTH[preset]).to(device)  # the preset's D, as training builds it
        self.g_fwd_flops = generator_forward_flops(G, 1)
        n = min(batch, 2)
        d_flops = discriminator_forward_flops(D, res, n, device, device.type == "cuda")
        self.d_fwd_flops = None if d_flops is None else d_flops / n
        self.split = D.num_logits(res)
        self.be = PlainBackend(device=device, precision={"G": "fp32", "D": "autocast_bf16" if device.type == "cuda"
                                                         else "fp32"})
        self.be.setup(G, D, OptimConfig(), compile=compiled)
        self.z_dim = G.cfg.z_dim
        self.reals = [(torch.rand(batch, 3, res, res, device=device) * 2 - 1,
                       torch.randint(0, C_DIM, (batch,), device=device))]
        self.sigma = torch.tensor(2.0, device=device)  # blur at its start-of-stage strength (0-d: no recompiles)

    def _draw(self, phase: str, r: int, n: int):
        return (torch.randn(n, self.z_dim, device=self.device), torch.randint(0, C_DIM, (n,), device=self.device))

    def step(self) -> None:
        train_iteration(self.be, self.reals, self._draw, split=self.split, c_dim=C_DIM, reduction="sum",
                        sigma=self.sigma, ema_beta=0.997784)  # SPEC 5.7's per-iteration beta after ramp-up

    def flops_per_image(self) -> float | None:
        """SPEC 9's model: 4 x G forward + 4 x D forward per real image."""
        return None if self.d_fwd_flops is None else 4 * self.g_fwd_flops + 4 * self.d_fwd_flops


def _free() -> None:
    gc.collect()
    if HAS_CUDA:
        torch.cuda.empty_cache()


def _build_fitting(preset, res, batch, backbones, compiled, fits: dict):
    """Build and run one step at `batch`, halving on CUDA out-of-memory. Returns (trainer, first_step_s)."""
    while batch >= 1:
        try:
            trainer = TrainStep(preset, res, batch, backbones, compiled=compiled, device=DEVICE)
            sync()
            t0 = time.perf_counter()
            trainer.step()
            sync()
            fits[str(batch)] = True
            return trainer, time.perf_counter() - t0
        except Exception as e:  # OutOfMemoryError, or one wrapped by the compiler
            if not isinstance(e, torch.OutOfMemoryError) and "out of memory" not in str(e).lower():
                raise
            fits[str(batch)] = False
            fits[f"oom_{batch}"] = str(e).splitlines()[0]
        trainer = None
        _free()  # outside the except block: the traceback no longer pins the failed step's tensors
        batch //= 2
    return None, None


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("preset,res,batch,backbones", CASES)
def bench_training_step(benchmark, roofline, preset, res, batch, backbones, compiled):
    if compiled and not HAS_CUDA:
        pytest.skip("CPU smoke runs eager: compiled timing is a GPU figure")
    if preset == "tiny" and HAS_CUDA:
        pytest.skip("CPU smoke size: the GPU runs the paper preset")
    torch._dynamo.reset()
    fits: dict = {}
    trainer, first_s = _build_fitting(preset, res, batch, backbones, compiled, fits)
    info = dict(device=roofline.device, preset=preset, resolution=res, batch_requested=batch, fits=fits,
                compiled=compiled, g_dtype=PRESETS[preset](res).dtype,
                d_precision="autocast_bf16" if HAS_CUDA else "fp32", d_backbones=list(backbones), d_weights="random",
                c_dim=C_DIM, timed="G step + D step + EMA; no data loading, path length, guidance or logging")
    if trainer is None:
        benchmark.extra_info.update(info)
        pytest.skip(f"out of memory at every batch down to 1 at {res}²: {fits}")
    if HAS_CUDA:
        torch.cuda.reset_peak_memory_stats()
    # The first step (above) already warmed up; on GPU two more let compiled graphs and autotuning settle.
    seconds = run_benchmark(benchmark, trainer.step, rounds=10 if HAS_CUDA else 2, warmup_rounds=2 if HAS_CUDA else 0)
    flops = trainer.flops_per_image()
    info.update(batch=trainer.batch, first_step_s=first_s, g_fwd_tflop_per_image=trainer.g_fwd_flops / 1e12,
                d_fwd_tflop_per_image=None if trainer.d_fwd_flops is None else trainer.d_fwd_flops / 1e12,
                model_tflop_per_image=None if flops is None else flops / 1e12,
                peak_mem_gb=torch.cuda.max_memory_allocated() / 2**30 if HAS_CUDA else None,
                matmul_tflops=roofline.matmul_tflops, matmul_dtype=roofline.matmul_dtype)
    if seconds is not None:
        img_s = trainer.batch / seconds
        info.update(step_ms=seconds * 1e3, images_per_s=img_s, sec_per_kimg=1000 / img_s)
        if flops is not None:
            info.update(model_tflops=flops * img_s / 1e12, mfu=flops * img_s / 1e12 / roofline.matmul_tflops)
        tel = Telemetry()
        if tel.enabled:  # energy over >= 3 s of steady-state iterations
            steps = max(5, math.ceil(3.0 / seconds))
            with tel.measure(sync=sync) as m:
                for _ in range(steps):
                    trainer.step()
            info.update(energy_steps=steps, mean_power_w=m.mean_power_w, sm_clock_mhz=m.sm_clock_mhz,
                        max_sm_clock_mhz=m.max_sm_clock_mhz,
                        energy_j_per_kimg=None if m.energy_j is None else m.energy_j / (steps * trainer.batch) * 1000)
    benchmark.extra_info.update(info)
    del trainer
    _free()
