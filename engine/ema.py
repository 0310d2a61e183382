"""Generator EMA: every parameter lerped (frozen ones too), buffers copied (SPEC 5.7)."""

from __future__ import annotations

import torch


@torch.no_grad()
def update_ema(g_ema: torch.nn.Module, g: torch.nn.Module, beta: float) -> None:
    ema_params = list(g_ema.parameters())
    params = [p.detach() for p in g.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - beta)
    for b_ema, b in zip(g_ema.buffers(), g.buffers()):
        b_ema.copy_(b)
