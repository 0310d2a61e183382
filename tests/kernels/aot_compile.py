"""Compile the Triton kernel configurations the ops launch for Hopper (sm_90), on CPU, and report
registers, spills and shared memory of each.

Triton compiles ahead of time without a GPU (frontend, MLIR passes, PTX, ptxas to a cubin), so a
CPU machine can prove that the kernels build for the target the interpreter cannot show, and
read off the resources they need. What gets compiled is what runs:

- the constexprs, warps and stages come from each kernel module's launch_config(), the function
  the op's launch itself calls, through its launch_args() (grid, positional arguments, config);
- the positional arguments are specialized with Triton's own rule (native_specialize_impl: an
  int equal to 1 becomes a constexpr, ints and pointers divisible by 16 get a divisibility
  hint), on meta tensors of the real shapes, so each binary is one the JIT builds at run time;
- filtered_lrelu is enumerated from the generator's synthesis layers (model/specs.py) at every
  stage 16..1024 of every preset (model/config.py): forward with and without the mask, backward
  (the transposed geometry) and double backward, in bfloat16, float32 and float16. Layers the
  fused kernel does not cover (it falls back to 'cuda') are listed as such.
- upfirdn2d, bias_act and scale_channels: the passes their ops launch for a few representative
  calls, forward and backward.

Identical compiled configurations are compiled once; each lists the layers and passes it serves.
Registers come from the cubin (EIATTR_REGCOUNT, what the driver reports as n_regs), spills from
the log of the ptxas -v run that built it (TRITON_DUMP_PTXAS_LOG; for a kernel from Triton's
cache, the bundled ptxas runs again on its PTX with Triton's flags), shared memory from the
kernel's metadata. Spills are reported, not judged here.

Run as a script with TRITON_INTERPRET unset (the interpreter replaces @triton.jit);
test_aot_compile.py does that in a subprocess:

    python tests/kernels/aot_compile.py [--out DIR] [--jobs N]

prints one line per configuration and, with --out, writes DIR/aot_sm90.json and DIR/aot_sm90.md.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import inspect
import io
import json
import multiprocessing
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run without TRITON_INTERPRET"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernels import _bias_act_triton, _filtered_lrelu_triton, _scale_triton, _upfirdn2d_triton  # noqa: E402
from kernels._args import upfirdn2d_out_size  # noqa: E402
from kernels._launch import LaunchConfig  # noqa: E402
from kernels.upfirdn2d import grad_padding  # noqa: E402
from model.config import PRESETS  # noqa: E402
from model.specs import LayerSpec, generator_specs  # noqa: E402

CAPABILITY = 90
TARGET = GPUTarget("cuda", CAPABILITY, 32)
HOPPER_SHARED_PER_BLOCK = 227 * 1024  # bytes of shared memory one block may use on sm_90
STAGES = (16, 32, 64, 128, 256, 512, 1024)
FLRELU_DTYPES = (torch.bfloat16, torch.float32, torch.float16)  # the model runs bf16 or fp32; the op takes fp16 too
OTHER_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
BATCH = 2  # batch size of the meta tensors; no compiled argument depends on it


def _meta(shape, dtype, channels_last=False):
    t = torch.empty(shape, dtype=dtype, device="meta")
    return t.to(memory_format=torch.channels_last) if channels_last else t


def _short(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------------------------
# Specialization: the signature the JIT compiles for these arguments.
# ---------------------------------------------------------------------------------------------


def _specialize_arg(v):
    """(type, key) as the JIT specializes a non-constexpr argument: key 'D' = divisible by 16,
    type 'constexpr' with key 1 for an int equal to 1."""
    try:
        from triton.backends.nvidia.compiler import CUDABackend
        from triton.runtime.jit import native_specialize_impl
    except ImportError:  # the rule native_specialize_impl implements, for Triton versions without it
        if isinstance(v, bool):
            return "u1", None
        if isinstance(v, int):
            if v == 1:
                return "constexpr", 1
            return ("i32" if -(2**31) <= v < 2**31 else "i64"), ("D" if v % 16 == 0 else "")
        if isinstance(v, float):
            return "fp32", None
        ty = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float64: "*fp64",
              torch.uint8: "*u8"}[v.dtype]
        return ty, "D" if v.data_ptr() % 16 == 0 else ""
    ty, key = native_specialize_impl(CUDABackend, v, False, True, True)
    return ty, (1 if ty == "constexpr" else key)


@dataclasses.dataclass(frozen=True)
class Build:
    """One compiled configuration: everything triton.compile sees."""

    kernel: str  # module:function
    dtype: str  # data dtype of the call
    launch: tuple[tuple[str, object], ...]  # the launch config's constexprs
    options: tuple[tuple[str, int], ...]  # the launch config's num_warps (and num_stages)
    signature: tuple[tuple[str, str], ...]  # (run-time parameter, type); 'constexpr' for an int equal to 1
    ones: tuple[str, ...]  # run-time ints equal to 1, compiled as constants
    divisible: tuple[str, ...]  # run-time ints and pointers with a divisibility-16 hint


def specialize(module, kernel, dtype, grid_args_cfg) -> Build:
    """The Build the JIT makes for one launch_args() result (grid, positional arguments, config)."""
    _, args, cfg = grid_args_cfg
    assert isinstance(cfg, LaunchConfig)
    const = dict(cfg.constexprs)
    names = list(kernel.arg_names)
    declared = {names[i] for i in kernel.constexprs}
    assert set(const) == declared, f"{kernel.__name__}: launch_config gives {sorted(const)}, the kernel declares {sorted(declared)}"
    runtime = [n for n in names if n not in const]
    assert len(runtime) == len(args), f"{kernel.__name__}: {len(args)} arguments for {len(runtime)} parameters"
    sig, ones, div = [], [], []
    for name, value in zip(runtime, args):
        ty, key = _specialize_arg(value)
        sig.append((name, ty))
        if ty == "constexpr":
            ones.append(name)
        elif key == "D":
            div.append(name)
    return Build(kernel=f"{module.__name__}:{kernel.__name__}", dtype=_short(dtype), launch=tuple(cfg.constexprs),
                 options=tuple(sorted(cfg.options().items())), signature=tuple(sig), ones=tuple(ones),
                 divisible=tuple(div))


# ---------------------------------------------------------------------------------------------
# What the ops launch.
# ---------------------------------------------------------------------------------------------


def _flrelu_calls(s: LayerSpec, dtype, clamp, write_mask):
    """(pass, launch_args) of one synthesis layer's filtered_lrelu: forward, backward, double backward,
    with the tensors filtered_lrelu_fwd / _fwd_backward / _masked_backward build."""
    F = _filtered_lrelu_triton
    n, c = BATCH, s.out.channels
    h = s.inp.size + s.kernel_size - 1  # modulated_conv2d(padding=k - 1) output
    out = s.out.size
    k1, k2 = s.up_taps, s.down_taps
    s_h = (out - 1) * s.down + k2
    # The first layer's conv reads SynthesisInput's permuted (channels_last) features, and the
    # convolution keeps that layout; every other tensor here is contiguous.
    x = _meta((n, c, h, h), dtype, channels_last=s.index == 0)
    y = _meta((n, c, out, out), dtype)
    c1, c2 = _meta((k1,), torch.float32), _meta((k2,), torch.float32)
    b = _meta((c,), dtype)
    scale = None if s.torgb else _meta((n, c), torch.float32)  # ToRGB has no demodulation
    mask = _meta((n * c, s_h, (s_h + 3) // 4), torch.uint8)
    px0, py0 = s.padding[0], s.padding[2]
    fwd_mask = mask if write_mask else _meta((0,), torch.uint8)
    yield ("fwd+mask" if write_mask else "fwd"), F.launch_args(
        0, x, b, scale, fwd_mask, c1, c2, y, s.up, px0, py0, s.down, 0, 0, s_h, s_h, 1.0, 0.2, clamp, write_mask)
    if not write_mask:
        return
    tc1, tu1, tp1x, tp1y, tc2, td2, toff2x, toff2y = F.transpose_geometry(c1, s.up, px0, py0, c2, s.down, 0, 0)
    dy, dz = _meta(y.shape, dtype), _meta(x.shape, dtype)
    yield "bwd", F.launch_args(1, dy, None, None, mask, tc1, tc2, dz, tu1, tp1x, tp1y, td2, toff2x, toff2y, s_h, s_h,
                               1.0, 0.2, None, False)
    g = F.transpose_geometry(tc1, tu1, tp1x, tp1y, tc2, td2, toff2x, toff2y)  # the forward geometry again
    ddz, ddy = _meta(x.shape, dtype), _meta(y.shape, dtype)
    yield "bwd2", F.launch_args(1, ddz, None, None, mask, g[0], g[4], ddy, g[1], g[2], g[3], g[5], g[6], g[7], s_h, s_h,
                                1.0, 0.2, None, False)


def synthesis_layers():
    """(preset, stage, LayerSpec, conv_clamp) of every synthesis layer of every preset and stage."""
    for preset, make in PRESETS.items():
        for res in STAGES:
            cfg = make(res)
            for s in generator_specs(res, syn_layers=cfg.syn_layers, head_layers=cfg.head_layers,
                                     channel_base=cfg.channel_base, channel_max=cfg.channel_max,
                                     stem_res=cfg.stem_res, up_factor=cfg.up_factor):
                yield preset, res, s, cfg.conv_clamp


def fused_reason(s: LayerSpec) -> str | None:
    """None if the fused filtered_lrelu kernel runs this layer, else why it falls back."""
    fu = None if s.up_taps == 1 else _meta((s.up_taps,), torch.float32)
    fd = None if s.down_taps == 1 else _meta((s.down_taps,), torch.float32)
    return _filtered_lrelu_triton.fused_covers(fu, fd, s.up, s.down, _meta((1, 1, 1, 1), torch.float32))


def filtered_lrelu_launches(fallbacks: list):
    F = _filtered_lrelu_triton
    for preset, res, s, clamp in synthesis_layers():
        use = f"{preset}@{res}:{s.name}"
        reason = fused_reason(s)
        if reason is not None:
            fallbacks.append(dict(layer=use, up=s.up, down=s.down, taps=[s.up_taps, s.down_taps], reason=reason))
            continue
        for dtype in FLRELU_DTYPES:
            for write_mask in (True, False):  # training (a gradient is needed) and inference
                for pas, launch in _flrelu_calls(s, dtype, clamp, write_mask):
                    yield specialize(F, F._flrelu_kernel, dtype, launch), pas, use


# upfirdn2d(x, f, up, down, padding) calls, f's shape [fh, fw] or [taps] for a separable filter:
# the two StyleGAN3 upsampling/downsampling filters of filtered_lrelu's 'cuda' path, a 2-D blur
# and an odd 2-D filter with up and down at once.
UPFIRDN2D_CALLS = [(2, 1, (12,), 5), (1, 2, (12,), 5), (4, 1, (24,), 11), (1, 1, (5, 5), 2), (2, 2, (4, 3), 1)]
UPFIRDN2D_SHAPE = (BATCH, 512, 36, 36)  # a 16² stem layer's feature map


def _upfirdn2d_pass(dtype_in, dtype_out, shape, fshape, upx, upy, downx, downy, pad):
    """launch_args of upfirdn2d_pass and of its backward (the transposed pass, dy -> dx)."""
    U = _upfirdn2d_triton
    hdt = torch.float64 if dtype_in == torch.float64 else torch.float32
    fh, fw = fshape
    n, c, in_h, in_w = shape
    out_w, out_h = upfirdn2d_out_size(in_w, in_h, _meta(fshape, hdt), (upx, upy), (downx, downy), pad)
    x, h, y = _meta(shape, dtype_in), _meta(fshape, hdt), _meta((n, c, out_h, out_w), dtype_out)
    fwd = U.launch_args(x, h, y, upx, upy, downx, downy, pad[0], pad[2])
    p = grad_padding(in_w, in_h, out_w, out_h, fw, fh, upx, upy, downx, downy, pad[0], pad[2])
    bhdt = torch.float64 if dtype_out == torch.float64 else torch.float32
    bwd = U.launch_args(_meta(y.shape, dtype_out), _meta(fshape, bhdt), _meta(shape, dtype_in), downx, downy, upx, upy,
                        p[0], p[2])
    return (dtype_in, fwd), (dtype_out, bwd), y.shape


def upfirdn2d_launches():
    U = _upfirdn2d_triton
    for dtype in OTHER_DTYPES:
        fdt = torch.float64 if dtype == torch.float64 else torch.float32
        for up, down, f, p in UPFIRDN2D_CALLS:
            use = f"upfirdn2d({_short(dtype)}, up={up}, down={down}, f={'x'.join(map(str, f))}, padding={p})"
            if len(f) == 2:  # one 2-D pass
                passes = [(dtype, dtype, UPFIRDN2D_SHAPE, f, up, up, down, down, (p,) * 4)]
            else:  # separable: along x into a float32 intermediate, then along y
                mid_w = upfirdn2d_out_size(UPFIRDN2D_SHAPE[3], 1, _meta((1, f[0]), fdt), (up, 1), (down, 1), (p, p, 0, 0))[0]
                passes = [(dtype, fdt, UPFIRDN2D_SHAPE, (1, f[0]), up, 1, down, 1, (p, p, 0, 0)),
                          (fdt, dtype, UPFIRDN2D_SHAPE[:3] + (mid_w,), (f[0], 1), 1, up, 1, down, (0, 0, p, p))]
            for i, args in enumerate(passes):
                (din, fwd), (dout, bwd), _ = _upfirdn2d_pass(*args)
                yield specialize(U, U._upfirdn2d_kernel, din, fwd), f"fwd pass {i + 1}", use
                yield specialize(U, U._upfirdn2d_kernel, dout, bwd), f"bwd pass {i + 1}", use


BIAS_ACT_SHAPE = (32, 512)  # the mapping network's FullyConnected layers (bias_act along dim 1)


def bias_act_launches():
    B = _bias_act_triton
    for dtype in OTHER_DTYPES:
        for grad in (False, True):
            for bias in (False, True):
                for clamp in (-1.0, 256.0):
                    x = _meta(BIAS_ACT_SHAPE, dtype)
                    b = _meta(BIAS_ACT_SHAPE[1:], dtype) if bias else None
                    dy = _meta(BIAS_ACT_SHAPE, dtype) if grad else None
                    launch = B.launch_args(x, b, dy, _meta(BIAS_ACT_SHAPE, dtype), 1, 0.2, 1.4, clamp)
                    use = f"bias_act({_short(dtype)}, bias={bias}, clamp={clamp >= 0})"
                    yield specialize(B, B._bias_act_kernel, dtype, launch), "grad" if grad else "fwd", use


SCALE_SHAPE = (BATCH, 512, 36, 36)  # modulated_conv2d's input of a 16² stem layer


def scale_launches():
    S = _scale_triton
    for dtype in OTHER_DTYPES:
        sdt = torch.float64 if dtype == torch.float64 else torch.float32
        x = _meta(SCALE_SHAPE, dtype)
        launch = S.launch_args(x, _meta(SCALE_SHAPE[:2], sdt), _meta(SCALE_SHAPE, dtype))
        yield specialize(S, S._scale_kernel, dtype, launch), "fwd", f"scale_channels({_short(dtype)})"


def enumerate_builds():
    """{Build: {"passes": set, "uses": list}} in first-seen order, and the fallback layers."""
    fallbacks: list = []
    builds: dict[Build, dict] = {}
    for gen in (filtered_lrelu_launches(fallbacks), upfirdn2d_launches(), bias_act_launches(), scale_launches()):
        for build, pas, use in gen:
            entry = builds.setdefault(build, {"passes": [], "uses": []})
            if pas not in entry["passes"]:
                entry["passes"].append(pas)
            if use not in entry["uses"]:
                entry["uses"].append(use)
    return builds, fallbacks


# ---------------------------------------------------------------------------------------------
# Compile and measure.
# ---------------------------------------------------------------------------------------------


def ptxas_path() -> str:
    """The ptxas Triton bundles for sm_90 (its get_ptxas changed shape across 3.x releases)."""
    from triton.backends.nvidia import compiler as nv

    get = getattr(nv, "get_ptxas", None)
    if get is not None:
        try:
            tool = get(CAPABILITY)  # 3.5+: get_ptxas(arch)
        except TypeError:
            tool = get()  # 3.3/3.4: get_ptxas()
        return tool.path if hasattr(tool, "path") else tool[0]
    return nv._path_to_binary("ptxas")[0]


def _gpu_name() -> str:
    from triton.backends.nvidia import compiler as nv

    f = getattr(nv, "sm_arch_from_capability", None)
    return f(CAPABILITY) if f is not None else "sm_90a"


def _ptxas_flags() -> list[str]:
    """Triton's own ptxas flags besides -v and --gpu-name, so the rerun builds the same binary."""
    from triton.backends.nvidia.compiler import CUDABackend

    flags = ["-lineinfo"]
    try:
        if "regAllocOptLevel=2" in inspect.getsource(CUDABackend.make_cubin):  # Triton 3.7+
            flags.append("--regAllocOptLevel=2")
    except (OSError, TypeError):
        pass
    return flags


def _ptxas_log(ptx: str) -> str:
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "kernel.ptx"
        src.write_text(ptx)
        cmd = [ptxas_path(), "-v", *_ptxas_flags(), f"--gpu-name={_gpu_name()}", str(src), "-o", str(Path(d) / "kernel.o")]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stderr


def ptxas_resources(log: str) -> dict:
    """registers, spill stores/loads and stack frame (bytes) from a ptxas -v log."""

    def grab(pattern):
        m = re.search(pattern, log)
        return int(m.group(1)) if m else None

    return dict(ptxas_registers=grab(r"Used (\d+) registers"), spill_stores=grab(r"(\d+) bytes spill stores"),
                spill_loads=grab(r"(\d+) bytes spill loads"), stack_frame=grab(r"(\d+) bytes stack frame"))


def cubin_registers(cubin: bytes) -> int | None:
    """Registers per thread recorded in the cubin (EIATTR_REGCOUNT of .nv.info), None if absent."""
    if cubin[:4] != b"\x7fELF" or cubin[4] != 2:  # ELF64 only
        return None
    shoff = struct.unpack_from("<Q", cubin, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", cubin, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", cubin, shoff + i * shentsize) for i in range(shnum)]
    names_at = sections[shstrndx][4]
    for sh in sections:
        name = cubin[names_at + sh[0]:cubin.index(b"\0", names_at + sh[0])]
        if not name.startswith(b".nv.info"):
            continue
        data, i = cubin[sh[4]:sh[4] + sh[5]], 0
        while i + 2 <= len(data):
            fmt, attr = data[i], data[i + 1]
            if fmt == 0x04:  # EIFMT_SVAL: u16 size, then the payload
                size = struct.unpack_from("<H", data, i + 2)[0]
                if attr == 0x2F and size == 8:  # EIATTR_REGCOUNT: (function symbol, registers)
                    return struct.unpack_from("<II", data, i + 4)[1]
                i += 4 + size
            elif fmt == 0x03:  # EIFMT_HVAL: u16 value
                i += 4
            elif fmt == 0x02:  # EIFMT_BVAL: u8 value
                i += 3
            else:  # EIFMT_NVAL
                i += 2
    return None


_KERNELS = {
    f"{m.__name__}:{k.__name__}": k
    for m, k in ((_filtered_lrelu_triton, _filtered_lrelu_triton._flrelu_kernel),
                 (_upfirdn2d_triton, _upfirdn2d_triton._upfirdn2d_kernel),
                 (_bias_act_triton, _bias_act_triton._bias_act_kernel),
                 (_scale_triton, _scale_triton._scale_kernel))
}


def compile_build(build: Build) -> dict:
    kernel = _KERNELS[build.kernel]
    index = {name: i for i, name in enumerate(kernel.arg_names)}
    launch = dict(build.launch)
    signature = {n: "constexpr" if n in launch else dict(build.signature)[n] for n in kernel.arg_names}
    constants = {(index[n],): v for n, v in build.launch} | {(index[n],): 1 for n in build.ones}
    src = ASTSource(kernel, signature, constants, {(index[n],): [["tt.divisibility", 16]] for n in build.divisible})
    t0 = time.perf_counter()
    try:
        # With TRITON_DUMP_PTXAS_LOG set (main does), Triton prints the log of its own ptxas run;
        # a kernel from Triton's cache prints nothing, and then ptxas runs again on its PTX.
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            k = triton.compile(src, target=TARGET, options=dict(build.options))
        log, source = printed.getvalue(), "triton"
        if "Used " not in log:
            log, source = _ptxas_log(k.asm["ptx"]), "rerun"
        res = ptxas_resources(log) | {"ptxas_log": source}
    except Exception as e:  # report every failing configuration, not just the first
        return dict(status="FAIL", error=f"{type(e).__name__}: {str(e)[:2000]}", seconds=time.perf_counter() - t0)
    regs = cubin_registers(k.asm["cubin"])
    return dict(status="ok", registers=regs if regs is not None else res["ptxas_registers"], **res,
                shared=int(k.metadata.shared), cubin_bytes=len(k.asm["cubin"]), seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------


def describe(build: Build) -> str:
    c = dict(build.launch)
    name = build.kernel.split(":")[1]
    if name == "_flrelu_kernel":
        flags = [f for f in ("HAS_BIAS", "HAS_SCALE", "HAS_CLAMP", "WRITE_MASK") if c[f]]
        return (f"mode{c['MODE']} up{c['U1']} down{c['D2']} taps {c['K1']}/{c['K2']} SP{c['SP']} IP{c['IP']} {c['PREC']}"
                + (" " + ",".join(f.removeprefix("HAS_").lower() for f in flags) if flags else ""))
    if name == "_upfirdn2d_kernel":
        sig = dict(build.signature)
        return (f"up{c['UPX']}x{c['UPY']} down{c['DOWNX']}x{c['DOWNY']} {c['FH']}x{c['FW']} "
                f"block {c['BLOCK_H']}x{c['BLOCK_W']} {sig['x_ptr'][1:]}->{sig['y_ptr'][1:]}")
    if name == "_bias_act_kernel":
        return " ".join(f"{f.lower()}={int(c[f])}" for f in ("GRAD", "HAS_BIAS", "HAS_CLAMP")) + f" block {c['BLOCK']}"
    return f"block {c['BLOCK']}"


def specialization(build: Build) -> str:
    """The run-time arguments the JIT specialized: ints equal to 1 and ints divisible by 16."""
    ints = [n for n, t in build.signature if t in ("i32", "i64") and n in build.divisible]
    return f"=1: {','.join(build.ones) or '-'}; %16: {','.join(ints) or '-'}"


def report(builds: dict, results: list[dict], fallbacks: list, out: Path | None, wall: float) -> int:
    rows = []
    for (build, entry), res in zip(builds.items(), results):
        rows.append(dict(kernel=build.kernel.split(":")[1].strip("_").removesuffix("_kernel"), dtype=build.dtype,
                         passes=entry["passes"], config=describe(build), constexprs=dict(build.launch),
                         specialization=specialization(build), divisible=list(build.divisible),
                         num_warps=dict(build.options)["num_warps"], num_stages=dict(build.options).get("num_stages"),
                         uses=entry["uses"], **res))
    failures = 0
    for r in rows:
        what = f"{r['kernel']} {r['dtype']} {'+'.join(r['passes'])} {r['config']} warps={r['num_warps']}"
        if r["status"] != "ok":
            failures += 1
            print(f"FAIL {what}: {r['error']}", flush=True)
            continue
        note = "" if r["ptxas_registers"] == r["registers"] else f" (ptxas rerun: {r['ptxas_registers']} registers)"
        print(f"ok   {what}: {r['registers']} registers{note}, spills {r['spill_stores']}/{r['spill_loads']} B, "
              f"shared {r['shared']} B, cubin {r['cubin_bytes']} B, {len(r['uses'])} uses, e.g. {r['uses'][0]}", flush=True)
    for f in fallbacks:
        print(f"cuda filtered_lrelu {f['layer']} up{f['up']} down{f['down']} taps {f['taps'][0]}/{f['taps'][1]}: {f['reason']}")
    print(f"{len(rows)} configurations, {failures} failed, {len(fallbacks)} layers outside the fused kernel, {wall:.0f} s")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        meta = dict(triton=triton.__version__, target=_gpu_name(), ptxas=ptxas_path(), ptxas_flags=_ptxas_flags(),
                    shared_limit=HOPPER_SHARED_PER_BLOCK, wall_seconds=round(wall, 1), failures=failures)
        (out / "aot_sm90.json").write_text(json.dumps(dict(**meta, configs=rows, fallbacks=fallbacks), indent=1, default=str))
        (out / "aot_sm90.md").write_text(markdown(rows, fallbacks, meta))
    return failures


def markdown(rows, fallbacks, meta) -> str:
    lines = [f"# Triton kernels for {meta['target']} (triton {meta['triton']})", "",
             "Registers per thread from the cubin, spills from ptxas -v (bytes per thread), shared memory per block "
             f"(limit {meta['shared_limit']} B). One row per compiled configuration; `specialization` names the run-time "
             "arguments the JIT turned into constants (=1) or divisibility hints (%16).", "",
             "| kernel | pass | config | dtype | warps | registers | spills st/ld (B) | shared (B) | cubin (B) | "
             "specialization | uses | e.g. |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['kernel']} | {'+'.join(r['passes'])} | {r['config']} | {r['dtype']} | {r['num_warps']} | "
                         f"FAIL | | | | {r['specialization']} | {len(r['uses'])} | {r['uses'][0]} |")
            continue
        lines.append(f"| {r['kernel']} | {'+'.join(r['passes'])} | {r['config']} | {r['dtype']} | {r['num_warps']} | "
                     f"{r['registers']} | {r['spill_stores']}/{r['spill_loads']} | {r['shared']} | {r['cubin_bytes']} | "
                     f"{r['specialization']} | {len(r['uses'])} | {r['uses'][0]} |")
    if fallbacks:
        lines += ["", "Synthesis layers outside the fused filtered_lrelu kernel (they run the 'cuda' composite):", ""]
        by_reason = collections.defaultdict(list)
        for f in fallbacks:
            by_reason[(f["up"], f["down"], tuple(f["taps"]), f["reason"])].append(f["layer"])
        for (up, down, taps, reason), layers in by_reason.items():
            lines.append(f"- up {up} down {down} taps {taps[0]}/{taps[1]}: {reason} ({', '.join(layers)})")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="write aot_sm90.json and aot_sm90.md here")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    args = ap.parse_args(argv)
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"  # see compile_build
    t0 = time.perf_counter()
    builds, fallbacks = enumerate_builds()
    todo = list(builds)
    if args.jobs > 1:
        # fork: the workers inherit the imported kernels; nothing here touches CUDA.
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(compile_build, todo))
    else:
        results = [compile_build(b) for b in todo]
    return 1 if report(builds, results, fallbacks, args.out, time.perf_counter() - t0) else 0


if __name__ == "__main__":
    sys.exit(main())
