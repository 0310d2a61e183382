"""Each Triton op launches with exactly what its module's launch_config() returns.

tests/kernels/aot_compile.py compiles the sm_90 binaries from the same function, so these checks
are what makes the AOT resource report describe the kernels that run. The launches are recorded
by wrapping the module's wrap_triton, on tiny tensors (the interpreter on CPU machines).
"""

from __future__ import annotations

import inspect

import pytest
import torch

from kernels import _bias_act_triton, _filtered_lrelu_triton, _scale_triton, _upfirdn2d_triton
from kernels import bias_act, filtered_lrelu, upfirdn2d
from kernels._launch import LaunchConfig
from tests.conftest import TRITON_DEVICE


def _record(monkeypatch, module) -> list:
    """Wrap module.wrap_triton so every launch appends (kernel, grid, args, kwargs), then runs."""
    calls, real = [], module.wrap_triton

    def wrap(kernel):
        launcher = real(kernel)

        class Recorder:
            def __getitem__(self, grid):
                def run(*args, **kwargs):
                    calls.append((kernel, grid, args, kwargs))
                    return launcher[grid](*args, **kwargs)
                return run

        return Recorder()

    monkeypatch.setattr(module, "wrap_triton", wrap)
    return calls


def _declared_constexprs(kernel) -> set[str]:
    """The kernel's tl.constexpr parameters (from its signature: jitted or interpreted alike)."""
    params = inspect.signature(getattr(kernel, "fn", kernel)).parameters.values()
    return {p.name for p in params if "constexpr" in str(p.annotation)}


def test_launch_config_options_and_kwargs():
    cfg = LaunchConfig.of(A=1, B="x", num_warps=8)
    assert cfg.options() == {"num_warps": 8} and cfg.launch_kwargs() == {"A": 1, "B": "x", "num_warps": 8}
    staged = LaunchConfig.of(A=1, num_warps=4, num_stages=2)
    assert staged.options() == {"num_warps": 4, "num_stages": 2}
    assert hash(cfg) != hash(staged) and cfg == LaunchConfig.of(A=1, B="x", num_warps=8)


def test_filtered_lrelu_warps_by_tile():
    """8 warps where the upsampled tile reaches 128 positions (the up-by-4 layers' backward)."""
    F = _filtered_lrelu_triton
    kw = dict(has_bias=False, has_scale=False, has_clamp=False, write_mask=False)
    up4_bwd = F.launch_config(1, torch.float32, 2, 4, 12, 24, **kw)
    assert up4_bwd.num_warps == 8 and dict(up4_bwd.constexprs)["SP"] == 128
    for geom in [(4, 2, 24, 12), (2, 2, 12, 12), (1, 1, 1, 1)]:
        assert F.launch_config(1, torch.bfloat16, *geom, **kw).num_warps == 4
    fwd = F.launch_config(0, torch.float32, 4, 2, 24, 12, has_bias=True, has_scale=True, has_clamp=True, write_mask=True)
    assert dict(fwd.constexprs)["HAS_CLAMP"]
    masked = F.launch_config(1, torch.float32, 4, 2, 24, 12, **{**kw, "has_clamp": True})
    assert not dict(masked.constexprs)["HAS_CLAMP"]  # the clamp only exists in MODE 0
    assert set(dict(fwd.constexprs)) == _declared_constexprs(F._flrelu_kernel)


def test_filtered_lrelu_launches_its_launch_config(monkeypatch):
    """Forward, backward and double backward of an up-4/down-2 layer launch what launch_config says."""
    F = _filtered_lrelu_triton
    calls = _record(monkeypatch, F)
    x = torch.randn(1, 2, 6, 6, device=TRITON_DEVICE, requires_grad=True)
    b = torch.randn(2, device=TRITON_DEVICE, requires_grad=True)
    fu, fd = torch.randn(24, device=TRITON_DEVICE), torch.randn(12, device=TRITON_DEVICE)
    y = filtered_lrelu(x, fu, fd, b, up=4, down=2, padding=10, clamp=2.0, impl="triton")
    dy = torch.randn_like(y, requires_grad=True)
    (dx,) = torch.autograd.grad(y, x, dy, create_graph=True)
    torch.autograd.grad(dx.square().sum(), dy)
    assert len(calls) == 3  # forward, backward, double backward
    masked = dict(has_bias=False, has_scale=False, has_clamp=False, write_mask=False)
    want = [F.launch_config(0, torch.float32, 4, 2, 24, 12, has_bias=True, has_scale=False, has_clamp=True, write_mask=True),
            F.launch_config(1, torch.float32, 2, 4, 12, 24, **masked),  # backward: the transposed geometry
            F.launch_config(1, torch.float32, 4, 2, 24, 12, **masked)]  # double backward: the forward's again
    for (kernel, _, _, kwargs), cfg in zip(calls, want):
        assert kernel is F._flrelu_kernel
        assert kwargs == cfg.launch_kwargs()
    assert calls[1][3]["num_warps"] == 8


def test_upfirdn2d_launches_its_launch_config(monkeypatch):
    U = _upfirdn2d_triton
    calls = _record(monkeypatch, U)
    x = torch.randn(1, 2, 5, 7, device=TRITON_DEVICE, requires_grad=True)
    y = upfirdn2d(x, torch.randn(4, device=TRITON_DEVICE), up=2, down=1, padding=1, impl="triton")
    torch.autograd.grad(y.sum(), x)
    # Separable: x pass, y pass; then their backward passes in reverse order.
    want = [(torch.float32, 2, 1, 1, 1, 1, 4), (torch.float32, 1, 2, 1, 1, 4, 1),
            (torch.float32, 1, 1, 1, 2, 4, 1), (torch.float32, 1, 1, 2, 1, 1, 4)]
    assert len(calls) == len(want)
    for (kernel, _, args, kwargs), w in zip(calls, want):
        assert kernel is U._upfirdn2d_kernel
        assert kwargs == U.launch_config(*w).launch_kwargs()
        assert set(kwargs) - {"num_warps", "num_stages"} == _declared_constexprs(kernel)
    sweep = U.Upfirdn2dLaunch(block_h=4, block_w=8, num_warps=2)
    calls.clear()
    U.upfirdn2d_pass(x.detach(), torch.randn(3, 3, device=TRITON_DEVICE), 1, 1, 1, 1, 1, 1, 1, 1, torch.float32,
                     sweep.block_h, sweep.block_w, sweep.num_warps)
    assert calls[0][3] == U.launch_config(torch.float32, 1, 1, 1, 1, 3, 3, sweep).launch_kwargs()


@pytest.mark.parametrize("clamp", [None, 1.0])
def test_bias_act_launches_its_launch_config(monkeypatch, clamp):
    B = _bias_act_triton
    calls = _record(monkeypatch, B)
    x = torch.randn(3, 5, device=TRITON_DEVICE, requires_grad=True)
    b = torch.randn(5, device=TRITON_DEVICE)
    y = bias_act(x, b, act="lrelu", clamp=clamp, impl="triton")
    torch.autograd.grad(y.sum(), x)
    want = [B.launch_config(torch.float32, has_bias=True, has_clamp=clamp is not None, grad=False),
            B.launch_config(torch.float32, has_bias=True, has_clamp=clamp is not None, grad=True)]
    assert [c[3] for c in calls] == [w.launch_kwargs() for w in want]
    assert set(calls[0][3]) - {"num_warps"} == _declared_constexprs(B._bias_act_kernel)


def test_scale_channels_launches_its_launch_config(monkeypatch):
    S = _scale_triton
    calls = _record(monkeypatch, S)
    S.scale_channels(torch.randn(2, 3, 4, 4, device=TRITON_DEVICE), torch.randn(2, 3, device=TRITON_DEVICE))
    assert [c[3] for c in calls] == [S.launch_config(torch.float32).launch_kwargs()]
    assert set(calls[0][3]) - {"num_warps"} == _declared_constexprs(S._scale_kernel)
