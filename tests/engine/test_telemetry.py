"""GPU telemetry: the CUDA device index is mapped to the right NVML device (UUID, then PCI bus id,
then the index only without CUDA_VISIBLE_DEVICES), counters a GPU lacks are skipped, and without
a driver telemetry is simply off. A fake pynvml module stands in for the driver.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from engine.telemetry import Telemetry


class FakeNVMLError(Exception):
    def __init__(self, value: int):
        super().__init__(f"NVML error {value}")
        self.value = value


class FakeGPU:
    def __init__(self, name: str, uuid: str, pci: str, mem_gib: float):
        self.name, self.uuid, self.pci, self.mem_gib = name, uuid, pci, mem_gib


def fake_nvml(gpus: list[FakeGPU]) -> types.ModuleType:
    """A pynvml with `gpus` in NVML (physical) order. Handles are the FakeGPU objects; the
    energy counter is not supported (counted in `calls`)."""
    n = types.ModuleType("pynvml")
    n.NVML_CLOCK_SM, n.NVML_CLOCK_MEM = 1, 2
    n.NVML_ERROR_NOT_FOUND, n.NVML_ERROR_NOT_SUPPORTED, n.NVML_ERROR_FUNCTION_NOT_FOUND = 6, 3, 13
    n.calls = {"energy": 0}

    def text(s):
        return s.decode() if isinstance(s, bytes) else s

    def bus(s):  # NVML parses domain:bus:device.function, any width of hex digits
        domain, b, rest = text(s).split(":")
        device, function = rest.split(".")
        return tuple(int(v, 16) for v in (domain, b, device, function))

    def find(match):
        for gpu in gpus:
            if match(gpu):
                return gpu
        raise FakeNVMLError(n.NVML_ERROR_NOT_FOUND)

    def by_index(i):
        if not 0 <= i < len(gpus):
            raise FakeNVMLError(2)  # NVML_ERROR_INVALID_ARGUMENT
        return gpus[i]

    def energy(h):
        n.calls["energy"] += 1
        raise FakeNVMLError(n.NVML_ERROR_NOT_SUPPORTED)

    n.nvmlInit = lambda: None
    n.nvmlDeviceGetHandleByIndex = by_index
    n.nvmlDeviceGetHandleByUUID = lambda uuid: find(lambda g: g.uuid == text(uuid))
    n.nvmlDeviceGetHandleByPciBusId = lambda pci: find(lambda g: bus(g.pci) == bus(pci))
    n.nvmlDeviceGetUUID = lambda h: h.uuid
    n.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=h.mem_gib * 2**30)
    n.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=50)
    n.nvmlDeviceGetPowerUsage = lambda h: 123_000
    n.nvmlDeviceGetTotalEnergyConsumption = energy
    n.nvmlDeviceGetClockInfo = lambda h, which: 1500 if which == n.NVML_CLOCK_SM else 2600
    return n


class TorchUUID:
    """Like torch._C._CUuuid: str() is the 8-4-4-4-12 hex form, without NVML's "GPU-" prefix."""

    def __init__(self, text: str):
        self.text = text

    def __str__(self):
        return self.text


U_A, U_B = "0a1b2c3d-0000-1111-2222-333344445555", "f0e1d2c3-aaaa-bbbb-cccc-ddddeeeeffff"
# NVML (PCI) order: A on bus 0x17, B on bus 0x65. CUDA_VISIBLE_DEVICES=1,0 makes cuda:0 = B.
GPUS = [FakeGPU("A", f"GPU-{U_A}", "0000:17:00.0", 1.0), FakeGPU("B", f"GPU-{U_B}", "0000:65:00.0", 2.0)]
CUDA_ORDER = [("B", U_B, 0x65), ("A", U_A, 0x17)]


@pytest.fixture
def machine(monkeypatch):
    """Install the fake NVML and a torch.cuda with CUDA_ORDER; returns a function that sets
    which properties torch exposes (uuid and/or pci)."""
    nvml = fake_nvml(GPUS)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(CUDA_ORDER))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")

    def expose(*, uuid: bool = True, pci: bool = True):
        def props(i):
            _, uuid_text, bus = CUDA_ORDER[i]
            p = types.SimpleNamespace(name=f"fake{i}")
            if uuid:
                p.uuid = TorchUUID(uuid_text)
            if pci:
                p.pci_domain_id, p.pci_bus_id, p.pci_device_id = 0, bus, 0
            return p

        monkeypatch.setattr(torch.cuda, "get_device_properties", props)
        return nvml

    return expose


@pytest.mark.parametrize("index", [0, 1])
def test_handle_found_by_uuid_not_by_index(machine, index):
    machine()
    tel = Telemetry(index)
    assert tel.enabled and tel.source == "uuid" and tel.reason is None
    assert tel.handle.name == CUDA_ORDER[index][0]  # cuda:0 is NVML's second GPU here
    assert tel.read()["gpu_mem_gb"] == tel.handle.mem_gib
    assert f"GPU-{CUDA_ORDER[index][1]}" in tel.describe() and "uuid" in tel.describe()


def test_pci_bus_id_when_torch_has_no_uuid(machine):
    machine(uuid=False)
    tel = Telemetry(0)
    assert tel.source == "pci" and tel.handle.name == "B"


def test_pci_bus_id_when_nvml_does_not_know_the_uuid(machine, monkeypatch):
    nvml = machine()
    monkeypatch.setattr(nvml, "nvmlDeviceGetHandleByUUID", lambda uuid: (_ for _ in ()).throw(FakeNVMLError(6)))
    tel = Telemetry(1)
    assert tel.source == "pci" and tel.handle.name == "A"


def test_off_with_a_reason_when_visible_devices_remap_and_no_id(machine):
    machine(uuid=False, pci=False)
    tel = Telemetry(0)
    assert not tel.enabled and tel.source is None and tel.handle is None
    assert "CUDA_VISIBLE_DEVICES" in tel.reason and "CUDA_VISIBLE_DEVICES" in tel.describe()
    assert tel.read() == {} and tel.clocks() == {} and tel.energy_j() is None


def test_index_fallback_only_without_visible_devices(machine, monkeypatch):
    machine(uuid=False, pci=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    tel = Telemetry(1)
    assert tel.source == "index" and tel.handle.name == "B"  # NVML's index 1, no remapping to undo
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # e.g. a torch without CUDA
    assert Telemetry().source == "index" and Telemetry().handle.name == "A"
    assert not Telemetry(5).enabled and "5" in Telemetry(5).reason


def test_read_skips_counters_the_gpu_lacks(machine):
    nvml = machine()
    tel = Telemetry(0)
    first = tel.read()
    assert first == {"gpu_mem_gb": 2.0, "gpu_util_pct": 50.0, "power_w": 123.0, "sm_clock_mhz": 1500.0}
    assert nvml.calls["energy"] == 1
    assert tel.read() == first and tel.energy_j() is None and nvml.calls["energy"] == 1  # not asked again
    with tel.measure() as m:
        pass
    assert m.seconds >= 0 and m.energy_j is None and m.sm_clock_mhz == 1500.0


def test_real_telemetry_here_is_off_without_raising():
    tel = Telemetry()
    if tel.enabled:  # a machine with a driver: only check that it reads something
        assert tel.source in ("uuid", "pci", "index") and tel.read()
        return
    assert tel.source is None and tel.handle is None and tel.reason
    assert tel.read() == {} and tel.clocks() == {} and tel.energy_j() is None
    with tel.measure() as m:
        pass
    assert m.seconds is not None and m.energy_j is None and m.mean_power_w is None
