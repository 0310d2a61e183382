"""Every Triton kernel configuration the ops launch compiles for sm_90 (H100/H200), on CPU, within
Hopper's per-thread register and per-block shared-memory limits.

The interpreter checks what the kernels compute; this checks that Triton's compiler accepts them
for the GPU target (a kernel can run in the interpreter and still fail to compile) and builds
what runs: tests/kernels/aot_compile.py takes each launch's settings from the op's own
launch_config(). Spills are reported (aot_sm90.md in the test's tmp dir), not asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
MAX_REGISTERS = 255  # per thread on sm_90
MAX_SHARED = 227 * 1024  # bytes per block on sm_90
MODEL_DTYPES = ("bfloat16", "float32")  # GeneratorConfig.dtype


def _expected_flrelu_geometries():
    """(dtype, MODE, U1, D2, K1, K2, WRITE_MASK) the synthesis layers launch, from model/specs.py alone."""
    from kernels._filtered_lrelu_triton import fused_covers
    from model.config import PRESETS
    from model.specs import generator_specs

    want, layer_kinds = set(), set()
    meta = lambda *shape: torch.empty(shape, device="meta")  # noqa: E731
    for make in PRESETS.values():
        for res in (16, 32, 64, 128, 256, 512, 1024):
            cfg = make(res)
            for s in generator_specs(res, syn_layers=cfg.syn_layers, head_layers=cfg.head_layers,
                                     channel_base=cfg.channel_base, channel_max=cfg.channel_max,
                                     stem_res=cfg.stem_res, up_factor=cfg.up_factor):
                fu = meta(s.up_taps) if s.up_taps > 1 else None
                fd = meta(s.down_taps) if s.down_taps > 1 else None
                if fused_covers(fu, fd, s.up, s.down, meta(1, 1, 1, 1)) is not None:
                    continue  # runs the 'cuda' composite
                layer_kinds.add((s.up, s.down, s.up_taps, s.down_taps))
                for dt in MODEL_DTYPES:
                    want |= {(dt, 0, s.up, s.down, s.up_taps, s.down_taps, True),  # forward, training
                             (dt, 0, s.up, s.down, s.up_taps, s.down_taps, False),  # forward, no grad
                             (dt, 1, s.down, s.up, s.down_taps, s.up_taps, False),  # backward: transposed
                             (dt, 1, s.up, s.down, s.up_taps, s.down_taps, False)}  # double backward
    return want, layer_kinds


@pytest.mark.slow
def test_all_kernels_compile_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(ROOT / "tests/kernels/aot_compile.py"), "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, "\n".join([ln for ln in lines if ln.startswith("FAIL")] + [proc.stderr[-3000:]])
    print(proc.stdout[-6000:])  # the resource lines, for -s / CI logs
    report = json.loads((tmp_path / "aot_sm90.json").read_text())
    configs = report["configs"]
    assert report["failures"] == 0 and all(c["status"] == "ok" for c in configs)

    # Coverage: forward (with and without the mask), backward and double backward of every
    # synthesis layer kind, in the model's dtypes.
    want, kinds = _expected_flrelu_geometries()
    assert {(2, 2, 12, 12), (4, 2, 24, 12), (1, 1, 1, 1)} <= kinds
    have = {(c["dtype"], *(c["constexprs"][k] for k in ("MODE", "U1", "D2", "K1", "K2", "WRITE_MASK")))
            for c in configs if c["kernel"] == "flrelu"}
    assert want <= have, sorted(want - have)
    for kernel in ("upfirdn2d", "bias_act", "scale"):
        assert any(c["kernel"] == kernel for c in configs), kernel

    # The compiled warps are the run-time ones: 8 for the up-by-4 layers' backward (SP = 128).
    up4_bwd = [c for c in configs if c["kernel"] == "flrelu" and c["constexprs"]["MODE"] == 1
               and (c["constexprs"]["U1"], c["constexprs"]["D2"]) == (2, 4)]
    assert up4_bwd and all(c["num_warps"] == 8 for c in up4_bwd)

    # Resources: within Hopper's limits; spills are only reported.
    for c in configs:
        what = f"{c['kernel']} {c['dtype']} {c['passes']} {c['config']}"
        assert isinstance(c["registers"], int) and 0 < c["registers"] <= MAX_REGISTERS, what
        assert c["shared"] <= MAX_SHARED, what
        assert c["spill_stores"] is not None and c["spill_loads"] is not None, what
    assert (tmp_path / "aot_sm90.md").read_text().count("\n| ") == len(configs) + 1
