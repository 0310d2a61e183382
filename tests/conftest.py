"""Shared test setup: Triton interpreter on CPU machines, seeding, and the tolerance table.

Without a CUDA GPU the Triton kernels run through the interpreter (TRITON_INTERPRET=1), which
must be set before triton is imported; this file is imported before any test module.
"""

from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# One tolerance table for every kernel test: (atol, rtol) per dtype. Fast paths are compared
# with the reference computed in float32 (float64 for float64) from the same inputs, so the
# low-precision rows allow the final rounding of an O(1) result plus float32 accumulation-order
# differences; float64 rows allow summation-order differences only.
TOLERANCES = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 4e-3),
    torch.bfloat16: (2e-2, 2e-2),
}

# Triton runs on CUDA tensors, or on CPU tensors through the interpreter.
TRITON_DEVICE = "cuda" if HAS_CUDA else "cpu"

# opcheck utilities that work where the Triton kernels run: under the CPU interpreter the kernel
# launch cannot take fake tensors (the interpreter copies real storage), so fake-tensor and
# AOT-dispatch checks run on GPU only.
OPCHECK_UTILS = (
    ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    if HAS_CUDA
    else ("test_schema", "test_autograd_registration")
)

# Tests that need a GPU carry @gpu (select them with `pytest -m gpu`); they skip on CPU.
gpu = pytest.mark.gpu


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def assert_close(actual, expected, dtype=None, scale=1.0):
    """assert_close with the table's tolerance for `dtype` (default: actual's dtype).

    `scale` widens atol for quantities whose magnitude is `scale` rather than O(1) (e.g. sums).
    """
    atol, rtol = TOLERANCES[dtype or actual.dtype]
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol * scale, rtol=rtol)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _data_scan_cache(tmp_path_factory, monkeypatch):
    """Datasets opened by tests write their scan cache (engine/datascan.py) to a temporary folder,
    never to the home folder."""
    if "SGXL_DATA_CACHE" not in os.environ:
        monkeypatch.setenv("SGXL_DATA_CACHE", str(tmp_path_factory.getbasetemp() / "datascan"))
