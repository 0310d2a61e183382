"""engine/judge.py and the shapes metrics: the shipped judge loads without pickle, recognises the
built-in shapes at several resolutions, and shapes_acc / shapes_fid rank a generator that draws the
requested class above one that draws another class or noise."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine import metrics
from engine.config import default_metrics
from engine.data import DatasetSpec
from engine.judge import WEIGHTS, held_out_accuracy, load_judge, render_batch


class Renderer(nn.Module):
    """A 'generator' drawing image z-index of the synthetic dataset (seed 7) of class (c + shift) % 10."""

    def __init__(self, resolution: int, shift: int = 0, noise: bool = False):
        super().__init__()
        self.cfg = type("Cfg", (), {"resolution": resolution, "z_dim": 4, "c_dim": 10})()
        self.shift, self.noise = shift, noise
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, z, c, psi=1.0):
        if self.noise:
            return torch.rand(z.shape[0], 3, self.cfg.resolution, self.cfg.resolution) * 2 - 1
        idx = (z[:, 0].abs() * 1e4).long() % 500 * 10 + (c + self.shift) % 10  # image index with that class
        images, _ = render_batch(7, idx.tolist(), self.cfg.resolution)
        return images.float() / 127.5 - 1


@pytest.fixture(scope="module")
def judge():
    return load_judge()


def test_shipped_weights_are_small_safetensors(judge):
    assert WEIGHTS.stat().st_size < 1_000_000
    assert WEIGHTS.read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle (b"\x80")
    assert judge.identity.startswith("shapes_judge/auto-32px/sha256:")


@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_held_out_accuracy(judge, resolution):
    assert held_out_accuracy(judge, resolution, n=200) >= 0.95


def test_missing_weights_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m engine.judge train"):
        load_judge(tmp_path / "none.safetensors")


@pytest.mark.parametrize("resolution", [16, 32])
def test_shapes_metrics_rank_generators(resolution, tmp_path):
    spec = DatasetSpec(resolution=resolution, cond=True, synthetic_size=500)
    kw = dict(num_gen=200, batch=50, cache_dir=tmp_path, progress=False)
    right, wrong, noise = Renderer(resolution), Renderer(resolution, shift=1), Renderer(resolution, noise=True)
    acc_right = metrics.compute_metric("shapes_acc", right, spec, **kw)["shapes_acc"]
    acc_wrong = metrics.compute_metric("shapes_acc", wrong, spec, **kw)["shapes_acc"]
    assert acc_right >= 0.9 and acc_wrong <= 0.1, (acc_right, acc_wrong)
    fid_right = metrics.compute_metric("shapes_fid", right, spec, **kw)["shapes_fid"]
    fid_noise = metrics.compute_metric("shapes_fid", noise, spec, **kw)["shapes_fid"]
    assert fid_right * 5 < fid_noise, (fid_right, fid_noise)
    assert metrics.is_better("shapes_acc", acc_right, acc_wrong) and metrics.is_better("shapes_fid", fid_right, fid_noise)


def test_shapes_acc_needs_classes(tmp_path):
    G = Renderer(16)
    G.cfg.c_dim = 0
    with pytest.raises(ValueError, match="class-conditional"):
        metrics.compute_metric("shapes_acc", G, DatasetSpec(resolution=16), num_gen=10, cache_dir=tmp_path)


def test_default_metrics():
    assert default_metrics(None) == ("shapes_fid", "shapes_acc")
    assert default_metrics(None, cond=False) == ("shapes_fid",)
    assert default_metrics("/data/imagenet") == ()


def test_shapes_metrics_share_one_pass(tmp_path):
    """With a `shared` dict, shapes_fid then shapes_acc generate the images once and give the values
    of separate passes."""
    spec = DatasetSpec(resolution=16, cond=True, synthetic_size=500)
    kw = dict(num_gen=100, batch=50, cache_dir=tmp_path, progress=False)
    calls = []

    class Counting(Renderer):
        def forward(self, z, c, psi=1.0):
            calls.append(z.shape[0])
            return super().forward(z, c, psi)

    G = Counting(16, shift=0)
    alone = {m: metrics.compute_metric(m, G, spec, **kw)[m] for m in ("shapes_fid", "shapes_acc")}
    assert sum(calls) == 200
    calls.clear()
    shared = {}
    together = {m: metrics.compute_metric(m, G, spec, shared=shared, **kw)[m] for m in ("shapes_fid", "shapes_acc")}
    assert sum(calls) == 100
    assert together == pytest.approx(alone, rel=1e-6)
