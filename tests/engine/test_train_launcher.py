"""The real training loop under the real DeepSpeed launcher on CPU (DS_ACCELERATOR=cpu, gloo).

`python -m deepspeed.launcher.runner --num_gpus N engine/train.py ...` is `deepspeed engine/train.py`
without the console script. Each run trains the tiny preset on the built-in data for a few
iterations. At every snapshot the loop gathers a digest of every rank's parameters, EMA and
Adam moments, raises if they differ, and records them in the checkpoint's JSON: the tests read
those digests (one per rank, all equal) and check that training moved the weights.

1 rank at ZeRO-2; 2 ranks at ZeRO-2 in the stem (G stays at ZeRO <= 2 there because the
path-length phase calls G's submodules), then re-run to resume; 2 ranks at ZeRO-3 in the 32²
stage grown from that stem (both engines at ZeRO-3).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine import checkpoint
from engine.distributed import free_port

REPO = Path(__file__).resolve().parents[2]
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT_S = 900
pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")


def _train(ranks: int, outdir: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(DS_ACCELERATOR="cpu", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks), "--master_port", str(free_port()),
           str(REPO / "engine/train.py"), "--outdir", str(outdir), "--batch", "4", "--batch-gpu", "2", "--tick", "0.008",
           "--snap", "1", "--kimg", "1", "--d-backbones", "tf_efficientnet_lite0", "--d-weights", "random",
           "--compile", "0", "--workers", "0", "--seed", "5", "--metrics", "", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"{ranks}-rank training timed out after {TIMEOUT_S} s:\n{log[-4000:]}")
    assert proc.returncode == 0, f"{ranks}-rank training failed:\n{log[-6000:]}"
    return log


def _meta(path: Path) -> dict:
    return json.loads(path.with_suffix(".json").read_text())


def _trained_tensors_moved(path: Path, before: Path | None = None) -> None:
    """The trained parts differ from the starting point (a fresh G/D, or an earlier checkpoint)."""
    parts, _ = checkpoint.load(path)
    assert all(torch.isfinite(t).all() for p in ("G", "D", "G_ema") for t in parts[p].values() if t.is_floating_point())
    assert float(parts["opt_G"]["step"]) > 0 and float(parts["opt_D"]["step"]) > 0
    moment = [v for k, v in parts["opt_G"].items() if k.endswith("exp_avg_sq")]
    assert moment and sum(float(v.abs().sum()) for v in moment) > 0
    if before is not None:
        old, _ = checkpoint.load(before)
        heads = [k for k in parts["D"] if k.startswith("discriminators.")]
        assert any(not torch.equal(parts["D"][k], old["D"][k]) for k in heads)


def test_one_rank(tmp_path):
    _train(1, tmp_path, "--stage", "16", "--max-ticks", "1", "--zero-stage", "2")
    meta = _meta(tmp_path / "stage16/latest.safetensors")
    assert meta["world_size"] == 1 and len(meta["rank_digests"]) == 1
    assert meta["progress"]["cur_nimg"] == 8
    _trained_tensors_moved(tmp_path / "stage16/latest.safetensors")


@pytest.fixture(scope="module")
def two_rank_stem(tmp_path_factory):
    """2 ranks, ZeRO-2, two ticks in the stem; a copy of tick 1's checkpoint is kept."""
    run = tmp_path_factory.mktemp("two_ranks")
    _train(2, run, "--stage", "16", "--max-ticks", "1", "--zero-stage", "2")
    first = run / "tick1.safetensors"
    first.write_bytes((run / "stage16/latest.safetensors").read_bytes())
    log = _train(2, run, "--stage", "16", "--max-ticks", "2", "--zero-stage", "2")
    return run, first, log


def test_two_ranks_zero2_agree_and_resume(two_rank_stem):
    run, first, log = two_rank_stem
    latest = run / "stage16/latest.safetensors"
    meta = _meta(latest)
    assert "resuming" in log and meta["progress"]["cur_tick"] == 2 and meta["progress"]["cur_nimg"] == 16
    assert meta["world_size"] == 2 and len(meta["rank_digests"]) == 2 and len(set(meta["rank_digests"])) == 1
    config = json.loads((run / "stage16/config.json").read_text())
    assert config["deepspeed"]["G"]["zero_optimization"]["stage"] == 2
    assert config["deepspeed"]["D"]["zero_optimization"]["stage"] == 2
    parts, _ = checkpoint.load(latest)
    assert set(parts["rng"]) == {"rank0", "rank1"} and not torch.equal(parts["rng"]["rank0"], parts["rng"]["rank1"])
    _trained_tensors_moved(latest, before=first)


def test_two_ranks_zero3_grown_stage(two_rank_stem):
    """Both engines at ZeRO-3 (no path-length phase above the stem), grown from the 2-rank stem."""
    run, _, _ = two_rank_stem
    log = _train(2, run, "--stage", "32", "--max-ticks", "1", "--zero-stage", "3")
    assert "grew stage 32" in log
    latest = run / "stage32/latest.safetensors"
    meta = _meta(latest)
    assert meta["world_size"] == 2 and len(set(meta["rank_digests"])) == 1 and len(meta["rank_digests"]) == 2
    config = json.loads((run / "stage32/config.json").read_text())
    assert {config["deepspeed"][n]["zero_optimization"]["stage"] for n in ("G", "D")} == {3}
    _trained_tensors_moved(latest)
    parts, _ = checkpoint.load(latest)
    stem, _ = checkpoint.load(run / "stage16/best.safetensors")
    kept = [k for k in parts["G"] if k.startswith("synthesis.layers.L0_")]
    assert kept and all(torch.equal(parts["G"][k], stem["G_ema"][k]) for k in kept)  # carried layers stay frozen


def _rank_pid(outdir: Path, rank: int, timeout: float = 300) -> int:
    """The PID of the training process of `rank` started for `outdir` (read from /proc)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for proc in Path("/proc").iterdir():
            try:
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
                env = (proc / "environ").read_bytes().split(b"\0")
            except (OSError, ValueError):
                continue
            if any(c.endswith(b"engine/train.py") for c in cmd) and str(outdir).encode() in cmd \
                    and f"RANK={rank}".encode() in env:
                return int(proc.name)
        time.sleep(0.2)
    pytest.fail(f"no rank {rank} process for {outdir}")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find a rank's process")
def test_sigterm_to_one_rank_stops_both_after_the_same_iteration(tmp_path):
    """SIGTERM to rank 1 only (a scheduler signalling one process): both ranks agree, stop after
    the same iteration, latest is written once with equal digests, and re-running the command
    ends bit-exactly where an uninterrupted 2-rank run ends."""
    args = ("--stage", "16", "--max-ticks", "12", "--snap", "100", "--zero-stage", "2")
    out = tmp_path / "s"
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(DS_ACCELERATOR="cpu", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(free_port()),
           str(REPO / "engine/train.py"), "--outdir", str(out), "--batch", "4", "--batch-gpu", "2", "--tick", "0.008",
           "--kimg", "1", "--d-backbones", "tf_efficientnet_lite0", "--d-weights", "random", "--compile", "0",
           "--workers", "0", "--seed", "5", "--metrics", "", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        pid = _rank_pid(out, 1)
        stats = out / "stage16/stats.jsonl"
        deadline = time.time() + TIMEOUT_S
        while time.time() < deadline and proc.poll() is None and not (stats.exists() and stats.read_text().strip()):
            time.sleep(0.1)
        os.kill(pid, signal.SIGTERM)
        log, _ = proc.communicate(timeout=TIMEOUT_S)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode != 0 and "Traceback" not in log, log[-6000:]
    stops = re.findall(r"stopped by (SIGTERM|another rank's signal) at ([\d.]+) kimg", log)
    assert sorted(s for s, _ in stops) == ["SIGTERM", "another rank's signal"], log[-6000:]
    assert len({k for _, k in stops}) == 1  # the same iteration on both ranks
    meta = _meta(out / "stage16/latest.safetensors")
    assert meta["progress"]["cur_nimg"] == round(float(stops[0][1]) * 1000) < 96
    assert len(meta["rank_digests"]) == 2 and len(set(meta["rank_digests"])) == 1
    _train(2, out, *args)  # resume to the end
    _train(2, tmp_path / "ref", *args)
    a, _ = checkpoint.load(out / "stage16/latest.safetensors")
    b, _ = checkpoint.load(tmp_path / "ref/stage16/latest.safetensors")
    for part in ("G", "D", "G_ema", "opt_G", "opt_D"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in b[part]), part
