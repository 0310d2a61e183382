"""Non-finite steps in the real loop (issue 12, engine/divergence.py): skipped, counted in the
stats and the checkpoint, and too many in a row stop the run (exit 4) with latest untouched.
The backend-level skip (weights, moments, step counts unchanged; every ZeRO stage) is tested in
tests/engine/test_distributed.py."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

import engine.step
from engine import checkpoint
from engine.divergence import EXIT_DIVERGED, Diverged
from engine.loop import train_stage
from tests.engine.test_train import _cfg

QUIET = dict(log=lambda *a: None)


def _poison_d_loss(monkeypatch, bad_calls) -> list[int]:
    """Make engine/step.py's D loss NaN on the calls (0-based, one per chunk) in `bad_calls`."""
    calls, real = [0], engine.step.d_loss

    def d_loss(*args, **kwargs):
        loss = real(*args, **kwargs)
        i, calls[0] = calls[0], calls[0] + 1
        return loss * float("nan") if i in bad_calls else loss

    monkeypatch.setattr(engine.step, "d_loss", d_loss)
    return calls


def test_nonfinite_steps_are_skipped_and_counted(tmp_path, monkeypatch):
    """Two chunks per D step (batch 4 in chunks of 2): a NaN in either chunk skips that step. Two of
    the eight D steps go bad, not in a row; the run finishes with finite weights, and the stats
    and the checkpoint count the skips."""
    calls = _poison_d_loss(monkeypatch, {3, 8, 9})  # iterations 2 and 5 (of 8)
    prog = train_stage(_cfg(tmp_path, max_ticks=4, snap=4, backend="plain", max_bad_steps=2), torch.device("cpu"),
                       **QUIET)
    assert calls[0] == 16 and prog.cur_nimg == 32
    assert (prog.skipped_G, prog.skipped_D) == (0, 2)
    rows = [json.loads(line) for line in (tmp_path / "stage16/stats.jsonl").read_text().splitlines()]
    assert [r.get("skipped_D", 0) for r in rows] == [1, 1, 2, 2]
    parts, meta = checkpoint.load(tmp_path / "stage16/latest.safetensors")
    assert meta["progress"]["skipped_D"] == 2
    assert all(torch.isfinite(v).all() for p in ("G", "D", "G_ema") for v in parts[p].values() if v.is_floating_point())


def test_too_many_in_a_row_stop_the_run_and_leave_latest(tmp_path, monkeypatch):
    """From a good snapshot at 2 ticks, every D step non-finite: with --max-bad-steps 3 the run
    stops at the first check past 3 in a row (a tick's end: 2 iterations per tick) with
    Diverged naming the last good checkpoint; latest is byte-for-byte the one before. (No
    snapshot falls in between here, --snap 100; one that did would save the same, unchanged
    weights, since every bad step was skipped.)"""
    train_stage(_cfg(tmp_path, max_ticks=2, backend="plain"), torch.device("cpu"), **QUIET)
    latest = tmp_path / "stage16/latest.safetensors"
    before = hashlib.sha256(latest.read_bytes()).hexdigest()
    _poison_d_loss(monkeypatch, range(10**6))
    with pytest.raises(Diverged) as e:
        train_stage(_cfg(tmp_path, max_ticks=8, snap=100, backend="plain", max_bad_steps=3), torch.device("cpu"), **QUIET)
    msg = str(e.value)
    assert "diverged at 0.032 kimg" in msg and "D: 4 steps in a row" in msg and "0.016 kimg" in msg, msg
    assert hashlib.sha256(latest.read_bytes()).hexdigest() == before
    assert checkpoint.load(latest)[1]["progress"]["cur_nimg"] == 16


def test_cli_exits_4_with_one_line(tmp_path, monkeypatch, capsys):
    from engine.train import main

    _poison_d_loss(monkeypatch, range(10**6))
    rc = main(["--stage", "16", "--outdir", str(tmp_path), "--batch", "4", "--batch-gpu", "2", "--tick", "0.008",
               "--kimg", "1", "--max-ticks", "4", "--d-backbones", "tf_efficientnet_lite0", "--d-weights", "random",
               "--compile", "0", "--workers", "0", "--metrics", "", "--backend", "plain", "--max-bad-steps", "2"])
    err = capsys.readouterr().err
    assert rc == EXIT_DIVERGED
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "diverged" in lines[0] and "no checkpoint was written" in lines[0], err[-2000:]
    assert "Traceback" not in err
    assert not (tmp_path / "stage16/latest.safetensors").exists()
