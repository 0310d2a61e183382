"""Per-layer profile of G and D at one stage: forward and backward time, share, FLOPs, TFLOP/s, memory.

    python bench/profile_layers.py --stage 256 [--preset paper] [--batch 8] [--device cuda|cpu]
        [--out DIR] [--net G|D|both] [--d-weights pretrained|random] [--repeats N]

Rows. G: the mapping, the Fourier input, then every synthesis layer named as in model/specs.py
(ToRGB last). D: the input blur (engine/losses.py, sigma 2), then per feature network its
DiffAugment, trunk ("features": normalize, resize, timm trunk, DeiT reassemble convs), random
projections (CCM + CSM) and each of its four heads (model/discriminator.py's structure).

Method: explicit per-part calls, not hooks. One untimed pass through the network records each
part's inputs; each part then runs alone on its recorded inputs, `repeats` times a timed forward
followed by a timed backward (medians reported). Forward hooks would time the forwards as
well, but backward hooks fire when a module's input gradient is ready, not when its backward
starts, so per-layer backward times from hooks mix in the neighbours' work; explicit calls give
every part a clean forward and a clean backward. Timer: CUDA events on GPU, perf_counter after a
synchronize on CPU; warm-up calls first.

Backward = autograd.grad of a random cotangent w.r.t. what carries a gradient in training at
this stage: G parts their trainable parameters (model.generator.freeze_carried applied: a
superres stage freezes the mapping and the kept stem layers) and their input if anything
upstream trains; D parts their input image/features (the G step's activation gradient) and the
heads' parameters (the D step's weight gradient): the union of both phases. "share" is a part's
(forward + backward) time over its network's total.

FLOPs (2 x MAC). G synthesis layers from model/specs.py: LayerSpec.conv_flops + SPEC 9's
filtered_lrelu count (bench/layers.flrelu_flops; none for ToRGB, which only adds a bias and
clamps) + the style affine; mapping and input counted analytically (their matmuls). Backward:
forward x (1 for the input gradient + 1 for the weight gradient, each if present). D parts:
torch.utils.flop_counter.FlopCounterMode over the actual forward and backward (matmuls and
convs only; elementwise work such as DiffAugment counts 0). Memory on GPU: peak allocated during
the part's forward + backward, absolute (includes every weight and recorded input) and above the
memory in use before the call; None on CPU.

Defaults. GPU: paper preset, bf16 synthesis, D under bf16 autocast (the engine's "auto" D
precision), batch 8 (the README recipe's batch per GPU), DeiT-B + lite0 with pretrained weights
(missing weights raise, saying how to provide them). CPU: tiny preset, fp32, batch 2, lite0
only, random feature-network weights: well under a minute.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench.layers import BenchLayer, flrelu_flops  # noqa: E402
from engine.losses import blur  # noqa: E402
from model.config import D_HEAD_WIDTH, D_INPUT_SIZE  # noqa: E402
from model.diffaug import diff_augment  # noqa: E402
from model.discriminator import ProjectedDiscriminator  # noqa: E402
from model.feature_networks import DEIT_B, DEIT_INDICES, LITE0, FeatureNetwork  # noqa: E402
from model.generator import Generator, build_generator, freeze_carried  # noqa: E402
from model.layers import FullyConnected  # noqa: E402
from model.specs import LayerSpec  # noqa: E402

METHOD = ("explicit per-part calls on recorded inputs (not hooks); median of N repeats after warm-up; "
          "CUDA events on GPU, perf_counter + synchronize on CPU")


@dataclasses.dataclass(kw_only=True, slots=True)
class Row:
    net: str  # "G" or "D"
    name: str  # G: "mapping", "input", synthesis layer names of model/specs.py; D: "blur", "<backbone>/<part>"
    kind: str  # mapping | input | synthesis | torgb | blur | augment | features | projection | head
    in_shape: list[int]
    out_shape: list[int]
    fwd_ms: float  # median forward time
    bwd_ms: float | None  # median backward time; None when nothing in or upstream of the part has a gradient
    share: float  # (fwd + bwd) / the network's total
    fwd_flops: float
    bwd_flops: float | None
    flops_source: str  # "specs", "analytic" or "flop_counter"
    tflops: float | None  # achieved (fwd + bwd FLOPs) / (fwd + bwd time), TFLOP/s
    peak_mem_gb: float | None  # GPU: peak allocated during fwd + bwd, GiB; None on CPU
    extra_mem_gb: float | None  # GPU: that peak minus the memory in use before the call
    conv_flops: int | None = None  # synthesis layers: LayerSpec.conv_flops(batch)
    fir_flops: float | None = None  # synthesis layers: filtered_lrelu count (SPEC 9)
    affine_flops: float | None = None  # synthesis layers: style affine w -> styles


@dataclasses.dataclass(kw_only=True)
class _Part:
    net: str
    name: str
    kind: str
    fn: Callable[..., torch.Tensor | list[torch.Tensor]]
    inputs: list  # positional arguments; tensors with requires_grad set as in training
    params: list[torch.Tensor]  # trainable parameters of the part
    fwd_flops: float | None = None  # None: count with FlopCounterMode
    bwd_flops: float | None = None
    flops_source: str = "flop_counter"
    extra: dict = dataclasses.field(default_factory=dict)

    def targets(self) -> list[torch.Tensor]:
        return [t for t in self.inputs if isinstance(t, torch.Tensor) and t.requires_grad] + self.params


def synthesis_layer_flops(spec: LayerSpec, batch: int, w_dim: int) -> dict[str, float]:
    """Forward FLOPs of one synthesis layer: conv (specs), filtered_lrelu (SPEC 9), style affine."""
    conv = spec.conv_flops(batch)
    fir = 0.0 if spec.torgb else flrelu_flops(BenchLayer(id=spec.name, spec=spec, batch=batch))
    affine = 2.0 * w_dim * spec.inp.channels * batch
    return {"conv": conv, "fir": fir, "affine": affine, "total": conv + fir + affine}


def _outputs(out) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else list(out)


class _Timer:
    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, fn: Callable[[], object]) -> float:
        """Seconds one call of fn takes on the device."""
        self.sync()
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def _count_flops(fn: Callable[[], object]) -> float | None:
    """FLOPs FlopCounterMode sees while fn runs; None if counting fails (e.g. an op it cannot trace)."""
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
        return float(counter.get_total_flops())
    except Exception:
        return None


def _measure(part: _Part, timer: _Timer, repeats: int, warmup: int) -> Row:
    """Median forward and backward time of one part, its FLOPs and (GPU) its peak memory.

    The first warm-up call counts FLOPs where the part has no analytic count; the last timed
    repeat also records the peak memory.
    """
    targets = part.targets()
    held: dict[str, list[torch.Tensor]] = {}

    def run_fwd():
        held["outs"] = _outputs(part.fn(*part.inputs))

    def run_bwd():
        outs = held.pop("outs")
        if targets:
            torch.autograd.grad(outs, targets, cots, allow_unused=True)

    count = part.fwd_flops is None
    fwd_flops, bwd_flops = part.fwd_flops, part.bwd_flops
    if count:
        fwd_flops = _count_flops(run_fwd)
    if "outs" not in held:
        run_fwd()
    out_shape = list(held["outs"][0].shape)
    cots = [torch.randn_like(o) for o in held["outs"]]
    if count and targets:
        bwd_flops = _count_flops(run_bwd)
    else:
        run_bwd()
    for _ in range(warmup - 1):
        run_fwd()
        run_bwd()
    cuda = timer.device.type == "cuda"
    fwd_t, bwd_t, peak, extra = [], [], None, None
    for i in range(repeats):
        last = cuda and i == repeats - 1
        if last:
            timer.sync()
            base = torch.cuda.memory_allocated(timer.device)
            torch.cuda.reset_peak_memory_stats(timer.device)
        fwd_t.append(timer(run_fwd))
        if targets:
            bwd_t.append(timer(run_bwd))
        held.clear()
        if last:
            timer.sync()
            peak_b = torch.cuda.max_memory_allocated(timer.device)
            peak, extra = peak_b / 2**30, (peak_b - base) / 2**30
    fwd_s = statistics.median(fwd_t)
    bwd_s = statistics.median(bwd_t) if bwd_t else None
    in_t = next((t for t in part.inputs if isinstance(t, torch.Tensor)), None)
    total_flops = (fwd_flops or 0.0) + (bwd_flops or 0.0)
    total_s = fwd_s + (bwd_s or 0.0)
    return Row(net=part.net, name=part.name, kind=part.kind, in_shape=[] if in_t is None else list(in_t.shape),
               out_shape=out_shape, fwd_ms=fwd_s * 1e3, bwd_ms=None if bwd_s is None else bwd_s * 1e3,
               share=0.0, fwd_flops=fwd_flops, bwd_flops=bwd_flops if targets else None, flops_source=part.flops_source,
               tflops=total_flops / total_s / 1e12 if total_flops and total_s > 0 else None,
               peak_mem_gb=peak, extra_mem_gb=extra, **part.extra)


def _trainable(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.requires_grad]


def _fc_flops(module: torch.nn.Module, batch: int) -> float:
    return float(sum(2 * m.in_features * m.out_features * batch for m in module.modules() if isinstance(m, FullyConnected)))


def _input_flops(inp, batch: int) -> float:
    """Fourier input: channel mix + grid . freqs (SPEC 2.4) + its 512 -> 4 affine."""
    return 2.0 * batch * inp.size**2 * inp.channels * (inp.channels + 2) + _fc_flops(inp, batch)


def generator_forward_flops(G: Generator, batch: int = 1) -> float:
    """G forward FLOPs for `batch` images: mapping + input (analytic) + synthesis layers (specs)."""
    return (_fc_flops(G.mapping, batch) + _input_flops(G.synthesis.input, batch)
            + sum(synthesis_layer_flops(s, batch, G.cfg.w_dim)["total"] for s in G.specs))


def generator_parts(G: Generator, batch: int, device: torch.device) -> list[_Part]:
    """Mapping, Fourier input and every synthesis layer, each with its recorded input."""
    cfg, syn = G.cfg, G.synthesis
    z = torch.randn(batch, cfg.z_dim, device=device)
    c = torch.randint(0, cfg.c_dim, (batch,), device=device) if cfg.c_dim else None
    mapping_trains = bool(_trainable(G.mapping))
    with torch.no_grad():
        ws = G.mapping(z, c).float().unbind(1)
    ws = [w.detach().requires_grad_(mapping_trains) for w in ws]
    inp = syn.input
    parts = [
        _Part(net="G", name="mapping", kind="mapping", fn=lambda z, c: G.mapping(z, c), inputs=[z, c],
              params=_trainable(G.mapping), fwd_flops=_fc_flops(G.mapping, batch), flops_source="analytic"),
        _Part(net="G", name="input", kind="input", fn=inp, inputs=[ws[0]], params=_trainable(inp),
              fwd_flops=_input_flops(inp, batch), flops_source="analytic"),
    ]
    upstream_trains = mapping_trains or bool(_trainable(inp))
    with torch.no_grad():
        x = inp(ws[0])
    for (name, layer), w in zip(syn.layers.items(), ws[1:]):
        x_in = x.detach().requires_grad_(upstream_trains)
        params = _trainable(layer)
        f = synthesis_layer_flops(layer.spec, batch, cfg.w_dim)
        parts.append(_Part(net="G", name=name, kind="torgb" if layer.spec.torgb else "synthesis", fn=layer,
                           inputs=[x_in, w], params=params, fwd_flops=f["total"], flops_source="specs",
                           extra=dict(conv_flops=f["conv"], fir_flops=f["fir"], affine_flops=f["affine"])))
        upstream_trains = upstream_trains or bool(params)
        with torch.no_grad():
            x = layer(x, w)
    for p in parts:
        grads = int(any(isinstance(t, torch.Tensor) and t.requires_grad for t in p.inputs)) + int(bool(p.params))
        p.bwd_flops = p.fwd_flops * grads if grads else None
    return parts


def _trunk(feat: FeatureNetwork, x_NCHW: torch.Tensor) -> list[torch.Tensor]:
    """FeatureNetwork.forward up to (not including) the random projections."""
    x_NCHW = (x_NCHW + 1) / 2
    x_NCHW = (x_NCHW - feat.mean.to(x_NCHW.dtype)) / feat.std.to(x_NCHW.dtype)
    size = feat.input_size(x_NCHW.shape[-1])
    if x_NCHW.shape[-1] != size:
        x_NCHW = F.interpolate(x_NCHW, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    if feat.reassemble is None:
        return list(feat.trunk(x_NCHW))
    f_list = feat.trunk.forward_intermediates(x_NCHW, indices=list(DEIT_INDICES), output_fmt="NCHW", intermediates_only=True)
    return feat.reassemble(f_list)


def discriminator_parts(D: ProjectedDiscriminator, res: int, batch: int, device: torch.device,
                        autocast_bf16: bool = False) -> list[_Part]:
    """Blur, then per backbone: DiffAugment, trunk, projections, four heads (inputs recorded)."""
    D.requires_grad_(True)  # the heads train (D step); frozen parts stay frozen

    def ac(fn):
        def run(*args):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
                return fn(*args)
        return run

    img = (torch.rand(batch, 3, res, res, device=device) * 2 - 1).requires_grad_(True)
    c = F.one_hot(torch.randint(0, D.c_dim, (batch,), device=device), D.c_dim).float() if D.c_dim else None
    sigma = torch.tensor(2.0, device=device)
    parts = [_Part(net="D", name="blur", kind="blur", fn=lambda x: blur(x, sigma), inputs=[img], params=[])]
    with torch.no_grad():
        x = blur(img, sigma)
    for name, feat in D.feature_networks.items():
        heads = D.discriminators[name].heads
        x_in = x.detach().requires_grad_(True)
        if D.augment:
            parts.append(_Part(net="D", name=f"{name}/augment", kind="augment", fn=ac(diff_augment), inputs=[x_in],
                               params=[]))
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            xa = diff_augment(x) if D.augment else x
            f_list = _trunk(feat, xa)
            p_list = feat.proj(f_list)
            full = feat(xa)  # the split below must compute what FeatureNetwork.forward computes
            if any(not torch.allclose(a.float(), b.float(), rtol=1e-2, atol=1e-2) for a, b in zip(p_list, full)):
                raise RuntimeError("bench/profile_layers.py's trunk split no longer matches FeatureNetwork.forward")
        parts.append(_Part(net="D", name=f"{name}/features", kind="features", fn=ac(lambda t, feat=feat: _trunk(feat, t)),
                           inputs=[xa.detach().requires_grad_(True)], params=[]))
        parts.append(_Part(net="D", name=f"{name}/projection", kind="projection", fn=ac(lambda *f, proj=feat.proj: proj(list(f))),
                           inputs=[f.detach().requires_grad_(True) for f in f_list], params=[]))
        for k, (head, p) in enumerate(zip(heads, p_list)):
            parts.append(_Part(net="D", name=f"{name}/head{k}", kind="head", fn=ac(head),
                               inputs=[p.detach().requires_grad_(True), c], params=_trainable(head)))
    return parts


def discriminator_forward_flops(D: ProjectedDiscriminator, res: int, batch: int, device: torch.device,
                                autocast_bf16: bool = False) -> float | None:
    """FLOPs of one D forward on `batch` images of side `res` (FlopCounterMode; None if it cannot count)."""
    img = torch.rand(batch, 3, res, res, device=device) * 2 - 1
    c = F.one_hot(torch.randint(0, D.c_dim, (batch,), device=device), D.c_dim).float() if D.c_dim else None
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
        return _count_flops(lambda: D(img, c))


def _with_shares(rows: list[Row]) -> list[Row]:
    for net in {r.net for r in rows}:
        mine = [r for r in rows if r.net == net]
        total = sum(r.fwd_ms + (r.bwd_ms or 0.0) for r in mine)
        for r in mine:
            r.share = (r.fwd_ms + (r.bwd_ms or 0.0)) / total if total > 0 else 0.0
    return rows


def device_defaults(device: torch.device) -> dict:
    """What a run on `device` uses unless told otherwise (see the module docstring)."""
    if device.type == "cuda":
        return dict(preset="paper", batch=8, dtype="bfloat16", d_precision="autocast_bf16", d_backbones=(DEIT_B, LITE0),
                    d_weights="pretrained", repeats=10, warmup=3)
    return dict(preset="tiny", batch=2, dtype="float32", d_precision="fp32", d_backbones=(LITE0,), d_weights="random",
                repeats=3, warmup=1)


def run_profile(stage: int, *, device: torch.device | str | None = None, net: str = "both", c_dim: int = 1000,
                impl: str | None = None, **overrides) -> dict:
    """Profile G and/or D at `stage` (output resolution). Returns {"meta": ..., "rows": [Row as dict]}.

    overrides: preset, batch, dtype ("bfloat16"/"float32", G synthesis), d_precision ("fp32" or
    "autocast_bf16"), d_backbones, d_weights ("pretrained", "random" or a path), repeats, warmup;
    defaults from device_defaults(). impl: kernel implementation of the synthesis layers.
    """
    if net not in ("G", "D", "both"):
        raise ValueError(f"net must be 'G', 'D' or 'both', got {net!r}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    s = device_defaults(device)
    unknown = set(overrides) - set(s)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; choose from {sorted(s)}")
    s.update({k: v for k, v in overrides.items() if v is not None})
    timer = _Timer(device)
    rows, meta = [], {}
    if net in ("G", "both"):
        G = build_generator(s["preset"], stage, c_dim, impl=impl, dtype=s["dtype"]).to(device)
        freeze_carried(G)
        meta["G_params"] = sum(p.numel() for p in G.parameters())
        meta["G_trainable_params"] = sum(p.numel() for p in _trainable(G))
        rows += [_measure(p, timer, s["repeats"], s["warmup"]) for p in generator_parts(G, s["batch"], device)]
        del G
    if net in ("D", "both"):
        D = ProjectedDiscriminator(tuple(s["d_backbones"]), c_dim, weights=s["d_weights"],
                                   input_size=D_INPUT_SIZE[s["preset"]], head_width=D_HEAD_WIDTH[s["preset"]]).to(device)
        parts = discriminator_parts(D, stage, s["batch"], device, autocast_bf16=s["d_precision"] == "autocast_bf16")
        rows += [_measure(p, timer, s["repeats"], s["warmup"]) for p in parts]
        del D
    meta.update(stage=stage, net=net, c_dim=c_dim, impl=impl, device=str(device),
                device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                torch=torch.__version__, method=METHOD, **{k: list(v) if isinstance(v, tuple) else v for k, v in s.items()})
    return {"meta": meta, "rows": [dataclasses.asdict(r) for r in _with_shares(rows)]}


def _fmt(v, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def markdown(result: dict) -> str:
    """The profile as a Markdown table (one section per network)."""
    m = result["meta"]
    lines = [f"# Layer profile: {m['preset']} preset, {m['stage']}², batch {m['batch']}, {m['device_name']}", "",
             f"G synthesis dtype {m['dtype']}, D precision {m['d_precision']}, D feature networks "
             f"{', '.join(m['d_backbones'])} ({m['d_weights']} weights), torch {m['torch']}.", "",
             f"Method: {m['method']}; {m['repeats']} repeats after {m['warmup']} warm-up.", ""]
    for net in ("G", "D"):
        rows = [r for r in result["rows"] if r["net"] == net]
        if not rows:
            continue
        fwd, bwd = sum(r["fwd_ms"] for r in rows), sum(r["bwd_ms"] or 0 for r in rows)
        lines += [f"## {net}: forward {fwd:.3f} ms, backward {bwd:.3f} ms", "",
                  "| part | kind | in shape | out shape | fwd ms | bwd ms | share | fwd GFLOP | bwd GFLOP | TFLOP/s | peak GiB | extra GiB |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            gf = lambda v: None if v is None else v / 1e9  # noqa: E731
            lines.append(f"| {r['name']} | {r['kind']} | {'x'.join(map(str, r['in_shape']))} | {'x'.join(map(str, r['out_shape']))} "
                         f"| {r['fwd_ms']:.3f} | {_fmt(r['bwd_ms'], '.3f')} | {r['share']:.1%} | {_fmt(gf(r['fwd_flops']), '.3f')} "
                         f"| {_fmt(gf(r['bwd_flops']), '.3f')} | {_fmt(r['tflops'], '.3f')} | {_fmt(r['peak_mem_gb'], '.2f')} "
                         f"| {_fmt(r['extra_mem_gb'], '.2f')} |")
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Horizontal stacked bars (forward, backward ms) per part, one panel per network."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = [n for n in ("G", "D") if any(r["net"] == n for r in result["rows"])]
    heights = [sum(r["net"] == n for r in result["rows"]) for n in nets]
    fig, axes = plt.subplots(len(nets), 1, figsize=(9, 1.5 + 0.28 * sum(heights)), squeeze=False,
                             gridspec_kw=dict(height_ratios=heights))
    for ax, net in zip(axes[:, 0], nets):
        rows = [r for r in result["rows"] if r["net"] == net]
        names = [r["name"] for r in rows][::-1]
        fwd = [r["fwd_ms"] for r in rows][::-1]
        bwd = [r["bwd_ms"] or 0.0 for r in rows][::-1]
        ax.barh(names, fwd, label="forward")
        ax.barh(names, bwd, left=fwd, label="backward")
        ax.set_xlabel("ms")
        ax.set_title(f"{net}: {result['meta']['preset']} {result['meta']['stage']}², batch {result['meta']['batch']}, "
                     f"{result['meta']['device_name']}")
        ax.legend(loc="lower right")
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(result: dict, out: Path) -> dict[str, Path]:
    """profile_<preset>_<stage>.{md,json,png} in `out`; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    stem = f"profile_{result['meta']['preset']}_{result['meta']['stage']}"
    paths = {"md": out / f"{stem}.md", "json": out / f"{stem}.json", "png": out / f"{stem}.png"}
    paths["md"].write_text(markdown(result))
    paths["json"].write_text(json.dumps(result, indent=2))
    plot(result, paths["png"])
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", type=int, required=True, help="output resolution of the stage (16, 32, ..., 1024)")
    ap.add_argument("--preset", choices=("paper", "light", "tiny"), help="generator preset (GPU: paper, CPU: tiny)")
    ap.add_argument("--batch", type=int, help="images per forward (GPU: 8, CPU: 2)")
    ap.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    ap.add_argument("--out", type=Path, default=Path("bench/results/profile"), help="folder for .md/.json/.png")
    ap.add_argument("--net", choices=("G", "D", "both"), default="both")
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), help="G synthesis dtype (GPU: bfloat16, CPU: float32)")
    ap.add_argument("--d-precision", choices=("fp32", "autocast_bf16"), help="D forward precision (GPU: autocast_bf16)")
    ap.add_argument("--d-weights", help="pretrained, random or a weights file (GPU: pretrained, CPU: random)")
    ap.add_argument("--d-backbones", nargs="+", choices=(DEIT_B, LITE0), help="GPU: both, CPU: lite0")
    ap.add_argument("--c-dim", type=int, default=1000, help="classes (0 = unconditional)")
    ap.add_argument("--impl", choices=("triton", "cuda", "ref"), help="synthesis kernels (default: best for the device)")
    ap.add_argument("--repeats", type=int, help="timed calls per part (GPU: 10, CPU: 3)")
    ap.add_argument("--warmup", type=int, help="untimed calls per part first (GPU: 3, CPU: 1)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA GPU is available")
    result = run_profile(args.stage, device=args.device, net=args.net, c_dim=args.c_dim, impl=args.impl,
                         preset=args.preset, batch=args.batch, dtype=args.dtype, d_precision=args.d_precision,
                         d_weights=args.d_weights, d_backbones=args.d_backbones, repeats=args.repeats,
                         warmup=args.warmup)
    paths = write_outputs(result, args.out)
    print(markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
