"""Choosing an implementation: ``impl`` in {'triton', 'cuda', 'ref', None}.

- ``None`` picks the best path for the tensor's device: Triton on CUDA; on CPU the path measured
  fastest there (``CPU_DEFAULT``: the ATen fallback for the FIR ops, the reference elsewhere).
- ``'triton'`` runs the Triton kernel. CUDA tensors need an importable Triton; CPU tensors need
  ``TRITON_INTERPRET=1`` (the interpreter, for tests). A configuration the kernel does not cover,
  or a missing Triton, falls back to ``'cuda'`` with one warning per (op, reason).
- ``'cuda'`` is the fallback built from cuDNN/ATen ops with its own autograd: no compiled
  extension, no nvcc. It also runs on CPU tensors, which is how the tests check it.
- ``'ref'`` is the plain-PyTorch reference in kernels/reference.py.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

from kernels._args import check_impl


@functools.cache
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_interpreting() -> bool:
    """True when Triton kernels run on CPU tensors through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_warned: set[tuple[str, str]] = set()


def warn_once(op: str, reason: str) -> None:
    """One warning per (op, reason) per process: fallbacks are never silent, never noisy."""
    if (op, reason) not in _warned:
        _warned.add((op, reason))
        warnings.warn(f"{op}: {reason}; using the 'cuda' fallback (ATen/cuDNN ops)", RuntimeWarning, stacklevel=3)


# impl=None on a CPU tensor. With the ATen fallbacks of the two FIR ops a tiny-preset generator
# (2-core CPU, 1 thread, measured) generates 64 images in 1.37 s instead of 2.33 s with the
# references, and its forward+backward at batch 4 takes 85 ms instead of 88 ms; bias_act and
# modulated_conv2d have no faster CPU path than their references.
CPU_DEFAULT = {"upfirdn2d": "cuda", "filtered_lrelu": "cuda"}


def choose(op: str, x: torch.Tensor, impl: str | None, unsupported: str | None = None) -> str:
    """Resolve ``impl`` for a call of ``op`` on ``x``.

    Args:
        op: the op's public name, for messages.
        x: the main input; its device decides the default.
        impl: what the caller asked for.
        unsupported: None if the Triton kernel covers this call, else why not.
    """
    check_impl(impl)
    if impl is None:
        if x.device.type != "cuda":
            return CPU_DEFAULT.get(op, "ref")
        impl = "triton"
    if impl != "triton":
        return impl
    if x.device.type != "cuda" and not triton_interpreting():
        raise ValueError(
            f"{op}: impl='triton' needs a CUDA tensor (x is on {x.device}); set TRITON_INTERPRET=1 "
            "to run the Triton kernel on CPU through the interpreter, or use impl='ref'"
        )
    if not triton_importable():
        warn_once(op, "Triton is not installed")
        return "cuda"
    if unsupported is not None:
        warn_once(op, unsupported)
        return "cuda"
    return "triton"
