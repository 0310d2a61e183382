"""bench/gpu_check.py on CPU: budgets, the deadline, per-step summaries, per-benchmark JSON lines.

Three runs of the script on a reduced step set: A runs env, two fast test files, one small
benchmark file and a step that reads summary.json while it runs (deadline not reached); B, in
the background meanwhile, runs a pytest that hangs in its second test until its budget ends,
then a step that hangs with a child ignoring SIGTERM until the deadline kills both; C is
SIGTERMed itself while its hanging step runs. About 35 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from argparse import Namespace
from pathlib import Path

import pytest

from bench import gpu_check
from bench.gpu_check import BUDGETS, DEADLINE_S, RESERVE_S, STATUSES, build_steps, select, step_timeout

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = [sys.executable, str(ROOT / "bench/gpu_check.py")]
TESTS = "tests/kernels/test_args.py,tests/model/test_specs.py"
BENCH = "bench/kernels/bench_upfirdn2d.py"

# A step that spawns a child which ignores SIGTERM, records its PID and hangs.
HANG = """import subprocess, sys, time
from pathlib import Path
child = subprocess.Popen([sys.executable, "-c",
                          "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
Path(sys.argv[1], "hang_child.pid").write_text(str(child.pid))
time.sleep(600)
"""
# A test file whose second test hangs (and a third that never starts).
HANG_TESTS = """import time
def test_quick():
    pass
def test_hangs():
    time.sleep(600)
def test_never():
    pass
"""
# A step that checks the summary already records the steps before it (and itself as running).
CHECK = """import json, sys
from pathlib import Path
s = json.loads(Path(sys.argv[1], "summary.json").read_text())
st = {k: v["status"] for k, v in s["steps"].items()}
print(st)
assert st == {"env": "ok", "tests": "ok", "bench_upfirdn2d": "ok", "check": "running"}, st
assert s["env"]["torch"] and s["steps"]["tests"]["figures"]["counts"]["passed"] > 0
assert s["steps"]["bench_upfirdn2d"]["figures"]["benchmarks"]
"""


def _gone(pid: int) -> bool:
    """No such process, or only a zombie (the container's PID 1 may not reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    (tmp / "hang.py").write_text(HANG)
    (tmp / "check.py").write_text(CHECK)
    (tmp / "test_hangdemo.py").write_text(HANG_TESTS)
    out_a, out_b = tmp / "a", tmp / "b"
    t_b = time.monotonic()
    proc_b = subprocess.Popen(SCRIPT + ["--out", str(out_b), "--deadline", "30", "--steps", "tests",
                                        "--tests", str(tmp / "test_hangdemo.py"), "--budget", "tests=8",
                                        "--extra-step", f"hang:999={{python}} {tmp / 'hang.py'} {{out}}",
                                        "--extra-step", "late:5={python} -c pass"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # B's wall time is taken when B ends, not when A does (A runs longer on a loaded machine).
    b_out, b_end = [], []
    reader = threading.Thread(target=lambda: (b_out.append(proc_b.communicate()[0]), b_end.append(time.monotonic())),
                              daemon=True)
    reader.start()
    t_a = time.monotonic()
    # The benchmark step's default budget (30 s) is sized for a GPU; interpreted Triton on two
    # loaded CPU cores needs more.
    proc_a = subprocess.run(SCRIPT + ["--out", str(out_a), "--deadline", "150", "--steps", "tests,bench",
                                      "--tests", TESTS, "--bench", BENCH, "--budget", "bench_upfirdn2d=90",
                                      "--extra-step", f"check:30={{python}} {tmp / 'check.py'} {{out}}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=240)
    wall_a = time.monotonic() - t_a
    reader.join(timeout=60)
    assert b_end, "run B did not end"
    log_b, wall_b = b_out[0], b_end[0] - t_b
    return Namespace(a=out_a, rc_a=proc_a.returncode, log_a=proc_a.stdout + proc_a.stderr, wall_a=wall_a,
                     b=out_b, rc_b=proc_b.returncode, log_b=log_b, wall_b=wall_b)


def test_summary_records_env_and_every_step(runs):
    assert runs.rc_a == 0, runs.log_a[-3000:]
    s = _summary(runs.a)
    assert s["finished"] and s["interrupted"] is None and s["deadline_s"] == 150
    assert s["elapsed_s"] <= 150 and runs.wall_a < 150
    for key in ("device", "driver", "cuda", "torch", "triton", "python", "cuda_available"):
        assert key in s["env"], key
    assert list(s["steps"]) == ["env", "tests", "bench_upfirdn2d", "check"]
    for name, r in s["steps"].items():
        assert r["status"] == "ok", (name, r)
        assert r["status"] in STATUSES and r["returncode"] == 0 and r["seconds"] > 0
        assert (runs.a / r["log"]).is_file()
    assert "--timeout=60" in s["steps"]["tests"]["command"] and "not slow" in s["steps"]["tests"]["command"]
    assert "pytest-timeout" in s["pytest_timeout"]
    assert (runs.a / "summary.md").read_text().startswith("# GPU check on")


def test_tests_written_one_line_each(runs):
    lines = [json.loads(ln) for ln in (runs.a / "tests.jsonl").read_text().splitlines()]
    done = [r for r in lines if r["outcome"] != "running"]
    assert done and all(r["outcome"] == "passed" for r in done)
    assert len([r for r in lines if r["outcome"] == "running"]) == len(done)  # one start + one end line per test
    figures = _summary(runs.a)["steps"]["tests"]["figures"]
    assert figures["counts"] == {"passed": len(done)} and figures["junit"] == "tests.xml"


def test_benchmarks_written_one_line_each(runs):
    recs = [json.loads(ln) for ln in (runs.a / "bench_upfirdn2d.jsonl").read_text().splitlines()]
    timed = {r["name"]: r for r in recs if r["outcome"] == "passed"}
    skipped = [r for r in recs if r["outcome"] == "skipped"]
    assert timed and skipped and all(r["reason"] for r in skipped)  # GPU sizes skip with their reason
    for r in timed.values():
        assert r["median_s"] > 0 and r["min_s"] <= r["median_s"] and r["rounds"] >= 1 and r["stddev_s"] >= 0
        assert r["extra_info"]["impl"] in ("triton", "cuda", "ref")
    # The same benchmarks pytest-benchmark wrote at its end.
    final = json.loads((runs.a / "bench_upfirdn2d.json").read_text())["benchmarks"]
    assert {b["name"] for b in final} == set(timed)
    figures = _summary(runs.a)["steps"]["bench_upfirdn2d"]["figures"]
    assert {r["name"] for r in figures["benchmarks"] if "median_ms" in r} == set(timed)
    assert figures["benchmark_json"] == "bench_upfirdn2d.json"


def test_summary_present_before_the_last_step(runs):
    log = (runs.a / "logs/check.log").read_text()
    assert "'check': 'running'" in log, log


def test_killed_pytest_leaves_what_ran(runs):
    tests = _summary(runs.b)["steps"]["tests"]
    assert tests["status"] == "timed out" and tests["timeout_s"] == 8, runs.log_b[-3000:]
    figures = tests["figures"]
    assert figures["counts"] == {"passed": 1, "unfinished": 1}
    assert [t.split("::")[-1] for t in figures["killed_while_running"]] == ["test_hangs"]
    assert figures["junit"].startswith("not written")


def test_deadline_kills_hanging_step_and_its_child(runs):
    s = _summary(runs.b)
    assert runs.rc_b == 1, runs.log_b[-3000:]  # a step timed out
    assert s["finished"] and s["elapsed_s"] <= 30 and runs.wall_b < 30 + 3, (s["elapsed_s"], runs.wall_b)
    hang = s["steps"]["hang"]
    assert hang["status"] == "timed out" and hang["timeout_s"] <= 30 - RESERVE_S
    assert hang["seconds"] <= hang["timeout_s"] + gpu_check.GRACE_S + 2
    assert _gone(int((runs.b / "hang_child.pid").read_text()))
    assert s["steps"]["late"]["status"] == "skipped (deadline)" and s["steps"]["late"]["returncode"] is None
    assert not (runs.b / "logs/late.log").exists()  # never started


def test_sigterm_writes_summary_and_kills_the_step(tmp_path):
    (tmp_path / "hang.py").write_text(HANG)
    out = tmp_path / "c"
    proc = subprocess.Popen(SCRIPT + ["--out", str(out), "--deadline", "120", "--steps", "env",
                                      "--extra-step", f"hang:100={{python}} {tmp_path / 'hang.py'} {{out}}"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            if (out / "hang_child.pid").exists() and _summary(out)["steps"]["hang"]["status"] == "running":
                break
            time.sleep(0.1)
        else:
            pytest.fail("the hanging step never started")
        time.sleep(0.5)  # the child has set SIG_IGN for SIGTERM by now
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=gpu_check.GRACE_S + 10) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    s = _summary(out)
    assert s["interrupted"] == "SIGTERM" and not s["finished"]
    assert s["steps"]["env"]["status"] == "ok" and s["steps"]["hang"]["status"] == "interrupted"
    assert _gone(int((out / "hang_child.pid").read_text()))


# ---------------------------------------------------------------- budget arithmetic and selection


def _args(**kw) -> Namespace:
    return Namespace(**({"steps": None, "suites": "kernels,model", "skip_tests": False, "train": True} | kw))


def test_default_budgets_fit_the_deadline(tmp_path):
    steps = build_steps(tmp_path)
    assert [s.name for s in steps] == [s.name for s in select(steps, _args())]  # the default call runs them all
    assert {s.name for s in steps} == set(BUDGETS)  # a new bench file needs its budget in BUDGETS
    assert sum(s.budget_s for s in steps) + RESERVE_S <= DEADLINE_S
    assert [s.name for s in steps][:2] == ["env", "tests"] and steps[-1].name == "train32"


def test_step_timeout():
    assert step_timeout(100, 30, left_s=500, reserve_s=10) == 100  # fits: its budget
    assert step_timeout(100, 30, left_s=60, reserve_s=10) == 50  # cut to what is left
    assert step_timeout(100, 30, left_s=39, reserve_s=10) is None  # under its minimum: skipped
    assert step_timeout(5, 30, left_s=20, reserve_s=10) == 5  # a budget under the minimum still runs
    assert step_timeout(100, 1, left_s=5, reserve_s=10) is None


def test_step_that_does_not_fit_is_skipped_not_started(tmp_path):
    marker = tmp_path / "started"
    steps = [gpu_check.Step(name="late", group="extra", budget_s=30, min_s=10,
                            argv=[sys.executable, "-c", f"open({str(marker)!r}, 'w')"]),
             gpu_check.Step(name="gpu", group="train", budget_s=1, gpu_only=True, argv=[sys.executable, "-c", "pass"])]
    (tmp_path / "logs").mkdir()
    check = gpu_check.Check(tmp_path, steps, deadline_s=15, reserve_s=10, argv=[])
    check.run(steps[0], cuda=False)
    check.run(steps[1], cuda=False)
    assert check.records["late"]["status"] == "skipped (deadline)" and not marker.exists()
    assert check.records["gpu"]["status"] == "skipped (no GPU)"


def test_select(tmp_path):
    steps = build_steps(tmp_path)
    names = lambda **kw: [s.name for s in select(steps, _args(**kw))]  # noqa: E731
    assert names(skip_tests=True, suites="", train=False) == ["env"]
    assert names(suites="model", train=False) == ["env", "tests", "bench_profile", "bench_training", "bench_inference"]
    assert names(steps="train,bench_inference") == ["env", "bench_inference", "train16", "train32"]
    assert "bench_upfirdn2d" in names(steps="bench") and "tests" not in names(steps="bench")
    with pytest.raises(SystemExit):
        names(steps="nope")
    assert os.environ.get("OUT") or gpu_check.parse_args([]).out == ROOT / "gpu_check_out"


def test_without_pytest_timeout_the_summary_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check.importlib.util, "find_spec", lambda name: None)
    tests = next(s for s in build_steps(tmp_path) if s.name == "tests")
    assert not any(a.startswith("--timeout") for a in tests.argv)
    assert "not installed" in tests.figures()["per_test_timeout"]


def test_plugin_records_outcomes_and_reasons(tmp_path):
    (tmp_path / "test_demo.py").write_text(
        "import time, pytest\n"
        "def test_fail():\n    assert 1 == 2, 'boom'\n"
        "@pytest.mark.skip(reason='marked')\ndef test_skip():\n    pass\n"
        "@pytest.fixture\ndef bad():\n    raise RuntimeError('setup broke')\n"
        "def test_error(bad):\n    pass\n"
        "def test_slow():\n    time.sleep(3)\n")
    timeout = ["--timeout=1"] if gpu_check.importlib.util.find_spec("pytest_timeout") else []
    env = dict(os.environ, SGXL_TESTS_JSONL=str(tmp_path / "t.jsonl"), PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-m", "pytest", str(tmp_path / "test_demo.py"), "-q", "-p", "no:cacheprovider",
                    "-p", "bench._incremental", *timeout], cwd=tmp_path, env=env, capture_output=True, timeout=60)
    recs = {r["nodeid"].split("::")[-1]: r for r in gpu_check._jsonl_last(tmp_path / "t.jsonl")}
    assert {k: r["outcome"] for k, r in recs.items() if k != "test_slow"} == {
        "test_fail": "failed", "test_skip": "skipped", "test_error": "error"}
    assert "boom" in recs["test_fail"]["reason"] and recs["test_skip"]["reason"] == "marked"
    assert "setup broke" in recs["test_error"]["reason"]
    if timeout:  # pytest-timeout fails the test and pytest goes on
        assert recs["test_slow"]["outcome"] == "failed" and "Timeout" in recs["test_slow"]["reason"]
