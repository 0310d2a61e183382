"""One call on a lent GPU: environment, kernel + model tests, benchmarks and a short training run.

    python bench/gpu_check.py            # the default call: everything below within 9 minutes

The lent machine (one H100/H200, torch 2.11, triton 3.6, no DeepSpeed, no DALI, no network) is
held for 15 minutes and one command may run 10, so the default call has one overall deadline,
`--deadline 540` seconds from the script's start, and runs these steps in priority order, each
with a budget in seconds (`BUDGETS`; the defaults add up to the deadline with `RESERVE_S`):

    env                 20  device, driver, CUDA, torch, triton, Python, GPU memory (torch + pynvml)
    tests              120  tests/kernels + tests/model, -m "not slow", --timeout 60 per test
                            (pytest-timeout; when it is absent the summary says so)
    bench_<kernel>   4x 30  bench/kernels/bench_*.py, one step per file
    bench_profile       45  bench/bench_profile.py (per-layer profile)
    bench_training      75  bench/bench_training.py (training throughput)
    bench_inference     50  bench/bench_inference.py (inference latency)
    train16, train32 60+40  engine/train.py, light preset, 0.2 kimg at 16², then grown to 32²
                            (plain backend, --d-weights random; GPU only)

A step's timeout is min(its budget, time left - RESERVE_S); a step for which less than its
minimum is left is recorded `skipped (deadline)` and not started. At the timeout the step's whole
process group gets SIGTERM, then SIGKILL after GRACE_S. Later calls pick steps (names or the
groups tests / kernels / model / bench / train; env always runs) and budgets:

    python bench/gpu_check.py --steps model --budget bench_training=240 --budget bench_inference=150
    python bench/gpu_check.py --steps train --budget train16=150 --budget train32=150
    python bench/gpu_check.py --skip-tests --no-train --suites kernels   # the older option style
    python bench/gpu_check.py --dry-run                                  # print the plan, run nothing

(train32 grows from train16's checkpoint in the same --out, so select both.) `--tests PATHS` and
`--bench FILES` (comma lists) replace the test paths and the benchmark files, e.g. for a quick run.

Results go to `--out` (default $OUT when set, else gpu_check_out/): summary.json and summary.md,
rewritten at the start, when each step starts, every REFRESH_S while it runs and after it ends
(per step: status ok / failed / timed out / skipped (deadline) / skipped (no GPU) / not run yet,
return code, seconds, budget, timeout, figures; plus the env record, elapsed seconds and the
deadline), and on SIGTERM / Ctrl-C before exiting; env.json; logs/<step>.log (its tail goes into
the summary when a step fails); tests.jsonl and <bench step>.jsonl, one line per test or
benchmark as it finishes (bench/_incremental.py; a killed pytest leaves what ran); tests.xml
(junit) and <bench step>.json (pytest-benchmark's file, for bench/report.py) when pytest reached
its end. Measured results are committed under bench/results/. Installs nothing. On a machine
without a GPU the same call works (GPU-marked tests and GPU sizes skip, benchmarks run their
CPU smoke sizes, the training steps are `skipped (no GPU)`). Exit status 1 if a step failed or
timed out, 143 / 130 after SIGTERM / Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 540  # default overall deadline: 9 of the 10 minutes one command may run
RESERVE_S = 10  # kept back from every step's timeout: killing it (GRACE_S) and the last summary
GRACE_S = 4  # SIGTERM -> SIGKILL, and SIGKILL -> giving up on a process stuck in the kernel
REFRESH_S = 10  # summary.json is also rewritten this often while a step runs
PER_TEST_TIMEOUT_S = 60
TEST_PATHS = ("tests/kernels", "tests/model")
MODEL_BENCH = ("bench/bench_profile.py", "bench/bench_training.py", "bench/bench_inference.py")
BUDGETS = {  # step -> seconds, in priority order; sum + RESERVE_S <= DEADLINE_S (tests/bench/test_gpu_check.py)
    "env": 20, "tests": 120,
    "bench_filtered_lrelu": 30, "bench_modulated_conv": 30, "bench_synthesis_layer": 30, "bench_upfirdn2d": 30,
    "bench_profile": 45, "bench_training": 75, "bench_inference": 50,
    "train16": 60, "train32": 40,
}
TRAIN_ARGS = ["--backend", "plain", "--preset", "light", "--d-weights", "random", "--batch", "32", "--batch-gpu", "8",
              "--kimg", "0.2", "--tick", "0.1", "--snap", "1", "--workers", "4", "--metrics", ""]
STATUSES = ("ok", "failed", "timed out", "skipped (deadline)", "skipped (no GPU)", "not run yet", "running", "interrupted")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Step:
    """One command of the check. Add a step by appending one of these in `build_steps`."""

    name: str  # key in summary.json; also names logs/<name>.log
    group: str  # what --steps / --suites select besides the name: env, tests, kernels, model, train, extra
    argv: list[str]  # the command, run in the repository root in its own session (process group)
    budget_s: float  # seconds it may take at most
    min_s: float = 15.0  # not started when less than this is left
    gpu_only: bool = False  # recorded `skipped (no GPU)` on a machine without CUDA
    env: dict = dataclasses.field(default_factory=dict)  # extra environment variables
    figures: Callable[[], dict] | None = None  # reads what the step wrote into --out


def step_timeout(budget_s: float, min_s: float, left_s: float, reserve_s: float = RESERVE_S) -> float | None:
    """Seconds a step may run with `left_s` to the deadline, or None when it no longer fits."""
    t = min(budget_s, left_s - reserve_s)
    return t if t >= min(min_s, budget_s) and t > 0 else None


# ---------------------------------------------------------------- figures read back from --out


def _jsonl_last(path: Path) -> list[dict]:
    """Last record per nodeid (a test still `running` was in flight when its pytest died)."""
    last: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            last[r.get("nodeid", "?")] = r
    return list(last.values())


def _counts(records: list[dict]) -> dict:
    out: dict = {}
    for r in records:
        key = "unfinished" if r["outcome"] == "running" else r["outcome"]  # in flight when pytest ended
        out[key] = out.get(key, 0) + 1
    return out


def _test_figures(jsonl: Path, junit: Path, per_test: str) -> Callable[[], dict]:
    def read() -> dict:
        recs = _jsonl_last(jsonl)
        bad = [f"{r['nodeid']}: {r.get('reason', '')[:300]}" for r in recs if r["outcome"] in ("failed", "error", "xpassed")]
        return {"counts": _counts(recs), "failed": bad, "per_test_timeout": per_test,
                "killed_while_running": [r["nodeid"] for r in recs if r["outcome"] == "running"],
                "junit": junit.name if junit.exists() else "not written (pytest did not reach its end)"}
    return read


def _bench_figures(jsonl: Path, json_file: Path) -> Callable[[], dict]:
    def read() -> dict:
        recs = _jsonl_last(jsonl)
        rows = []
        for r in recs:
            row = {"name": r.get("name") or r["nodeid"].split("::")[-1],
                   "outcome": "unfinished" if r["outcome"] == "running" else r["outcome"]}
            if r["outcome"] not in ("passed", "running"):
                row["reason"] = r.get("reason", "")[-500:]
            for k in ("median", "mean", "min", "stddev"):
                if r.get(f"{k}_s") is not None:
                    row[f"{k}_ms"] = r[f"{k}_s"] * 1e3
            row |= {k: r[k] for k in ("rounds", "extra_info") if r.get(k)}
            rows.append(row)
        done = json_file.is_file() and json_file.stat().st_size > 0
        return {"counts": _counts(recs), "benchmarks": rows,
                "benchmark_json": json_file.name if done else "not written (pytest did not reach its end)"}
    return read


def _train_figures(stats: Path) -> Callable[[], dict]:
    def read() -> dict:
        lines = stats.read_text().splitlines() if stats.exists() else []
        return {"last_tick": json.loads(lines[-1]) if lines else None, "ticks": len(lines)}
    return read


def _env_figures(path: Path) -> Callable[[], dict]:
    return lambda: json.loads(path.read_text()) if path.exists() else {}


# ---------------------------------------------------------------- the steps


def _pytest_timeout_note(per_test_s: int) -> tuple[list[str], str]:
    if importlib.util.find_spec("pytest_timeout") is None:
        return [], "pytest-timeout not installed: tests ran without a per-test timeout"
    return [f"--timeout={per_test_s}"], f"--timeout={per_test_s} (pytest-timeout)"


def _bench_step(path: str, out: Path, py: str) -> Step:
    stem = Path(path.split("::")[0]).stem
    name = stem if stem.startswith("bench_") else f"bench_{stem}"
    jsonl = out / f"{name}.jsonl"
    return Step(name=name, group="kernels" if "bench/kernels/" in path else "model", budget_s=BUDGETS.get(name, 60),
                min_s=20, argv=[py, "-m", "pytest", path, "--benchmark-only", "-q", "-p", "no:cacheprovider",
                                "-p", "bench._incremental", f"--benchmark-json={out / f'{name}.json'}"],
                env={"SGXL_BENCH_JSONL": str(jsonl), "TORCH_LOGS": "recompiles"},
                figures=_bench_figures(jsonl, out / f"{name}.json"))


def build_steps(out: Path, *, py: str = sys.executable, tests: list[str] | None = None,
                bench: list[str] | None = None, per_test_s: int = PER_TEST_TIMEOUT_S) -> list[Step]:
    """Every step in priority order with its default budget (`--steps` etc. select from these)."""
    timeout_args, note = _pytest_timeout_note(per_test_s)
    steps = [Step(name="env", group="env", budget_s=BUDGETS["env"], min_s=5,
                  argv=[py, str(Path(__file__).resolve()), "--env-json", str(out / "env.json")],
                  figures=_env_figures(out / "env.json")),
             Step(name="tests", group="tests", budget_s=BUDGETS["tests"], min_s=30,
                  argv=[py, "-m", "pytest", *(tests or TEST_PATHS), "-m", "not slow", "-q", "-p", "no:cacheprovider",
                        "-p", "bench._incremental", f"--junitxml={out / 'tests.xml'}", *timeout_args],
                  env={"SGXL_TESTS_JSONL": str(out / "tests.jsonl")},
                  figures=_test_figures(out / "tests.jsonl", out / "tests.xml", note))]
    if bench is None:
        bench = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "bench/kernels").glob("bench_*.py"))] + list(MODEL_BENCH)
    steps += [_bench_step(p, out, py) for p in bench]
    for stage in (16, 32):  # 32² grows from the 16² run's checkpoint in the same --outdir
        steps.append(Step(name=f"train{stage}", group="train", budget_s=BUDGETS[f"train{stage}"], min_s=30, gpu_only=True,
                          argv=[py, "engine/train.py", *TRAIN_ARGS, "--outdir", str(out / "train"), "--stage", str(stage)],
                          figures=_train_figures(out / "train" / f"stage{stage}" / "stats.jsonl")))
    return steps


def _extra_step(spec: str, out: Path, py: str) -> Step:
    """NAME[:BUDGET]=COMMAND; {out} and {python} in COMMAND are replaced (tests inject steps so)."""
    head, _, cmd = spec.partition("=")
    name, _, budget = head.partition(":")
    argv = [a.replace("{out}", str(out)).replace("{python}", py) for a in shlex.split(cmd)]
    return Step(name=name, group="extra", argv=argv, budget_s=float(budget or 60), min_s=1)


def select(steps: list[Step], args) -> list[Step]:
    """--steps (names or groups; env always first) or else the --skip-tests/--suites/--train filters."""
    if args.steps is not None:
        want = {w for w in args.steps.split(",") if w} | {"env"}
        want |= {"kernels", "model"} if "bench" in want else set()
        known = {s.name for s in steps} | {s.group for s in steps} | {"bench", "kernels", "model"}
        if want - known:
            raise SystemExit(f"unknown steps {sorted(want - known)}; choose from {sorted(known)}")
        return [s for s in steps if s.name in want or s.group in want]
    suites = {w for w in args.suites.split(",") if w}
    if suites - {"kernels", "model"}:
        raise SystemExit(f"unknown suites {sorted(suites - {'kernels', 'model'})}; choose from kernels, model")
    return [s for s in steps if s.group == "env" or (s.group == "tests" and not args.skip_tests)
            or (s.group in ("kernels", "model") and s.group in suites) or (s.group == "train" and args.train)]


# ---------------------------------------------------------------- running and recording


class Interrupted(Exception):
    pass


_SIGNALS = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT}


def _on_signal(signum, frame):
    signal.signal(signum, signal.SIG_IGN)  # the cleanup below must not be cut short by a second one
    raise Interrupted(signal.Signals(signum).name)


def _group_alive(pgid: int) -> bool:
    """A live process is left in the group (zombies do not count: an orphan's may never be reaped)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    if not Path("/proc").is_dir():
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):  # the process ended while we looked
            continue
        if int(pgrp) == pgid and state not in ("Z", "X"):
            return True
    return False


def _kill_group(proc: subprocess.Popen) -> bool:
    """SIGTERM the step's process group, SIGKILL what is left after GRACE_S; True if anything was there.

    Never blocks for longer than 2 x GRACE_S (< RESERVE_S), even on a process stuck in the driver."""
    if proc.poll() is not None and not _group_alive(proc.pid):
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        end = time.monotonic() + GRACE_S
        while (proc.poll() is None or _group_alive(proc.pid)) and time.monotonic() < end:
            time.sleep(0.1)
        if proc.poll() is not None and not _group_alive(proc.pid):
            break
    return True


class Check:
    """Runs steps against one deadline and keeps summary.json / summary.md up to date."""

    def __init__(self, out: Path, steps: list[Step], deadline_s: float, reserve_s: float, argv: list[str],
                 t0: float | None = None):
        self.out, self.steps, self.reserve_s, self.env = out, steps, reserve_s, {}
        self.t0, self.deadline_s = time.monotonic() if t0 is None else t0, deadline_s  # t0: the script's start
        self.records = {s.name: {"group": s.group, "status": "not run yet", "returncode": None, "seconds": None,
                                 "budget_s": s.budget_s, "command": shlex.join(s.argv)} for s in steps}
        self.meta = {"argv": argv, "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "deadline_s": deadline_s,
                     "reserve_s": reserve_s, "finished": False, "interrupted": None}

    def left(self) -> float:
        return self.deadline_s - (time.monotonic() - self.t0)

    def _env(self) -> dict:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
        return env

    def run(self, step: Step, cuda: bool | None) -> None:
        rec = self.records[step.name]
        if step.gpu_only and cuda is False:
            rec["status"] = "skipped (no GPU)"
            return
        timeout = step_timeout(step.budget_s, step.min_s, self.left(), self.reserve_s)
        if timeout is None:
            rec["status"] = "skipped (deadline)"
            return
        log = self.out / "logs" / f"{step.name}.log"
        rec |= {"status": "running", "timeout_s": round(timeout, 1), "log": str(log.relative_to(self.out))}
        self.write()
        print(f"+ [{step.name}] {rec['command']}  (timeout {timeout:.0f} s)", flush=True)
        t = time.monotonic()
        with open(log, "wb") as f:
            f.write(f"$ {rec['command']}\n".encode())
            f.flush()
            proc = subprocess.Popen(step.argv, cwd=ROOT, env=self._env() | step.env, stdin=subprocess.DEVNULL,
                                    stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc, status = self._wait(step, proc, t + timeout)
            except BaseException:  # SIGTERM / Ctrl-C of this script: take the step down with it
                rec["status"] = "interrupted"
                raise
            finally:
                signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # a second signal must not cut the kill short
                leftovers = _kill_group(proc)  # also children a finished step left behind
                rec |= {"returncode": proc.returncode, "seconds": round(time.monotonic() - t, 1)}
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        if rc is not None and leftovers:
            rec["note"] = "left processes behind; killed"
        for suffix in (".json", ".xml"):  # pytest-benchmark creates its file at the start, fills it at the end
            empty = self.out / f"{step.name}{suffix}"
            if empty.is_file() and empty.stat().st_size == 0:
                empty.unlink()
        if rc == 5 and "pytest" in step.argv:
            rec["note"] = "pytest collected no tests"
        if status is None:
            status = "ok" if rc == 0 or (rc == 5 and step.group != "tests") else "failed"
        rec["status"] = status
        print(f"= [{step.name}] {status} (rc {proc.returncode}) in {rec['seconds']} s", flush=True)

    def _wait(self, step: Step, proc: subprocess.Popen, end: float) -> tuple[int | None, str | None]:
        """Wait until the step ends or `end`, refreshing the summary with its figures every REFRESH_S."""
        while True:
            try:
                return proc.wait(max(0.0, min(REFRESH_S, end - time.monotonic()))), None
            except subprocess.TimeoutExpired:
                if time.monotonic() >= end:
                    return None, "timed out"
                self.collect(step)
                self.write()

    def collect(self, step: Step) -> None:
        rec = self.records[step.name]
        if step.figures is not None and rec["status"] not in ("not run yet", "skipped (deadline)", "skipped (no GPU)"):
            try:
                figures = step.figures()
            except Exception as e:  # a half-written file: record why instead of losing the summary
                figures = {"error": f"{type(e).__name__}: {e}"}
            if step.group == "env":  # the env record goes to the top of the summary
                self.env = figures
            else:
                rec["figures"] = figures
        log = self.out / rec.get("log", "-")
        if rec["status"] in ("failed", "timed out", "interrupted") and log.is_file():
            rec["tail"] = log.read_bytes()[-3000:].decode(errors="replace")

    def summary(self) -> dict:
        env = self.env or {"note": "env step not run yet (or it failed: see its log)"}
        return self.meta | {"elapsed_s": round(time.monotonic() - self.t0, 1), "env": env, "steps": self.records}

    def write(self) -> None:
        s = self.summary()
        for name, text in (("summary.json", json.dumps(s, indent=2, default=str)), ("summary.md", markdown(s))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.out / name)  # readers never see half a file


def _num(d: dict, key: str, spec: str) -> str:
    return format(d[key], spec) if isinstance(d.get(key), (int, float)) else ""


def markdown(s: dict) -> str:
    e = s["env"]
    mem = e.get("gpu_memory_total_bytes")
    state = "finished." if s["finished"] else f"interrupted by {s['interrupted']}." if s["interrupted"] else "still running."
    lines = [f"# GPU check on {e.get('device', '?')}", "",
             f"driver {e.get('driver')}, CUDA {e.get('cuda')}, torch {e.get('torch')}, triton {e.get('triton')}, "
             f"Python {e.get('python')}, GPU memory {f'{mem / 2**30:.1f} GiB' if mem else '-'}", "",
             f"Elapsed {s['elapsed_s']} s of a {s['deadline_s']} s deadline; {state} "
             f"Per-test timeout: {s.get('pytest_timeout')}.",
             "", "| step | status | rc | seconds | budget s | figures |", "|---|---|---:|---:|---:|---|"]
    bench, failed = [], []
    for name, r in s["steps"].items():
        fig = r.get("figures") or {}
        brief = ", ".join(f"{v} {k}" for k, v in fig.get("counts", {}).items())
        if fig.get("last_tick"):
            brief = ", ".join(f"{k} {_num(fig['last_tick'], k, '.4g')}" for k in ("kimg", "sec_per_kimg", "img_per_sec")
                              if k in fig["last_tick"])
        rc, sec = r["returncode"], r["seconds"]
        lines.append(f"| {name} | {r['status']} | {'' if rc is None else rc} | {'' if sec is None else sec} "
                     f"| {r['budget_s']:g} | {brief} |")
        failed += fig.get("failed", []) + [f"{t}: killed while running" for t in fig.get("killed_while_running", [])]
        bench += fig.get("benchmarks", [])
    if failed:
        lines += ["", "## Failed tests", ""] + [f"- {f.splitlines()[0]}" for f in failed]
    ran = [b for b in bench if "median_ms" in b]
    if ran:
        lines += ["", "## Benchmarks", "", "| benchmark | median ms | GB/s | of copy BW | TFLOP/s | of matmul |",
                  "|---|---:|---:|---:|---:|---:|"]
        for b in ran:
            x = b.get("extra_info", {})
            lines.append(f"| {b['name']} | {b['median_ms']:.3f} | {_num(x, 'gbps', '.1f')} "
                         f"| {_num(x, 'fraction_of_copy_bw', '.2f')} | {_num(x, 'tflops', '.1f')} "
                         f"| {_num(x, 'fraction_of_matmul', '.2f')} |")
    if bench:
        lines += ["", f"{sum(b['outcome'] == 'skipped' for b in bench)} benchmarks skipped (reasons in summary.json)."]
        lines += [f"- {b['name']}: {b['outcome']} {(b.get('reason') or '').partition(chr(10))[0]}"
                  for b in bench if b["outcome"] in ("failed", "error", "unfinished")]
    for name, r in s["steps"].items():
        if r.get("tail"):
            lines += ["", f"## {name}: {r['status']}, end of {r.get('log')}", "", "```", r["tail"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- env record (its own process)


def env_record() -> dict:
    import platform
    from importlib import metadata

    rec: dict = {"python": platform.python_version(), "host": platform.node()}
    for pkg in ("pytest", "pytest-benchmark", "pytest-timeout", "timm", "nvidia-ml-py", "deepspeed", "nvidia-dali-cuda130"):
        try:
            rec[f"version_{pkg}"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            rec[f"version_{pkg}"] = None
    import torch

    rec |= {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "device": "cpu (no CUDA GPU)", "driver": None}
    try:
        import triton

        rec["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001  (recorded, not raised: the rest of the record still matters)
        rec["triton"] = f"import failed: {e}"
    if rec["cuda_available"]:
        p = torch.cuda.get_device_properties(0)
        rec |= {"device": p.name, "device_count": torch.cuda.device_count(), "capability": f"{p.major}.{p.minor}",
                "gpu_memory_total_bytes": p.total_memory, "multiprocessors": p.multi_processor_count}
    try:
        import pynvml

        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        rec |= {"driver": v.decode() if isinstance(v, bytes) else v, "nvml_memory_total_bytes": mem.total,
                "nvml_memory_used_bytes": mem.used, "power_limit_w": pynvml.nvmlDeviceGetPowerManagementLimit(h) / 1e3}
    except Exception as e:  # noqa: BLE001  no driver or no pynvml: say so instead of guessing
        rec["driver"] = rec["driver"] or f"unknown ({type(e).__name__}: {e})"
    return rec


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    default_out = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "gpu_check_out"
    ap.add_argument("--out", type=Path, default=default_out, help=f"folder for the results (default: $OUT, else {default_out})")
    ap.add_argument("--deadline", type=float, default=DEADLINE_S, help="seconds from the start for everything (default 540)")
    ap.add_argument("--steps", default=None, help="comma list of step names or groups (tests, kernels, model, bench, train); "
                    f"env always runs. Steps: {', '.join(BUDGETS)}")
    ap.add_argument("--suites", default="kernels,model", help="without --steps: benchmark groups to run (kernels, model; '' none)")
    ap.add_argument("--skip-tests", action="store_true", help="without --steps: leave out the test step")
    ap.add_argument("--train", action=argparse.BooleanOptionalAction, default=True, help="without --steps: the training run")
    ap.add_argument("--budget", action="append", default=[], metavar="STEP=S", help="override a step's budget (repeatable)")
    ap.add_argument("--tests", default=None, help=f"comma list of test paths (default {','.join(TEST_PATHS)})")
    ap.add_argument("--bench", default=None, help="comma list of benchmark files, one step each (default: all)")
    ap.add_argument("--per-test-timeout", type=int, default=PER_TEST_TIMEOUT_S, help="pytest-timeout seconds per test")
    ap.add_argument("--reserve", type=float, default=RESERVE_S, help=argparse.SUPPRESS)
    ap.add_argument("--extra-step", action="append", default=[], help=argparse.SUPPRESS)  # NAME[:BUDGET]=CMD (tests)
    ap.add_argument("--env-json", type=Path, default=None, help=argparse.SUPPRESS)  # the env step itself
    ap.add_argument("--dry-run", action="store_true", help="print the plan and write a summary; run nothing")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    t0 = time.monotonic()
    args = parse_args(argv)
    if args.env_json is not None:
        args.env_json.write_text(json.dumps(env_record(), indent=2))
        return 0
    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    comma = lambda s: [w for w in s.split(",") if w] if s is not None else None  # noqa: E731
    every = build_steps(out, tests=comma(args.tests), bench=comma(args.bench), per_test_s=args.per_test_timeout)
    steps = select(every, args)
    steps += [_extra_step(spec, out, sys.executable) for spec in args.extra_step]
    budgets = dict(b.split("=", 1) for b in args.budget)
    if set(budgets) - {s.name for s in steps}:
        raise SystemExit(f"--budget for steps not selected: {sorted(set(budgets) - {s.name for s in steps})}")
    steps = [dataclasses.replace(s, budget_s=float(budgets.get(s.name, s.budget_s))) for s in steps]
    for s in steps:  # nothing stale from an earlier call in the same folder is read back as this call's result
        for suffix in (".jsonl", ".json", ".xml"):  # env.json, tests.jsonl, tests.xml, bench_*.json(l)
            (out / f"{s.name}{suffix}").unlink(missing_ok=True)
        (out / "logs" / f"{s.name}.log").unlink(missing_ok=True)
    check = Check(out, steps, args.deadline, args.reserve, sys.argv[1:] if argv is None else argv, t0=t0)
    check.meta["pytest_timeout"] = _pytest_timeout_note(args.per_test_timeout)[1]
    check.write()
    if args.dry_run:
        for s in steps:
            print(f"{s.name:24s} budget {s.budget_s:5.0f} s  {shlex.join(s.argv)}")
        print(f"total budget {sum(s.budget_s for s in steps):.0f} s + reserve {args.reserve:.0f} s; deadline {args.deadline:.0f} s")
        return 0
    for sig in (signal.SIGTERM, signal.SIGHUP):  # SIGINT: KeyboardInterrupt, handled alike
        signal.signal(sig, _on_signal)
    rc = 0
    try:
        for step in steps:
            check.run(step, check.env.get("cuda_available"))
            check.collect(step)
            check.write()
        check.meta["finished"] = True
    except (Interrupted, KeyboardInterrupt) as e:
        check.meta["interrupted"] = str(e) or "KeyboardInterrupt"
        rc = 143 if isinstance(e, Interrupted) else 130
        for step in steps:
            if check.records[step.name]["status"] == "interrupted":
                check.collect(step)
    finally:
        check.write()
    print((out / "summary.md").read_text(), flush=True)
    if rc == 0 and any(r["status"] in ("failed", "timed out") for r in check.records.values()):
        rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
