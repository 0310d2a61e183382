"""One call on a lent GPU: every kernel test (GPU-marked ones included) and the kernel benchmarks.

    python bench/gpu_check.py --out DIR                                  # tests + kernel benchmarks
    python bench/gpu_check.py --out DIR2 --skip-tests --suites model --bench-timeout 280
        # second call: per-layer profile, training throughput, inference latency (then
        # python bench/report.py on DIR2's bench_inference.json prints the paper's Table 3 beside ours)
    python bench/gpu_check.py --out DIR3 --skip-tests --suites "" --train   # a short GPU training run

Installs nothing (the GPU machine has no network) and runs on its preinstalled torch and
triton. Writes DIR/summary.json (device, driver, versions, pass/fail counts, per-benchmark
figures), DIR/summary.md, DIR/tests.xml and DIR/bench.json. Budget: under 10 minutes on one
H100. Exit status is non-zero if any test failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _driver() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else v
    except Exception as e:  # no driver or no pynvml: say so instead of guessing
        return f"unknown ({type(e).__name__})"


def _env() -> dict:
    import torch
    import triton

    return {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (no CUDA GPU)",
        "driver": _driver(),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
    }


def _run(cmd: list[str], timeout: int) -> int:
    print("+", " ".join(cmd), flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        return subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        print(f"timed out after {timeout} s", flush=True)
        return 124


def _junit_counts(path: Path) -> dict:
    if not path.exists():
        return {"error": "no junit report"}
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    failed = [c.get("classname", "") + "::" + c.get("name", "") for c in suite.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")} | {"failed": failed}


def _bench_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for b in json.loads(path.read_text())["benchmarks"]:
        rows.append({"name": b["name"], "median_ms": b["stats"]["median"] * 1e3, **b.get("extra_info", {})})
    return rows


def _markdown(summary: dict) -> str:
    e, t = summary["env"], summary["tests"]
    lines = [
        f"# Kernel check on {e['device']}",
        "",
        f"driver {e['driver']}, CUDA {e['cuda']}, torch {e['torch']}, triton {e['triton']}, Python {e['python']}",
        "",
        f"Tests: {t.get('tests')} run, {t.get('failures')} failures, {t.get('errors')} errors, {t.get('skipped')} skipped.",
        "",
        "| benchmark | median ms | GB/s | of copy BW | TFLOP/s | of matmul |",
        "|---|---|---|---|---|---|",
    ]
    fmt = lambda r, k, f: format(r[k], f) if k in r else ""  # noqa: E731
    for r in summary["benchmarks"]:
        lines.append(f"| {r['name']} | {r['median_ms']:.3f} | {fmt(r, 'gbps', '.1f')} | {fmt(r, 'fraction_of_copy_bw', '.2f')} "
                     f"| {fmt(r, 'tflops', '.1f')} | {fmt(r, 'fraction_of_matmul', '.2f')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the reports")
    ap.add_argument("--test-timeout", type=int, default=180, help="seconds for the test run")
    ap.add_argument("--bench-timeout", type=int, default=95, help="seconds for each benchmark suite")
    ap.add_argument("--suites", default="kernels", help="comma list: kernels (bench/kernels/bench_*.py), model "
                    "(bench/bench_*.py: per-layer profile, training throughput, inference latency)")
    ap.add_argument("--skip-tests", action="store_true", help="benchmarks only (a second call on the same machine)")
    ap.add_argument("--train", action="store_true",
                    help="also train the light preset for 0.2 kimg at 16² and grow to 32² on the GPU (plain backend, "
                         "compiled, random D weights: the engine's GPU path without DeepSpeed, which this machine lacks)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    rc_tests = 0 if args.skip_tests else _run([py, "-m", "pytest", "tests/kernels", "-q", "-p", "no:cacheprovider",
                                               f"--junitxml={args.out / 'tests.xml'}"], args.test_timeout)
    rc_bench, rows = {}, []
    folders = {"kernels": ROOT / "bench/kernels", "model": ROOT / "bench"}
    suites = [n for n in args.suites.split(",") if n]  # "" = no benchmark suite
    unknown = set(suites) - set(folders)
    if unknown:
        ap.error(f"unknown suites {sorted(unknown)}; choose from {sorted(folders)}")
    paths = [p for name in suites for p in sorted(folders[name].glob("bench_*.py"))]
    for path in paths:
        out = args.out / f"{path.stem}.json"  # one file per suite: a timeout loses only that suite
        rc_bench[path.stem] = _run([py, "-m", "pytest", str(path.relative_to(ROOT)), "--benchmark-only", "-q",
                                    "-p", "no:cacheprovider", f"--benchmark-json={out}"], args.bench_timeout)
        rows += _bench_rows(out)
    train = {}
    if args.train:
        base = [py, "engine/train.py", "--backend", "plain", "--preset", "light", "--d-weights", "random",
                "--batch", "32", "--batch-gpu", "8", "--kimg", "0.2", "--tick", "0.1", "--snap", "1",
                "--outdir", str(args.out / "train"), "--workers", "4"]
        for stage in (16, 32):
            rc = _run(base + ["--stage", str(stage)], args.bench_timeout * 3)
            stats = args.out / "train" / f"stage{stage}" / "stats.jsonl"
            last = json.loads(stats.read_text().splitlines()[-1]) if stats.exists() and stats.read_text().strip() else None
            train[f"stage{stage}"] = {"returncode": rc, "last_tick": last}
    summary = {
        "env": _env(),
        "train": train,
        "tests": _junit_counts(args.out / "tests.xml") | {"returncode": rc_tests},
        "bench_returncode": rc_bench,
        "benchmarks": rows,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    (args.out / "summary.md").write_text(_markdown(summary))
    print(_markdown(summary))
    ok = rc_tests == 0 and not any(rc_bench.values()) and not any(t["returncode"] for t in train.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
