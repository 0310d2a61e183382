"""Benchmark setup: device choice, Triton interpreter on CPU, the measured roofline.

Run with `pytest bench/ --benchmark-only`. On a CPU machine only the tiny smoke sizes run (the
Triton paths through the interpreter); GPU sizes skip with a reason.
"""

from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(scope="session")
def roofline():
    from bench.roofline import measure

    return measure(DEVICE)


def sync():
    if HAS_CUDA:
        torch.cuda.synchronize()


def run_benchmark(benchmark, fn, rounds=None, warmup_rounds=None):
    """Warm-up rounds absorb compilation and autotuning; sync inside the timed function."""
    if rounds is None:
        rounds = 20 if HAS_CUDA else 3
    if warmup_rounds is None:
        warmup_rounds = 3 if HAS_CUDA else 1

    def timed():
        fn()
        sync()

    benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    # Median seconds, or None under --benchmark-disable (a smoke run: the body ran once).
    return None if benchmark.stats is None else benchmark.stats.stats.median
