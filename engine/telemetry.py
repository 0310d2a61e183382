"""GPU telemetry through pynvml (nvidia-ml-py): memory, utilization, power, energy, clocks.

One helper for the training status line and the benchmarks. Without an NVIDIA driver (or
without pynvml) every call returns an empty dict: telemetry is off, nothing fails.
"""

from __future__ import annotations


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

    def read(self) -> dict:
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
            try:
                out[key] = float(fn())
            except Exception:  # a counter this GPU or driver does not expose
                pass
        return out
