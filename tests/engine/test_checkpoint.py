"""Checkpoints: round trip, atomic replacement, clear errors for foreign or incompatible files."""

from __future__ import annotations

import os

import pytest
import torch

from engine import checkpoint


def test_round_trip_with_optimizer(tmp_path):
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.0, 0.99))
    net(torch.randn(5, 4)).sum().backward()
    opt.step()
    ot, ometa = checkpoint.optimizer_tensors(opt)
    path = checkpoint.save(tmp_path / "ck.safetensors", {"G": net.state_dict(), "opt_G": ot},
                           {"arch": {"res": 16}, "opt_G": ometa, "progress": {"cur_nimg": 123}})
    parts, meta = checkpoint.load(path)
    assert meta["progress"]["cur_nimg"] == 123
    net2 = torch.nn.Linear(4, 3)
    net2.load_state_dict(parts["G"])
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    opt2 = torch.optim.Adam(net2.parameters(), lr=5.0)
    checkpoint.load_optimizer(opt2, parts["opt_G"], meta["opt_G"])
    assert opt2.param_groups[0]["lr"] == 1e-3 and opt2.param_groups[0]["betas"] == [0.0, 0.99]
    for p, p2 in zip(net.parameters(), net2.parameters()):
        assert torch.equal(opt.state[p]["exp_avg_sq"], opt2.state[p2]["exp_avg_sq"])
    assert (tmp_path / "ck.json").exists()  # human-readable copy of the metadata


def test_atomic_replace_leaves_old_or_new(tmp_path, monkeypatch):
    path = tmp_path / "latest.safetensors"
    checkpoint.save(path, {"G": {"w": torch.zeros(3)}}, {"v": 1})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, {"G": {"w": torch.ones(3)}}, {"v": 2})
    monkeypatch.undo()
    parts, meta = checkpoint.load(path)
    assert meta["v"] == 1 and torch.equal(parts["G"]["w"], torch.zeros(3))


def test_foreign_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint.load(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        checkpoint.load(bad)


def test_incompatible_checkpoint_names_the_difference():
    meta = {"arch": {"preset": "tiny", "resolution": 32}}
    checkpoint.check_compatible(meta, {"preset": "tiny", "resolution": 32}, "x")
    with pytest.raises(ValueError, match="resolution: checkpoint 32 vs requested 64"):
        checkpoint.check_compatible(meta, {"preset": "tiny", "resolution": 64}, "x")
