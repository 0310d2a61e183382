"""GPU telemetry through pynvml (nvidia-ml-py): memory, utilization, power, energy, clocks.

One helper for the training status line and the benchmarks. Without an NVIDIA driver (or
without pynvml) every reading is empty or None: telemetry is off, nothing fails.

    tel = Telemetry(0)            # CUDA device 0 as torch sees it (after CUDA_VISIBLE_DEVICES)
    tel.describe()                # "NVML GPU-1b2c... (by uuid)" or "off: <reason>", for the log
    tel.read()                    # {"gpu_mem_gb", "gpu_util_pct", "power_w", "energy_j", "sm_clock_mhz"}
    with tel.measure(sync=torch.cuda.synchronize) as m:
        run_some_steps()
    m.energy_j, m.mean_power_w, m.seconds   # energy over the block (None without NVML)

Which GPU: NVML numbers GPUs physically (PCI bus order, every GPU of the machine); CUDA numbers
the GPUs of CUDA_VISIBLE_DEVICES in CUDA_DEVICE_ORDER. So the CUDA index is mapped through the
device's UUID (`torch.cuda.get_device_properties(i).uuid`, printed without NVML's "GPU-" prefix),
else its PCI bus id ("00000000:BB:DD.0" from pci_domain_id / pci_bus_id / pci_device_id), and only
when torch knows neither (no CUDA in this torch, or the index is not a visible device) through
the index itself, which is right only without CUDA_VISIBLE_DEVICES: with it set, telemetry is
off instead of reading another process's GPU. `source` says which way was taken.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
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


# NVML error codes that mean "this GPU or driver never has this counter": stop asking for it.
_NVML_NOT_SUPPORTED, _NVML_FUNCTION_NOT_FOUND = 3, 13


def _cuda_ids(device_index: int) -> tuple[str | None, str | None, str]:
    """(NVML UUID "GPU-...", PCI bus id "00000000:BB:DD.0", why neither) of CUDA device `device_index`."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None, None, "torch sees no CUDA device"
        if not 0 <= device_index < torch.cuda.device_count():
            return None, None, f"CUDA device {device_index} does not exist ({torch.cuda.device_count()} visible)"
        props = torch.cuda.get_device_properties(device_index)
    except Exception as exc:  # noqa: BLE001 - a broken CUDA setup only turns telemetry off
        return None, None, f"no CUDA device properties ({type(exc).__name__}: {exc})"
    uuid = getattr(props, "uuid", None)
    uuid = str(uuid).strip() if uuid is not None else ""
    if uuid and not uuid.startswith(("GPU-", "MIG-")):
        uuid = f"GPU-{uuid}"  # torch prints the 16 bytes as 8-4-4-4-12 hex; NVML's form is GPU-<that>
    pci = None
    if all(hasattr(props, a) for a in ("pci_domain_id", "pci_bus_id", "pci_device_id")):
        pci = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"  # NVML's busId form
    return uuid or None, pci, "torch exposes neither UUID nor PCI bus id"


class Telemetry:
    """NVML readings of one GPU: CUDA device `device_index` as torch numbers it (default 0).

    Attributes: handle (the NVML device handle, None when off), source ("uuid", "pci" or "index":
    how the handle was found; None when off), reason (why telemetry is off; None when on).
    Never raises: no driver, no pynvml or an unmappable device turns telemetry off.
    """

    def __init__(self, device_index: int = 0):
        self.handle, self.source, self.reason, self.nvml = None, None, None, None
        self.device_index = device_index
        self._unsupported: set[str] = set()  # counters this GPU/driver lacks: not asked again
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound on machines without a driver, ImportError, ...
            self.reason = f"NVML unavailable ({type(exc).__name__}: {exc})"
            return
        self.nvml = pynvml
        try:
            self.handle, self.source, self.reason = self._find_handle(pynvml, device_index)
        except Exception as exc:  # noqa: BLE001 - telemetry is never worth a failed run
            self.handle, self.source, self.reason = None, None, f"{type(exc).__name__}: {exc}"

    def _find_handle(self, n, device_index: int):
        """(handle, source, reason): by UUID, else PCI bus id, else the index where that is safe.
        (A MIG instance's UUID is not a GPU UUID: it is then found through its GPU's bus id.)"""
        uuid, pci, missing = _cuda_ids(device_index)
        tried = []
        if uuid is not None:
            try:
                return n.nvmlDeviceGetHandleByUUID(uuid), "uuid", None
            except Exception as exc:  # noqa: BLE001 - e.g. NVMLError_NotFound: try the bus id
                tried.append(f"uuid {uuid}: {type(exc).__name__}")
        if pci is not None:
            by_pci = getattr(n, "nvmlDeviceGetHandleByPciBusId_v2", None) or n.nvmlDeviceGetHandleByPciBusId
            try:
                return by_pci(pci), "pci", None
            except Exception as exc:  # noqa: BLE001
                tried.append(f"pci {pci}: {type(exc).__name__}")
        why = "; ".join(tried) if tried else missing
        if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
            return None, None, (f"CUDA device {device_index} not found in NVML ({why}) and CUDA_VISIBLE_DEVICES is "
                                f"set, so its NVML index is unknown")
        try:
            return n.nvmlDeviceGetHandleByIndex(device_index), "index", None
        except Exception as exc:  # noqa: BLE001
            return None, None, f"NVML has no GPU {device_index} ({why}; {type(exc).__name__}: {exc})"

    @property
    def enabled(self) -> bool:
        return self.handle is not None

    def describe(self) -> str:
        """One line for the log: which NVML device is read and how it was found, or why not."""
        if self.handle is None:
            return f"GPU telemetry off: {self.reason}"
        try:
            name = self.nvml.nvmlDeviceGetUUID(self.handle)
            name = name.decode() if isinstance(name, bytes) else name
        except Exception:  # noqa: BLE001
            name = "?"
        return f"GPU telemetry: CUDA device {self.device_index} = NVML {name} (by {self.source})"

    def _get(self, key: str, fn: Callable[[], float]) -> float | None:
        """One NVML reading as a float, or None where this GPU/driver does not expose it (a counter
        reported as not supported is skipped from then on, so it costs nothing per read)."""
        if self.handle is None or key in self._unsupported:
            return None
        try:
            return float(fn())
        except Exception as exc:  # a counter this GPU or driver does not expose, or a transient error
            if getattr(exc, "value", None) in (getattr(self.nvml, "NVML_ERROR_NOT_SUPPORTED", _NVML_NOT_SUPPORTED),
                                               getattr(self.nvml, "NVML_ERROR_FUNCTION_NOT_FOUND",
                                                       _NVML_FUNCTION_NOT_FOUND)):
                self._unsupported.add(key)
            return None

    def _readings(self, pairs) -> dict:
        out = {}
        for key, fn in pairs:
            value = self._get(key, fn)
            if value is not None:
                out[key] = value
        return out

    def read(self) -> dict:
        """Current readings; keys absent where unavailable (an empty dict without NVML).

        Keys: gpu_mem_gb (used, GiB), gpu_util_pct, power_w, energy_j (counter since driver load),
        sm_clock_mhz. Five NVML queries (tens of us to about a millisecond in all, and the
        utilization is itself an average over the driver's last sample period): call it once
        per tick (status line), not once per training step.
        """
        if self.handle is None:
            return {}
        n, h = self.nvml, self.handle
        return self._readings((
            ("gpu_mem_gb", lambda: n.nvmlDeviceGetMemoryInfo(h).used / 2**30),
            ("gpu_util_pct", lambda: n.nvmlDeviceGetUtilizationRates(h).gpu),
            ("power_w", lambda: n.nvmlDeviceGetPowerUsage(h) / 1000),
            ("energy_j", lambda: n.nvmlDeviceGetTotalEnergyConsumption(h) / 1000),
            ("sm_clock_mhz", lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
        ))

    def energy_j(self) -> float | None:
        """NVML's total-energy counter in J (since the driver loaded; Volta and newer), or None."""
        return self._get("energy_j", lambda: self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1000)

    def clocks(self) -> dict:
        """Current and maximum SM / memory clocks in MHz, and the power limit in W (empty without NVML)."""
        if self.handle is None:
            return {}
        n, h = self.nvml, self.handle
        return self._readings((
            ("sm_clock_mhz", lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
            ("mem_clock_mhz", lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM)),
            ("max_sm_clock_mhz", lambda: n.nvmlDeviceGetMaxClockInfo(h, n.NVML_CLOCK_SM)),
            ("max_mem_clock_mhz", lambda: n.nvmlDeviceGetMaxClockInfo(h, n.NVML_CLOCK_MEM)),
            ("power_limit_w", lambda: n.nvmlDeviceGetEnforcedPowerLimit(h) / 1000),
        ))

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
