"""End to end on CPU: the tiny preset on the built-in data trains, snapshots, grows and resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine import checkpoint
from engine.config import TrainConfig
from engine.loop import train_stage

ROOT = Path(__file__).resolve().parents[2]
BASE = dict(preset="tiny", batch=4, batch_gpu=2, tick=0.008, snap=1, kimg=1.0, d_backbones=("tf_efficientnet_lite0",),
            d_weights="random", compile="off", workers=0, seed=3)


def _cfg(run_dir, **kw) -> TrainConfig:
    return TrainConfig(stage=kw.pop("stage", 16), run_dir=str(run_dir), **{**BASE, **kw})


def _weights(path: Path) -> dict[str, torch.Tensor]:
    parts, _ = checkpoint.load(path)
    return {f"{p}/{k}": v for p in ("G", "G_ema", "D") for k, v in parts[p].items()}


def test_train_snapshot_grow(tmp_path):
    prog = train_stage(_cfg(tmp_path, max_ticks=2, backend="plain"), torch.device("cpu"), log=lambda *a: None)
    out = tmp_path / "stage16"
    assert prog.cur_tick == 2 and prog.cur_nimg == 16  # 2 iterations of 4 images per 8-image tick
    assert (out / "latest.safetensors").exists() and (out / "best.safetensors").exists()
    grids = sorted(out.glob("samples_*.png"))
    assert len(grids) == 2
    stats = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert [s["tick"] for s in stats] == [1, 2] and all(s["sec_per_kimg"] > 0 for s in stats)
    assert (out / "losses.png").stat().st_size > 1000 and any((out / "tensorboard").iterdir())
    meta = json.loads((out / "latest.json").read_text())
    assert meta["progress"]["cur_nimg"] == 16 and meta["decisions"]["D2_reduction"] == "sum"

    # Growing 16 -> 32 from the stem's checkpoint (with classifier guidance): kept layers equal the stem's G_ema.
    from engine.config import LossConfig

    train_stage(_cfg(tmp_path, stage=32, max_ticks=1, backend="plain", loss=LossConfig(cls_weight=0.5)),
                torch.device("cpu"), log=lambda *a: None)
    stem = _weights(out / "best.safetensors")
    grown = _weights(tmp_path / "stage32" / "latest.safetensors")
    kept = [k for k in grown if k.startswith("G/synthesis.layers.L0_")]
    assert kept and all(torch.equal(grown[k], stem["G_ema" + k[1:]]) for k in kept)  # frozen: unchanged
    layers = lambda w: sorted({k.split(".")[2] for k in w if k.startswith("G/synthesis.layers.")})  # noqa: E731
    assert len(layers(stem)) == 5 and len(layers(grown)) == 2 + 4  # tiny: 2 kept + 3 head layers + ToRGB
    assert layers(grown)[-1].endswith("_32_3")  # the new ToRGB writes 32x32
    assert json.loads((tmp_path / "stage32/latest.json").read_text())["config"]["loss"]["cls_weight"] == 0.5


def test_missing_previous_stage_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train it first"):
        train_stage(_cfg(tmp_path, stage=64, max_ticks=1), torch.device("cpu"), log=lambda *a: None)


@pytest.mark.parametrize("backend", ["plain", "deepspeed"])
def test_resume_is_exact(tmp_path, backend):
    """2 ticks, stop, rerun to 4 ticks == 4 ticks uninterrupted, bit for bit (DeepSpeed: ZeRO-2)."""
    for run, ticks in (("a", 4), ("b", 2), ("b", 4)):
        train_stage(_cfg(tmp_path / run, max_ticks=ticks, backend=backend), torch.device("cpu"), log=lambda *a: None)
    a = _weights(tmp_path / "a/stage16/latest.safetensors")
    b = _weights(tmp_path / "b/stage16/latest.safetensors")
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, diff[:5]


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    """SIGKILL a real run after its first snapshot; rerunning the command finishes identically."""
    args = [sys.executable, str(ROOT / "engine/train.py"), "--stage", "16", "--outdir", str(tmp_path / "k"),
            "--batch", "4", "--batch-gpu", "2", "--tick", "0.008", "--snap", "1", "--kimg", "1", "--max-ticks", "4",
            "--d-backbones", "tf_efficientnet_lite0", "--d-weights", "random", "--compile", "0", "--workers", "0",
            "--seed", "3", "--metrics", ""]
    # A fresh process group for the child: drop the launcher variables earlier in-process runs set.
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(ROOT)
    log = tmp_path / "killed_run.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(args, env=env, stdout=f, stderr=subprocess.STDOUT)
        latest = tmp_path / "k/stage16/latest.json"
        deadline = time.time() + 900
        while time.time() < deadline and proc.poll() is None:
            if latest.exists() and json.loads(latest.read_text())["progress"]["cur_tick"] >= 1:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert latest.exists(), f"no snapshot before the kill (exit {proc.returncode}):\n{log.read_text()[-3000:]}"
    killed_at = json.loads(latest.read_text())["progress"]["cur_tick"]
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    train_stage(_cfg(tmp_path / "ref", max_ticks=4), torch.device("cpu"), log=lambda *a: None)
    a = _weights(tmp_path / "ref/stage16/latest.safetensors")
    b = _weights(tmp_path / "k/stage16/latest.safetensors")
    assert killed_at < 4
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dry_run_prints_config_and_layers():
    out = subprocess.run([sys.executable, str(ROOT / "engine/train.py"), "--stage", "32", "--preset", "paper", "--dry-run"],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    assert doc["train"]["stage"] == 32 and len(doc["generator"]) == 16
    assert doc["generator"][0]["name"] == "L0_36_1024"


def test_ema_flags():
    from engine.cli import config_from_args, parser

    cfg = config_from_args(parser().parse_args(["--stage", "16", "--ema-kimg", "2", "--ema-rampup", "0"]))
    assert cfg.ema_kimg == 2.0 and cfg.ema_rampup is None and cfg.ema_beta(10**6) == 0.5 ** (cfg.batch / 2000)
    cfg = config_from_args(parser().parse_args(["--stage", "16", "--batch", "32", "--batch-gpu", "8"]))
    assert cfg.ema_half_life_img == 10_000 and cfg.ema_beta(1000) == 0.5 ** (32 / 50)  # ramp-up 0.05
    with pytest.raises(ValueError, match="ema_kimg must be > 0"):
        config_from_args(parser().parse_args(["--stage", "16", "--ema-kimg", "-1"]))


def test_metrics_pick_best(tmp_path, monkeypatch):
    """A metric at every snapshot lands in stats.jsonl and the plot; best.safetensors is the
    snapshot with the lowest value (a small rFID: 64 generated images, the random Inception at 80 px)."""
    from engine import metrics

    monkeypatch.setenv("SGXL_METRICS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(metrics.METRICS, "rfid64_80",
                        metrics.MetricSpec(kind="fid", detector="inception_random", num_gen=64, size=80))
    train_stage(_cfg(tmp_path, max_ticks=3, backend="plain", metrics=("rfid64_80",)), torch.device("cpu"),
                log=lambda *a: None)
    out = tmp_path / "stage16"
    stats = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    values = [s["metric_rfid64_80"] for s in stats]
    assert len(values) == 3 and all(v > 0 for v in values)
    best = json.loads((out / "best.json").read_text())["progress"]
    assert best["best_metric"] == min(values)
    assert best["cur_tick"] == 1 + values.index(min(values))
    assert any((tmp_path / "cache").iterdir())  # dataset statistics cached
    with pytest.raises(ValueError, match="unknown metric"):
        train_stage(_cfg(tmp_path / "bad", max_ticks=1, backend="plain", metrics=("fid1_nope",)), torch.device("cpu"),
                    log=lambda *a: None)


def test_each_rank_trains_on_its_local_gpu(monkeypatch):
    """deepspeed starts one process per GPU with LOCAL_RANK: rank r uses cuda:r (mocked CUDA)."""
    from unittest import mock

    from engine.train import training_device

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with mock.patch.object(torch.cuda, "is_available", return_value=False):
        assert training_device() == torch.device("cpu")
    with mock.patch.object(torch.cuda, "is_available", return_value=True), \
            mock.patch.object(torch.cuda, "device_count", return_value=2), \
            mock.patch.object(torch.cuda, "set_device") as set_device:
        assert training_device() == torch.device("cuda", 0)
        monkeypatch.setenv("LOCAL_RANK", "1")
        assert training_device() == torch.device("cuda", 1)
        assert [c.args for c in set_device.call_args_list] == [(0,), (1,)]
        monkeypatch.setenv("LOCAL_RANK", "2")
        with pytest.raises(RuntimeError, match="LOCAL_RANK 2 but only 2 CUDA devices"):
            training_device()
