"""Nothing lost on interrupts and re-runs (issue 12): SIGINT/SIGTERM save latest and stop, a run
with best but no latest resumes from best, damaged checkpoints are reported before anything is
built, stale temporaries go, stats rows are not duplicated, free disk space is checked first."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine import checkpoint
from engine.interrupt import EXIT_STOPPED, parse_signals
from engine.loop import train_stage
from tests.engine.test_train import ROOT, _cfg, _weights

QUIET = dict(log=lambda *a: None)


def _args(out: Path, ticks: int) -> list[str]:
    return [sys.executable, str(ROOT / "engine/train.py"), "--stage", "16", "--outdir", str(out), "--batch", "4",
            "--batch-gpu", "2", "--tick", "0.008", "--snap", "100", "--kimg", "1", "--max-ticks", str(ticks),
            "--d-backbones", "tf_efficientnet_lite0", "--d-weights", "random", "--compile", "0", "--workers", "0",
            "--seed", "3", "--metrics", "", "--backend", "plain"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_latest_and_resume_is_exact(tmp_path, sig):
    """A signal mid-run (no snapshot yet: --snap 100) saves latest after the current iteration and
    exits EXIT_STOPPED with one line; re-running finishes bit-exactly like an uninterrupted run."""
    out = tmp_path / "s"
    proc = subprocess.Popen(_args(out, 6), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stats = out / "stage16" / "stats.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not (stats.exists() and stats.read_text().strip()):
        time.sleep(0.1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == EXIT_STOPPED, err[-3000:]
    assert "Traceback" not in err and f"stopped by {sig.name}" in err and "re-run the same command" in err
    meta = json.loads((out / "stage16/latest.json").read_text())
    stopped_at = meta["progress"]["cur_nimg"]
    assert 8 <= stopped_at < 48 and stopped_at % 4 == 0  # after a whole iteration, before the end
    assert not (out / "stage16/best.safetensors").exists()  # an interrupt is no snapshot
    rerun = subprocess.run(_args(out, 6), env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    ref = tmp_path / "ref"
    train_stage(_cfg(ref, max_ticks=6, snap=100, backend="plain"), torch.device("cpu"), **QUIET)
    a, b = _weights(ref / "stage16/latest.safetensors"), _weights(out / "stage16/latest.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # One row per tick: the ticks after the interrupt continue the count.
    ticks = [json.loads(line)["tick"] for line in (out / "stage16/stats.jsonl").read_text().splitlines()]
    assert ticks == sorted(set(ticks)), ticks


def test_best_without_latest_resumes_from_best(tmp_path):
    train_stage(_cfg(tmp_path, max_ticks=2, backend="plain"), torch.device("cpu"), **QUIET)
    out = tmp_path / "stage16"
    (out / "latest.safetensors").unlink()
    lines = []
    prog = train_stage(_cfg(tmp_path, max_ticks=3, backend="plain"), torch.device("cpu"), log=lines.append)
    assert any("resuming from best.safetensors" in line for line in lines), lines
    assert prog.cur_tick == 3 and prog.cur_nimg == 24  # continued, not started over
    ticks = [json.loads(line)["tick"] for line in (out / "stats.jsonl").read_text().splitlines()]
    assert ticks == [1, 2, 3]


def test_rerun_drops_rows_past_the_checkpoint(tmp_path):
    """Rows written after the last checkpoint (a crash between snapshots) are not duplicated."""
    train_stage(_cfg(tmp_path, max_ticks=2, backend="plain"), torch.device("cpu"), **QUIET)
    stats = tmp_path / "stage16/stats.jsonl"
    rows = stats.read_text().splitlines()
    extra = json.loads(rows[-1]) | {"tick": 3, "kimg": 0.024}
    stats.write_text("\n".join(rows + [json.dumps(extra), '{"tick": 4, "kimg"']) + "\n")  # and a cut line
    train_stage(_cfg(tmp_path, max_ticks=3, backend="plain"), torch.device("cpu"), **QUIET)
    ticks = [json.loads(line)["tick"] for line in stats.read_text().splitlines()]
    assert ticks == [1, 2, 3]


def test_damaged_latest_is_reported_before_anything_is_built(tmp_path, monkeypatch):
    train_stage(_cfg(tmp_path, max_ticks=1, backend="plain"), torch.device("cpu"), **QUIET)
    out = tmp_path / "stage16"
    config_before = (out / "config.json").read_text()
    latest = out / "latest.safetensors"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # cut short
    import engine.loop as loop

    monkeypatch.setattr(loop, "build_stage", lambda *a, **k: pytest.fail("built models for a damaged checkpoint"))
    with pytest.raises(ValueError, match=r"latest.safetensors is damaged.*intact .*best.safetensors.*mv "):
        train_stage(_cfg(tmp_path, max_ticks=2, backend="plain"), torch.device("cpu"), **QUIET)
    assert (out / "config.json").read_text() == config_before


def test_verify_rejects_truncation_and_garbage(tmp_path):
    p = tmp_path / "c.safetensors"
    checkpoint.save(p, {"G": {"w": torch.arange(10.0)}}, {"format": "x"})
    assert checkpoint.verify(p) == {"format": "x"}
    data = p.read_bytes()
    for bad in (data[:-1], data[:5], b"\xff" * 64, data + b"junk"):
        p.write_bytes(bad)
        with pytest.raises(ValueError, match="damaged"):
            checkpoint.verify(p)


def test_stale_temporaries_removed_and_permissions_usual(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".latest.safetensors.tmp-{dead.pid}"
    live = tmp_path / f".latest.safetensors.tmp-{os.getppid()}"
    stale.write_bytes(b"x")
    live.write_bytes(b"x")
    assert checkpoint.remove_stale_temporaries(tmp_path) == [stale.name]
    assert not stale.exists() and live.exists()
    mask = os.umask(0o022)
    try:
        p = checkpoint.save(tmp_path / "c.safetensors", {"G": {"w": torch.zeros(2)}}, {})
    finally:
        os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


def test_full_disk_fails_before_the_first_tick(tmp_path, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1_000_000))
    with pytest.raises(ValueError, match="not enough free disk space"):
        train_stage(_cfg(tmp_path, max_ticks=1, backend="plain"), torch.device("cpu"), **QUIET)
    assert not (tmp_path / "stage16/stats.jsonl").exists()


def test_stop_signal_names():
    assert parse_signals("INT, sigterm,USR1") == ("INT", "TERM", "USR1")
    with pytest.raises(ValueError, match="NOPE"):
        parse_signals("INT,NOPE")


@pytest.mark.parametrize("at", [3, 4])
def test_stop_mid_tick_or_at_a_tick_end_resumes_on_the_same_ticks(tmp_path, monkeypatch, at):
    """A SIGTERM during iteration `at` (2 iterations per tick: 3 is mid-tick, 4 ends tick 2) stops
    after it; the resumed run ends its ticks on the same images as an uninterrupted one, writes one
    row per tick and ends bit-exactly on the same weights. (Before the fix, a stop on a tick's last
    iteration saved the old tick start, and every later tick ended one iteration late.)"""
    import engine.loop as loop

    real, calls = loop.train_iteration, [0]

    def train_iteration(*args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGTERM)  # the loop's handler: stop after this iteration
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "AGREE_EVERY", 1)  # look at the request after every iteration
    monkeypatch.setattr(loop, "train_iteration", train_iteration)
    with pytest.raises(loop.Stopped, match="stopped by SIGTERM"):
        train_stage(_cfg(tmp_path / "s", max_ticks=5, snap=100, backend="plain"), torch.device("cpu"), **QUIET)
    assert checkpoint.load(tmp_path / "s/stage16/latest.safetensors")[1]["progress"]["cur_nimg"] == 4 * at
    monkeypatch.setattr(loop, "train_iteration", real)
    train_stage(_cfg(tmp_path / "s", max_ticks=5, snap=100, backend="plain"), torch.device("cpu"), **QUIET)
    train_stage(_cfg(tmp_path / "ref", max_ticks=5, snap=100, backend="plain"), torch.device("cpu"), **QUIET)
    rows = {run: [(r["tick"], r["kimg"]) for r in map(json.loads, (tmp_path / run / "stage16/stats.jsonl")
                                                     .read_text().splitlines())] for run in ("s", "ref")}
    assert rows["s"] == rows["ref"] == [(t, t * 8 / 1000) for t in range(1, 6)]
    a, b = _weights(tmp_path / "ref/stage16/latest.safetensors"), _weights(tmp_path / "s/stage16/latest.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


HANG_IN_SECOND_WRITE = """
import os, runpy, sys, time
import engine.checkpoint as c
real, count = os.replace, [0]
def replace(src, dst):
    if str(dst).endswith("latest.safetensors"):
        count[0] += 1
        if count[0] == 2:  # the second snapshot: its temporary file is complete, latest not yet replaced
            open(os.environ["HANG_MARKER"], "w").close()
            time.sleep(3600)
    return real(src, dst)
c.os = type(sys)("os_hooked"); c.os.__dict__.update(os.__dict__); c.os.replace = replace
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_killed_during_checkpoint_write_resumes_from_the_previous_one(tmp_path):
    """SIGKILL while the second snapshot is being written (its temporary file complete, not yet
    renamed): latest is still the first snapshot, intact; the re-run removes the temporary file,
    says so, resumes from tick 1, writes no duplicate stats row and ends bit-exactly like an
    uninterrupted run."""
    out = tmp_path / "k"
    marker = tmp_path / "hanging"
    args = _args(out, 3)
    args[args.index("--snap") + 1] = "1"
    env = _env() | {"HANG_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, "-c", HANG_IN_SECOND_WRITE, *args[1:]], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not marker.exists():
        time.sleep(0.1)
    proc.kill()
    log, _ = proc.communicate()
    assert marker.exists(), log[-3000:]
    stage = out / "stage16"
    temporaries = list(stage.glob(".latest.safetensors.tmp-*"))
    assert temporaries and checkpoint.verify(stage / "latest.safetensors")["progress"]["cur_tick"] == 1
    rerun = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "removed 1 temporary file" in rerun.stdout + rerun.stderr
    assert not list(stage.glob(".*.tmp-*"))
    ticks = [json.loads(line)["tick"] for line in (stage / "stats.jsonl").read_text().splitlines()]
    assert ticks == [1, 2, 3]
    ref = tmp_path / "ref"
    train_stage(_cfg(ref, max_ticks=3, snap=1, backend="plain"), torch.device("cpu"), **QUIET)
    a, b = _weights(ref / "stage16/latest.safetensors"), _weights(stage / "latest.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stop_on_the_last_iteration_is_a_finished_run(tmp_path, monkeypatch):
    import engine.loop as loop

    real, calls = loop.train_iteration, [0]

    def train_iteration(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 4:  # the last of 2 ticks x 2 iterations
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_iteration", train_iteration)
    prog = train_stage(_cfg(tmp_path, max_ticks=2, backend="plain"), torch.device("cpu"), **QUIET)  # no Stopped
    assert prog.cur_tick == 2 and (tmp_path / "stage16/best.safetensors").exists()
