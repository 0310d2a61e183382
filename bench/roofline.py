"""Measured device roofs: every benchmark reports against these, not against datasheet peaks."""

from __future__ import annotations

import dataclasses
import time

import torch


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Roofline:
    device: str  # device name as the driver reports it
    copy_gbps: float  # measured device-to-device copy bandwidth, GB/s (read + write bytes)
    matmul_tflops: float  # measured dense matmul rate, TFLOP/s (bf16 on GPU, float32 on CPU)
    matmul_dtype: str


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, device, reps):
    for _ in range(3):  # warm-up
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def measure(device: torch.device, nbytes: int | None = None, reps: int = 10) -> Roofline:
    """Median copy bandwidth (1 GiB on GPU, 64 MiB on CPU) and matmul rate (8192³ bf16 on GPU,
    1024³ float32 on CPU) on `device`."""
    if nbytes is None:
        nbytes = 2**30 if device.type == "cuda" else 2**26
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    copy_s = _median_seconds(lambda: dst.copy_(src), device, reps)
    m = 8192 if device.type == "cuda" else 1024
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(m, m, device=device, dtype=dtype)
    b = torch.randn(m, m, device=device, dtype=dtype)
    mm_s = _median_seconds(lambda: a @ b, device, reps)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return Roofline(device=name, copy_gbps=2 * nbytes / copy_s / 1e9, matmul_tflops=2 * m**3 / mm_s / 1e12,
                    matmul_dtype=str(dtype))
