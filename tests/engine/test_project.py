"""engine/project.py on CPU: inversion of an image made by the same tiny 16² G, PTI, losses, errors."""

from __future__ import annotations

import importlib.util
import json
import math
import socket

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from engine import project as proj
from engine.export import load_generator
from engine.generate import Sampler
from tests.engine import test_generate

make_checkpoint = test_generate.make_checkpoint
_one_thread = test_generate._one_thread  # the autouse one-thread fixture

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cond(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("cond") / "ck.safetensors", 3)


@pytest.fixture(scope="module")
def target(cond, tmp_path_factory):
    """An image the generator can make exactly: seed 5, class 1, psi 1; saved at 3x size, off-square."""
    g, _ = load_generator(cond)
    s = Sampler(g, device=CPU)
    img = s.images(s.seed_ws([5], cls=1))[0]
    path = tmp_path_factory.mktemp("target") / "target.png"
    big = Image.fromarray(img).resize((48, 48), Image.LANCZOS)
    canvas = Image.new("RGB", (64, 48))  # 8 px black bars left and right: the center crop removes them
    canvas.paste(big, (8, 0))
    canvas.save(path)
    return path, img


def test_lr_schedule_matches_the_formula():
    f = lambda t: 0.1 * min(1, t / 0.05) * (0.5 - 0.5 * math.cos(math.pi * min(1, (1 - t) / 0.25)))  # noqa: E731
    assert proj.lr_at(0.0) == 0.0 and proj.lr_at(1.0) == 0.0
    assert proj.lr_at(0.025) == pytest.approx(0.05)  # half-way up the ramp
    assert proj.lr_at(0.05) == pytest.approx(0.1) and proj.lr_at(0.5) == pytest.approx(0.1)
    assert proj.lr_at(0.875) == pytest.approx(0.05)  # half-way down the cosine
    for t in (0.01, 0.3, 0.76, 0.9, 0.99):
        assert proj.lr_at(t) == pytest.approx(f(t), abs=1e-15)
    assert proj.lr_at(0.5, lr=0.2) == pytest.approx(0.2)


def test_load_target(target, tmp_path):
    path, img = target
    got = proj.load_target(path, 16)
    assert got.shape == (16, 16, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - img.astype(int)).mean() < 8  # crop + resize round trip, black bars gone
    with pytest.raises(FileNotFoundError, match="does not exist"):
        proj.load_target(tmp_path / "nope.png", 16)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="cannot read target image"):
        proj.load_target(bad, 16)


def test_projection_and_pti(cond, target, tmp_path):
    """Projecting an image G made from a known w: loss falls below half, the image gets closer;
    PTI lowers its loss further and writes a loadable tuned generator.

    Random lite0 features alone barely track pixel error, so the pixel MSE carries weight 10 here
    (seeds 5, 6, 7, 11, 12 at 25 steps: loss ratio <= 0.31, pixel-error ratio <= 0.64)."""
    path, img = target
    logs = []
    args = proj.parser().parse_args([
        "--network", str(cond), "--target", str(path), "--outdir", str(tmp_path), "--steps", "25", "--class", "1",
        "--loss", "features", "--features", "random", "--feature-size", "32", "--mse", "10", "--video",
        "--pti-steps", "4", "--pti-locality", "10"])
    out = proj.run(args, log=logs.append, progress=False)
    losses = out["losses"]
    assert len(losses) == 26 and losses[-1] < 0.5 * losses[0], losses
    assert any("RANDOM lite0 features" in line for line in logs)
    names = {p.name for p in out["files"]}
    assert names == {"target.png", "proj.png", "projected_w.safetensors", "proj.mp4", "proj_pti.png", "compare.png",
                     "G_pti.safetensors"}
    # The reconstruction is closer to the target than the starting point (the class's w_avg image).
    g, _ = load_generator(cond)
    s = Sampler(g, device=CPU)
    start = s.images(g.mapping.w_avg[1].expand(1, g.synthesis.num_ws, -1))[0]
    target_u8 = np.asarray(Image.open(tmp_path / "target.png")).astype(int)
    err = lambda a: np.abs(a.astype(int) - target_u8).mean()  # noqa: E731
    assert err(np.asarray(Image.open(tmp_path / "proj.png"))) < 0.8 * err(start)
    with safe_open(str(tmp_path / "projected_w.safetensors"), framework="pt") as f:
        w, ws = f.get_tensor("w"), f.get_tensor("ws")
        meta = json.loads(f.metadata()["meta"])
    assert w.shape == (1, g.cfg.w_dim) and ws.shape == (1, g.synthesis.num_ws, g.cfg.w_dim)
    assert torch.equal(ws[0, -1], w[0]) and meta["class"] == 1 and meta["final_loss"] == losses[-1]
    # The saved w reproduces proj.png.
    assert np.array_equal(s.images(ws)[0], np.asarray(Image.open(tmp_path / "proj.png")))
    pti = out["pti_losses"]
    assert len(pti) == 5 and pti[-1] < pti[0], pti  # reconstruction loss at the pivot
    tuned, tmeta = load_generator(tmp_path / "G_pti.safetensors")
    assert tmeta["pti"]["steps"] == 4 and tmeta["arch"]["G"] == json.loads(cond.with_suffix(".json").read_text())[
        "arch"]["G"]
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, g.state_dict()[k])]
    assert changed and all(k.startswith("synthesis.") for k in changed)


def test_initial_w(cond):
    g, _ = load_generator(cond)
    logs = []
    t = torch.zeros(1, 3, 16, 16)
    assert torch.equal(proj.initial_w(g, t, 2, log=logs.append), g.mapping.w_avg[2][None])
    w = proj.initial_w(g, t, None, log=logs.append)  # 3 classes: DeiT sampling does not apply
    assert torch.allclose(w, g.mapping.w_avg.mean(0, keepdim=True))
    assert any("1000 ImageNet classes" in line for line in logs) and any("mean of the per-class" in line
                                                                          for line in logs)


def test_deit_class_sampling_with_a_stub_classifier(cond):
    """SPEC 8.2's class sampling, with a stand-in classifier that is sure the target is class 2."""
    g, _ = load_generator(cond)

    class Sure(torch.nn.Module):
        def forward(self, x):
            assert x.shape == (1, 3, 224, 224)
            logits = torch.full((1, 1000), -30.0)
            logits[0, 2] = 30.0
            return logits

    w = proj.deit_w_avg(g, torch.zeros(1, 3, 16, 16), Sure(), n=64, chunk=16)
    z = torch.from_numpy(np.random.RandomState(123).randn(64, g.cfg.z_dim)).float()
    expected = g.mapping(z, torch.full((64,), 2))[:, 0].mean(0, keepdim=True)
    torch.testing.assert_close(w, expected)


def _refuse_network(*args, **kwargs):
    raise OSError("network disabled in tests")


def test_loss_selection_and_missing_weights(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    logs = []
    auto = proj.make_loss("auto", "random", logs.append, feature_size=32)
    if importlib.util.find_spec("lpips") is None:
        assert isinstance(auto, proj.FeatureLoss) and any("LPIPS not available" in line for line in logs)
        with pytest.raises(RuntimeError, match="LPIPS is not available"):
            proj.make_loss("lpips")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    loss = proj.FeatureLoss("random", 32)
    d = loss.distance(loss.embed(x), loss.embed(x.flip(0)))
    assert d.shape == (2,) and (d > 0).all()
    assert torch.equal(loss.distance(loss.embed(x), loss.embed(x)), torch.zeros(2))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(socket.socket, "connect", _refuse_network)
    with pytest.raises(RuntimeError, match="--features random"):
        proj.make_loss("features", "pretrained")
    with pytest.raises(ValueError, match="must be"):
        proj.make_loss("mse")


def test_cli_errors_are_clear(cond, target, tmp_path, capsys):
    path, _ = target

    def error(*argv):
        with pytest.raises(SystemExit) as info:
            proj.main([str(a) for a in argv])
        assert info.value.code == 2
        return capsys.readouterr().err

    base = ("--network", cond, "--outdir", tmp_path, "--steps", "2", "--features", "random", "--loss", "features")
    assert "does not exist" in error(*base, "--target", tmp_path / "missing.png")
    assert "out of range" in error(*base, "--target", path, "--class", "9")
    assert "generator file" in error("--network", tmp_path / "none.safetensors", "--target", path)
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    assert "cannot read target image" in error(*base, "--target", bad)
    assert not list(tmp_path.glob("*.png"))
