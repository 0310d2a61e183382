"""GPU telemetry through pynvml (nvidia-ml-py): memory, utilization, power, energy, clocks.

One helper for the training status line and the benchmarks. Without an NVIDIA driver (or
without pynvml) every reading is empty or None: telemetry is off, nothing fails.

    tel = Telemetry()
    tel.read()                    # {"gpu_mem_gb", "gpu_util_pct", "power_w", "energy_j", "sm_clock_mhz"}
    with tel.measure(sync=torch.cuda.synchronize) as m:
        run_some_steps()
    m.energy_j, m.mean_power_w, m.seconds   # energy over the block (None without NVML)
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator


@dataclasses.dataclass(kw_only=True, slots=True)
class Measurement:
    """What `Telemetry.measure()` saw over one block; filled in when the block exits."""

    seconds: float | None = None  # wall-clock seconds of the block (after the closing sync)
    energy_j: float | None = None  # GPU energy over the block, J (NVML's total-energy counter); None if unavailable
    mean_power_w: float | None = None  # energy_j / seconds, W
    sm_clock_mhz: float | None = None  # SM clock at the end of the block, MHz
    max_sm_clock_mhz: float | None = None  # the GPU's maximum SM clock, MHz (is it throttling?)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class Telemetry:
    def __init__(self, device_index: int = 0):
        self.handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            self.nvml = pynvml
        except Exception:  # NVMLError_LibraryNotFound on machines without a driver, ImportError, ...
            self.handle = None

    @property
    def enabled(self) -> bool:
        return self.handle is not None

    def _get(self, fn: Callable[[], float]) -> float | None:
        """One NVML reading as a float, or None where this GPU/driver does not expose it."""
        if self.handle is None:
            return None
        try:
            return float(fn())
        except Exception:  # a counter this GPU or driver does not expose
            return None

    def read(self) -> dict:
        """Current readings; keys absent where unavailable (an empty dict without NVML).

        Keys: gpu_mem_gb (used, GiB), gpu_util_pct, power_w, energy_j (counter since driver load),
        sm_clock_mhz.
        """
        if self.handle is None:
            return {}
        n, h = self.nvml, self.handle
        out = {}
        for key, fn in (
            ("gpu_mem_gb", lambda: n.nvmlDeviceGetMemoryInfo(h).used / 2**30),
            ("gpu_util_pct", lambda: n.nvmlDeviceGetUtilizationRates(h).gpu),
            ("power_w", lambda: n.nvmlDeviceGetPowerUsage(h) / 1000),
            ("energy_j", lambda: n.nvmlDeviceGetTotalEnergyConsumption(h) / 1000),
            ("sm_clock_mhz", lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
        ):
            value = self._get(fn)
            if value is not None:
                out[key] = value
        return out

    def energy_j(self) -> float | None:
        """NVML's total-energy counter in J (since the driver loaded; Volta and newer), or None."""
        return self._get(lambda: self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1000)

    def clocks(self) -> dict:
        """Current and maximum SM / memory clocks in MHz, and the power limit in W (empty without NVML)."""
        if self.handle is None:
            return {}
        n, h = self.nvml, self.handle
        out = {}
        for key, fn in (
            ("sm_clock_mhz", lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
            ("mem_clock_mhz", lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM)),
            ("max_sm_clock_mhz", lambda: n.nvmlDeviceGetMaxClockInfo(h, n.NVML_CLOCK_SM)),
            ("max_mem_clock_mhz", lambda: n.nvmlDeviceGetMaxClockInfo(h, n.NVML_CLOCK_MEM)),
            ("power_limit_w", lambda: n.nvmlDeviceGetEnforcedPowerLimit(h) / 1000),
        ):
            value = self._get(fn)
            if value is not None:
                out[key] = value
        return out

    @contextlib.contextmanager
    def measure(self, sync: Callable[[], None] | None = None) -> Iterator[Measurement]:
        """Energy, mean power and wall time of the enclosed block.

        `sync` (e.g. torch.cuda.synchronize) runs before the start and end readings so queued
        GPU work is counted in the block. NVML updates its energy counter every few ms: measure
        blocks of a second or more. Without NVML only `seconds` is filled in.
        """
        m = Measurement()
        if sync is not None:
            sync()
        e0, t0 = self.energy_j(), time.perf_counter()
        try:
            yield m
        finally:
            if sync is not None:
                sync()
            m.seconds = time.perf_counter() - t0
            e1 = self.energy_j()
            if e0 is not None and e1 is not None:
                m.energy_j = e1 - e0
                m.mean_power_w = m.energy_j / m.seconds if m.seconds > 0 else None
            clocks = self.clocks()
            m.sm_clock_mhz, m.max_sm_clock_mhz = clocks.get("sm_clock_mhz"), clocks.get("max_sm_clock_mhz")
