"""bias_act: y = clamp(act(x + b) * gain, -clamp, clamp), with three implementations.

- 'triton': one elementwise kernel for the piecewise-linear activations (linear, relu, lrelu),
  forward and gradient. The gradient kernel recomputes the pre-activation from x and b (so the
  forward stores nothing extra) and is linear in dy with a mask that is constant almost
  everywhere; its own gradient is therefore the same kernel again, so every order works.
  Other activations (tanh, sigmoid, elu, selu, softplus, swish) use the 'cuda' path with one
  warning.
- 'cuda': the ATen composite (kernels/reference.py's formula) with PyTorch autograd.
- 'ref': kernels/reference.py.

Conventions at exact ties, identical in every path: x + b == 0 counts as non-negative (slope 1),
and an output with |y| >= clamp counts as clamped (zero gradient).
"""

from __future__ import annotations


from kernels import _args
from kernels._dispatch import choose
from kernels.reference import ACTIVATIONS, bias_act_ref

TRITON_ACTS = ("linear", "relu", "lrelu")


def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None, impl=None):
    """Fused bias, activation, gain and clamp.

    Args:
        x: input of any shape, float16/bfloat16/float32/float64.
        b: bias [x.shape[dim]] with x's dtype and device, or None.
        dim: the dimension of x that b runs along.
        act: 'linear', 'relu', 'lrelu', 'tanh', 'sigmoid', 'elu', 'selu', 'softplus' or 'swish'.
        alpha: activation parameter (lrelu slope); None = the activation's default (0.2 for lrelu).
        gain: output scale; None = the activation's default (sqrt(2) for relu, lrelu, swish; else 1).
        clamp: clamp the output to [-clamp, clamp]; None = no clamping.
        impl: 'triton', 'cuda', 'ref' or None (best for x's device).

    Returns:
        A tensor of x's shape, dtype and memory layout.
    """
    _args.check_x(x, ndim=None)
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
    if not isinstance(dim, int) or not -x.ndim <= dim < x.ndim:
        raise ValueError(f"dim must be an int in [{-x.ndim}, {x.ndim}), got {dim!r}")
    dim = dim % x.ndim
    _args.check_same("b", b, x, shape=(x.shape[dim],))
    if clamp is not None and (not isinstance(clamp, (int, float)) or clamp < 0):
        raise ValueError(f"clamp must be a non-negative number or None, got {clamp!r}")
    _, def_alpha, def_gain = ACTIVATIONS[act]
    alpha = float(def_alpha if alpha is None else alpha)
    gain = float(def_gain if gain is None else gain)
    unsupported = None if act in TRITON_ACTS else f"activation {act!r} has no Triton kernel"
    impl = choose("bias_act", x, impl, unsupported)
    if impl in ("ref", "cuda"):
        return bias_act_ref(x, b, dim, act, alpha, gain, clamp)
    from kernels._bias_act_triton import bias_act_fwd

    slope = 1.0 if act == "linear" else (0.0 if act == "relu" else alpha)
    return bias_act_fwd(x, b, dim, slope, gain, -1.0 if clamp is None else float(clamp))
