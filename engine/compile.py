"""Every torch.compile call of the engine lives here, applied to modules that are already built."""

from __future__ import annotations

import torch


def maybe_compile(module: torch.nn.Module, *, enabled: bool, device: torch.device,
                  mode: str | None = None) -> torch.nn.Module:
    """Compile `module`'s forward in place (fullgraph) on GPU when enabled; returns the module.

    In place (`nn.Module.compile`) rather than a wrapper: parameter names keep no `_orig_mod.`
    prefix, so checkpoints, the DeepSpeed engines that wrap the module and the EMA see the same
    names, and calls into submodules (the eager path-length phase: mapping, then synthesis with
    double backward) stay uncompiled.

    mode: torch.compile mode; "reduce-overhead" records CUDA graphs (inference benchmarks).
    """
    if enabled and torch.device(device).type == "cuda":
        module.compile(fullgraph=True, mode=mode)
    return module
