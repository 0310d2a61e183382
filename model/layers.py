"""Building blocks shared by the generator and the discriminator.

Legend: x_NI features, w_OI weights, b_O biases.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kernels import bias_act


class FullyConnected(nn.Module):
    """Equalized-learning-rate linear layer (SPEC 2.2).

    Stored weight ~ N(0, 1) * weight_init / lr_mult and bias = bias_init / lr_mult; at run time
    W = weight * lr_mult / sqrt(in) and b = bias * lr_mult, y = act(x W^T + b).
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, weight_init: float = 1.0, bias_init: float | np.ndarray = 0.0):
        super().__init__()
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) * (weight_init / lr_multiplier))
        b = np.broadcast_to(np.asarray(bias_init, dtype=np.float32), [out_features])
        self.bias = nn.Parameter(torch.from_numpy(b / lr_multiplier)) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x_NI: torch.Tensor, impl: str | None = None) -> torch.Tensor:
        w = self.weight.to(x_NI.dtype) * self.weight_gain
        b = self.bias
        if b is not None and self.bias_gain != 1:
            b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.to(x_NI.dtype).unsqueeze(0), x_NI, w.t())
        x = x_NI.matmul(w.t())  # under autocast this may be bf16 while x_NI is fp32
        return bias_act(x, None if b is None else b.to(x.dtype), act=self.activation, impl=impl)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) along dim."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()
