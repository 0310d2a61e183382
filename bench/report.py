"""Markdown summary of a pytest-benchmark JSON file, with the paper's Table 3 beside our inference times.

    pytest bench/ --benchmark-only --benchmark-json=bench.json
    python bench/report.py bench.json [--out report.md]

Sections: machine; training throughput (bench_training.py); inference latency and throughput
(bench_inference.py) and the Table-3 comparison (batch-1 per-sample seconds at 128²/256²/512²,
one table per eager/compiled, bench/paper.py); per-layer profile totals and top parts
(bench_profile.py); every other benchmark (kernels) with its median and TFLOP/s or GB/s. Only
numbers found in the JSON are printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.paper import table3_markdown  # noqa: E402


def _f(v, spec: str | None = None) -> str:
    """A number for a table cell: '-' when absent; 3 significant digits, no exponent from 1000 up."""
    if v is None:
        return "-"
    if spec is not None:
        return format(v, spec)
    return f"{v:.0f}" if abs(v) >= 1000 else format(v, ".3g")


def _suite(b: dict) -> str:
    return Path(b.get("fullname", "").split("::")[0]).stem


def _training(rows: list[dict]) -> list[str]:
    out = ["## Training throughput (G step + D step + EMA, one process)", "",
           "| stage | mode | batch | images/s | sec/kimg | first step s | model TFLOP/img | MFU | peak GiB | J/kimg | fits |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for b in sorted(rows, key=lambda b: (b["extra_info"].get("resolution", 0), b["extra_info"].get("compiled", False))):
        e = b["extra_info"]
        fits = ", ".join(f"b{k}: {'yes' if v else 'OOM'}" for k, v in e.get("fits", {}).items() if not k.startswith("oom_"))
        out.append(f"| {e.get('resolution')}² {e.get('preset')} | {'compiled' if e.get('compiled') else 'eager'} | {e.get('batch')} "
                   f"| {_f(e.get('images_per_s'))} | {_f(e.get('sec_per_kimg'))} | {_f(e.get('first_step_s'))} "
                   f"| {_f(e.get('model_tflop_per_image'))} | {_f(e.get('mfu'), '.1%')} | {_f(e.get('peak_mem_gb'))} "
                   f"| {_f(e.get('energy_j_per_kimg'))} | {fits} |")
    return out + [""]


def _inference(rows: list[dict]) -> list[str]:
    out = ["## Inference (EMA generator, eval mode)", ""]
    timed = {b["extra_info"].get("timed") for b in rows} - {None}
    out += [f"Timed: {t}." for t in sorted(timed)] + [""]
    out += ["| res | preset | batch | mode | ms/call | ms/image | images/s | TFLOP/s | peak GiB |",
            "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for b in sorted(rows, key=lambda b: (b["extra_info"].get("resolution", 0), b["extra_info"].get("batch", 0),
                                         b["extra_info"].get("compiled", False))):
        e = b["extra_info"]
        mode = f"compiled ({e.get('compile_mode')})" if e.get("compiled") else "eager"
        out.append(f"| {e.get('resolution')}² | {e.get('preset')} | {e.get('batch')} | {mode} | {_f(e.get('median_ms'))} "
                   f"| {_f(e.get('ms_per_image'))} | {_f(e.get('images_per_s'))} | {_f(e.get('tflops'))} | {_f(e.get('peak_mem_gb'))} |")
    out += ["", "### Beside the paper's Table 3 (seconds per sample)", ""]
    for compiled in (False, True):
        ours = {b["extra_info"]["resolution"]: b["extra_info"]["median_ms"] / 1e3 for b in rows
                if b["extra_info"].get("batch") == 1 and bool(b["extra_info"].get("compiled")) == compiled
                and b["extra_info"].get("median_ms") is not None}
        if not ours:
            continue
        device = next(b["extra_info"].get("device") for b in rows)
        dtype = next(b["extra_info"].get("dtype") for b in rows)
        label = f"ours, {device}, batch 1, {dtype}, {'compiled' if compiled else 'eager'}"
        out += [table3_markdown(ours, label)]
    out += ["Paper: GPU and batch of Table 3 unconfirmed (SPEC 9); ADM samples with 250 steps.", ""]
    return out


def _profile(rows: list[dict]) -> list[str]:
    out = ["## Per-layer profile totals (median forward + backward per part, summed)", "",
           "| stage | preset | batch | G ms | D ms | top parts (share of their network) |", "|---|---|---:|---:|---:|---|"]
    for b in sorted(rows, key=lambda b: b["extra_info"].get("meta", {}).get("stage", 0)):
        e = b["extra_info"]
        m, parts = e.get("meta", {}), sorted(e.get("rows", []), key=lambda r: -r["share"])
        top = ", ".join(f"{r['net']} {r['name']} {r['share']:.0%}" for r in parts[:4])
        out.append(f"| {m.get('stage')}² | {m.get('preset')} | {m.get('batch')} | {_f(e.get('G_fwd_bwd_ms'))} "
                   f"| {_f(e.get('D_fwd_bwd_ms'))} | {top} |")
    return out + [""]


def _other(rows: list[dict]) -> list[str]:
    out = ["## Other benchmarks", "", "| benchmark | median ms | TFLOP/s | of matmul | GB/s | of copy BW |",
           "|---|---:|---:|---:|---:|---:|"]
    for b in rows:
        e = b.get("extra_info", {})
        out.append(f"| {b['name']} | {b['stats']['median'] * 1e3:.3f} | {_f(e.get('tflops'))} | {_f(e.get('fraction_of_matmul'), '.2f')} "
                   f"| {_f(e.get('gbps'))} | {_f(e.get('fraction_of_copy_bw'), '.2f')} |")
    return out + [""]


def render(data: dict) -> str:
    """The Markdown summary of one pytest-benchmark JSON document."""
    mi = data.get("machine_info", {})
    groups: dict[str, list[dict]] = {}
    for b in data.get("benchmarks", []):
        groups.setdefault(_suite(b), []).append(b)
    devices = sorted({str(b.get("extra_info", {}).get("device")) for b in data.get("benchmarks", [])} - {"None"})
    lines = ["# Benchmark report", "",
             f"Device(s): {', '.join(devices) or 'unknown'}; host {mi.get('node', '?')}, {mi.get('cpu', {}).get('brand_raw', '?')}, "
             f"Python {mi.get('python_version', '?')}; {data.get('datetime', '')}.", ""]
    if "bench_training" in groups:
        lines += _training(groups.pop("bench_training"))
    if "bench_inference" in groups:
        lines += _inference(groups.pop("bench_inference"))
    if "bench_profile" in groups:
        lines += _profile(groups.pop("bench_profile"))
    rest = [b for suite in sorted(groups) for b in groups[suite]]
    if rest:
        lines += _other(rest)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path, help="pytest-benchmark JSON (--benchmark-json)")
    ap.add_argument("--out", type=Path, help="write the Markdown here (default: print only)")
    args = ap.parse_args(argv)
    text = render(json.loads(args.json.read_text()))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
