"""Compile every Triton kernel configuration the ops launch for a Hopper GPU (sm_90), on CPU.

Triton compiles ahead of time without a GPU (frontend, MLIR passes, PTX and ptxas to a cubin),
so a CPU machine can prove that the kernels build for the target the interpreter cannot show.
Run as a script with TRITON_INTERPRET unset (the interpreter replaces @triton.jit);
test_aot_compile.py does that in a subprocess. Prints one line per configuration.
"""

from __future__ import annotations

import itertools
import os
import sys

import torch

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run without TRITON_INTERPRET"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernels._bias_act_triton import _bias_act_kernel  # noqa: E402
from kernels._filtered_lrelu_triton import TILE, _flrelu_kernel, _precision, tile_sizes  # noqa: E402
from kernels._scale_triton import _scale_kernel  # noqa: E402
from kernels._upfirdn2d_triton import DEFAULT_LAUNCH, _upfirdn2d_kernel  # noqa: E402

PTR = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float64: "*fp64", torch.uint8: "*u8"}
TARGET = GPUTarget("cuda", 90, 32)


def compile_for(kernel, values: dict):
    """values: name -> torch.dtype (a pointer), int, float, or a constexpr value."""
    sig, consts = {}, {}
    for i, name in enumerate(kernel.arg_names):
        v = values.get(name, 1)
        if i in kernel.constexprs:
            sig[name] = "constexpr"
            consts[(i,)] = v
        elif isinstance(v, torch.dtype):
            sig[name] = PTR[v]
        elif isinstance(v, float):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return triton.compile(ASTSource(kernel, sig, consts), target=TARGET)


def upfirdn2d_configs():
    for dt in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        for up, down, fh, fw in [(2, 1, 1, 12), (1, 2, 12, 1), (4, 1, 1, 24), (1, 1, 5, 5), (2, 2, 4, 3)]:
            out = torch.float32 if dt != torch.float64 else dt
            yield f"upfirdn2d {dt} up{up} down{down} {fh}x{fw}", _upfirdn2d_kernel, dict(
                x_ptr=dt, h_ptr=out, y_ptr=dt, UPX=up, UPY=1 if fh == 1 else up, DOWNX=down, DOWNY=1 if fh == 1 else down,
                FH=fh, FW=fw, ACC_F64=dt == torch.float64, BLOCK_H=DEFAULT_LAUNCH.block_h, BLOCK_W=DEFAULT_LAUNCH.block_w)


def bias_act_configs():
    for dt, grad, bias, clamp in itertools.product((torch.bfloat16, torch.float16, torch.float32, torch.float64),
                                                   (False, True), (False, True), (False, True)):
        yield f"bias_act {dt} grad={grad} bias={bias} clamp={clamp}", _bias_act_kernel, dict(
            x_ptr=dt, b_ptr=dt, dy_ptr=dt, out_ptr=dt, slope_hi=0.2, slope_lo=0.0, gain_hi=1.4, gain_lo=0.0,
            clamp_hi=1.0, clamp_lo=0.0, HAS_BIAS=bias, HAS_CLAMP=clamp, GRAD=grad, F64=dt == torch.float64, BLOCK=1024)


def filtered_lrelu_configs():
    # (U1, D2, K1, K2): the three StyleGAN3-T kinds forward, their transposes (backward), and a 4/4 case.
    geoms = [(2, 2, 12, 12), (4, 2, 24, 12), (2, 4, 12, 24), (1, 1, 1, 1), (4, 4, 32, 32)]
    for dt in (torch.bfloat16, torch.float16, torch.float32):
        for (u1, d2, k1, k2), (mode, write) in itertools.product(geoms, [(0, True), (0, False), (1, False)]):
            sp, ip = tile_sizes(u1, d2, k1, k2)
            yield f"filtered_lrelu {dt} mode{mode} write={write} up{u1} down{d2} taps {k1}/{k2}", _flrelu_kernel, dict(
                src_ptr=dt, b_ptr=dt, scale_ptr=torch.float32, mask_ptr=torch.uint8, c1_ptr=torch.float32, c2_ptr=torch.float32, y_ptr=dt,
                gain_hi=1.4, gain_lo=0.0, slope_hi=0.2, slope_lo=0.0, clamp_hi=256.0, clamp_lo=0.0,
                U1=u1, D2=d2, K1=k1, K2=k2, T=TILE, SP=sp, IP=ip, MODE=mode, HAS_BIAS=mode == 0,
                HAS_SCALE=mode == 0 and write, HAS_CLAMP=mode == 0, WRITE_MASK=write, F64=False, PREC=_precision(dt))


def scale_configs():
    for dt in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        s = torch.float64 if dt == torch.float64 else torch.float32
        yield f"scale_channels {dt}", _scale_kernel, dict(x_ptr=dt, s_ptr=s, y_ptr=dt, F64=dt == torch.float64, BLOCK=1024)


def main() -> int:
    failures = 0
    for name, kernel, values in itertools.chain(upfirdn2d_configs(), bias_act_configs(), filtered_lrelu_configs(), scale_configs()):
        try:
            k = compile_for(kernel, values)
            print(f"ok   {name}: {len(k.asm['cubin'])} bytes of sm_90 cubin", flush=True)
        except Exception as e:  # report every failing configuration, not just the first
            failures += 1
            print(f"FAIL {name}: {type(e).__name__}: {str(e)[:2000]}", flush=True)
    print(f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
