"""Small launch helpers shared by the Triton kernels."""

from __future__ import annotations

import dataclasses
import struct


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class LaunchConfig:
    """The compile-time settings of one Triton launch: constexpr values, warps and stages.

    Each kernel module decides them in one function, launch_config(), which the op's launch
    uses at run time and tests/kernels/aot_compile.py uses to build the same binary for sm_90.
    Hashable, so identical configurations deduplicate.
    """

    constexprs: tuple[tuple[str, object], ...]  # (kernel parameter, value) pairs
    num_warps: int  # warps per program
    num_stages: int | None = None  # software-pipelining stages; None = Triton's default

    @classmethod
    def of(cls, *, num_warps: int, num_stages: int | None = None, **constexprs) -> LaunchConfig:
        return cls(constexprs=tuple(constexprs.items()), num_warps=num_warps, num_stages=num_stages)

    def options(self) -> dict:
        """Compiler options: num_warps, and num_stages when set (triton.compile(options=...))."""
        opts = {"num_warps": self.num_warps}
        if self.num_stages is not None:
            opts["num_stages"] = self.num_stages
        return opts

    def launch_kwargs(self) -> dict:
        """Keyword arguments of kernel[grid](...): the constexprs plus the compiler options."""
        return {**dict(self.constexprs), **self.options()}


def split_f32(v: float) -> tuple[float, float]:
    """v as a float32 pair hi + lo: Triton passes Python floats as float32, and a float64
    kernel that adds the pair back recovers v to about 2**-48 relative."""
    hi = struct.unpack("f", struct.pack("f", v))[0]
    return hi, struct.unpack("f", struct.pack("f", v - hi))[0]


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
