"""pytest plugin: one JSON line per test as soon as it finishes, so a killed pytest leaves what ran.

    SGXL_TESTS_JSONL=tests.jsonl SGXL_BENCH_JSONL=bench.jsonl python -m pytest -p bench._incremental ...

`SGXL_TESTS_JSONL`: every test, `{"nodeid", "outcome", "seconds", "reason"}` with outcome one of
passed / failed / skipped / error / xfailed / xpassed, plus a `running` line when it starts (the
last line per nodeid wins: a test left `running` was the one in flight when pytest was killed).
`SGXL_BENCH_JSONL`: the same for tests that take the pytest-benchmark `benchmark` fixture, with
its figures when it timed something: `name`, `median_s` / `mean_s` / `min_s` / `max_s` /
`stddev_s`, `rounds` and `extra_info`. Neither variable set: the plugin does nothing. Each line
is appended and the file closed at once (bench/gpu_check.py reads them while pytest runs).
"""

from __future__ import annotations

import json
import os
import time

import pytest

_TESTS, _BENCH = "SGXL_TESTS_JSONL", "SGXL_BENCH_JSONL"
_STATE = pytest.StashKey[dict]()


def _append(var: str, record: dict) -> None:
    path = os.environ.get(var)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")


def _targets(item) -> list[str]:
    return [_TESTS] + ([_BENCH] if "benchmark" in getattr(item, "fixturenames", ()) else [])


def _reason(report, call) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):  # (path, lineno, "Skipped: why")
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    if hasattr(report, "wasxfail"):
        return str(report.wasxfail)
    if call.excinfo is not None:
        return call.excinfo.exconly()[-1500:]
    return report.longreprtext[-1500:]


def _outcome(report) -> str:
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    if report.when != "call" and report.failed:
        return "error"
    return report.outcome


def _figures(bench) -> dict:
    meta = getattr(bench, "stats", None)
    stats = getattr(meta, "stats", None)
    out = {"name": getattr(bench, "name", None), "extra_info": dict(getattr(bench, "extra_info", {}) or {})}
    if stats:  # None under --benchmark-disable, empty when the test skipped before timing
        out |= {f"{k}_s": getattr(stats, k) for k in ("median", "mean", "min", "max", "stddev")}
        out |= {"rounds": stats.rounds, "iterations": getattr(meta, "iterations", 1)}
    return out


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    record = {"nodeid": item.nodeid, "outcome": "running", "time": time.time()}
    for var in _targets(item):
        _append(var, record)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if not (os.environ.get(_TESTS) or os.environ.get(_BENCH)):
        return
    report = outcome.get_result()
    state = item.stash.setdefault(_STATE, {"seconds": 0.0, "outcome": None, "reason": ""})
    state["seconds"] += report.duration
    final = _outcome(report)
    # The first non-passing phase decides; a passing call decides unless teardown then errors.
    if state["outcome"] in (None, "passed") and (report.when == "call" or final != "passed"):
        state["outcome"], state["reason"] = final, ("" if final == "passed" else _reason(report, call))
    if report.when == "call" and "benchmark" in item.fixturenames:
        state["bench"] = item.funcargs.get("benchmark")
    if report.when != "teardown":
        return
    record = {"nodeid": item.nodeid, "outcome": state["outcome"] or "passed", "seconds": round(state["seconds"], 4),
              "reason": state["reason"], "time": time.time()}
    for var in _targets(item):
        extra = _figures(state["bench"]) if var == _BENCH and state.get("bench") is not None else {}
        _append(var, record | extra)
