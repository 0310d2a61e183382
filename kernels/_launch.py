"""Small launch helpers shared by the Triton kernels."""

from __future__ import annotations

import struct


def split_f32(v: float) -> tuple[float, float]:
    """v as a float32 pair hi + lo: Triton passes Python floats as float32, and a float64
    kernel that adds the pair back recovers v to about 2**-48 relative."""
    hi = struct.unpack("f", struct.pack("f", v))[0]
    return hi, struct.unpack("f", struct.pack("f", v - hi))[0]


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
