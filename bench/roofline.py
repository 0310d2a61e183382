"""Measured device roofs: every benchmark reports against these, not against datasheet peaks."""

from __future__ import annotations

import dataclasses
import time

import torch


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Roofline:
    device: str  # device name as the driver reports it
    copy_gbps: float  # measured device-to-device copy bandwidth, GB/s (read + write bytes)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(device: torch.device, nbytes: int | None = None, reps: int = 10) -> Roofline:
    """Median copy bandwidth of a large tensor copy on `device` (1 GiB on GPU, 64 MiB on CPU)."""
    if nbytes is None:
        nbytes = 2**30 if device.type == "cuda" else 2**26
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    for _ in range(3):  # warm-up
        dst.copy_(src)
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return Roofline(device=name, copy_gbps=2 * nbytes / times[len(times) // 2] / 1e9)
