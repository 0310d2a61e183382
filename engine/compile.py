"""Every torch.compile call of the engine lives here, applied to modules that are already built."""

from __future__ import annotations

import torch


def maybe_compile(module: torch.nn.Module, *, enabled: bool, device: torch.device):
    """fullgraph compile on GPU when enabled; the uncompiled module otherwise.

    The caller keeps its handle to the uncompiled module for saving (no `_orig_mod.` keys) and for
    the eager path-length phase (double backward does not compile).
    """
    if not enabled or device.type != "cuda":
        return module
    return torch.compile(module, fullgraph=True)
