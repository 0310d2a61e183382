"""Issue 7 end to end, as the README shows it: from a checkpoint trained by the quick-start path
(tiny preset, built-in data, CPU, rFID at every snapshot), generate a seeded grid and a short
interpolation video, invert one generated image, export the generator, and import a pickle in
the original's format whose images match.

The training run is the quick start's at test size (2 ticks of 8 images; a small rFID variant so
the metric takes seconds). The CLIs run in-process through their main().
"""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch

from engine import export, generate, import_official, project
from engine.config import TrainConfig
from engine.loop import train_stage
from tests.engine import official_pickle

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from engine import metrics

    run = tmp_path_factory.mktemp("quickstart")
    spec = metrics.MetricSpec(kind="fid", detector="inception_random", num_gen=64, size=80)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SGXL_METRICS_CACHE", str(run / "cache"))
        mp.setitem(metrics.METRICS, "rfid64_80", spec)
        cfg = TrainConfig(stage=16, run_dir=str(run), preset="tiny", batch=4, batch_gpu=2, tick=0.008, snap=1, kimg=1,
                          max_ticks=2, d_backbones=("tf_efficientnet_lite0",), d_weights="random", compile="off",
                          workers=0, seed=1, backend="plain", metrics=("rfid64_80",))
        train_stage(cfg, torch.device("cpu"), log=lambda *a: None)
    return run / "stage16"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_rfid_at_snapshots(trained):
    stats = [json.loads(line) for line in (trained / "stats.jsonl").read_text().splitlines()]
    assert [s["tick"] for s in stats] == [1, 2] and all(np.isfinite(s["metric_rfid64_80"]) for s in stats)
    best = json.loads((trained / "best.json").read_text())
    assert best["progress"]["best_metric"] == min(s["metric_rfid64_80"] for s in stats)
    assert best["class_names"] and len(best["class_names"]) == best["arch"]["G"]["c_dim"]


def test_seeded_grid_and_video(trained, tmp_path):
    ckpt = str(trained / "best.safetensors")
    for run in ("a", "b"):
        assert generate.main(["--network", ckpt, "--seeds", "0-7", "--class", "3", "--trunc", "0.7", "--grid", "only",
                              "--outdir", str(tmp_path / run), "--device", "cpu"]) == 0
    grids = [sorted((tmp_path / run).glob("*.png")) for run in ("a", "b")]
    assert len(grids[0]) == 1 and grids[0][0].read_bytes() == grids[1][0].read_bytes()  # same seeds, same grid
    img = np.asarray(PIL.Image.open(grids[0][0]))
    assert img.ndim == 3 and img.shape[2] == 3 and img.std() > 0
    video = tmp_path / "interp.mp4"
    assert generate.main(["--network", ckpt, "--seeds", "0-2", "--video", str(video), "--frames", "4",
                          "--device", "cpu"]) == 0
    written = video if video.exists() else video.with_suffix(".gif")
    assert written.stat().st_size > 1000


def test_invert_a_generated_image(trained, tmp_path):
    ckpt = str(trained / "best.safetensors")
    assert generate.main(["--network", ckpt, "--seeds", "5", "--class", "2", "--outdir", str(tmp_path / "t"),
                          "--device", "cpu"]) == 0
    target = next((tmp_path / "t").glob("*.png"))
    out = tmp_path / "proj"
    assert project.main(["--network", ckpt, "--target", str(target), "--outdir", str(out), "--steps", "30",
                         "--class", "2", "--loss", "features", "--features", "random", "--feature-size", "64",
                         "--mse", "10", "--device", "cpu"]) == 0
    assert (out / "proj.png").exists() and (out / "projected_w.safetensors").exists()
    proj = np.asarray(PIL.Image.open(out / "proj.png")).astype(np.float64)
    tgt = np.asarray(PIL.Image.open(target)).astype(np.float64)
    assert proj.shape == tgt.shape and np.abs(proj - tgt).mean() < 128
    # The projected ws render again through generate --ws (the editing path).
    assert generate.main(["--network", ckpt, "--ws", str(out / "projected_w.safetensors"), "--outdir",
                          str(tmp_path / "again"), "--device", "cpu"]) == 0
    again = np.asarray(PIL.Image.open(tmp_path / "again/ws00.png")).astype(np.float64)
    assert np.abs(again - proj).max() <= 1
    with pytest.raises(SystemExit):  # not a ws file: a clear error, exit status 2
        generate.main(["--network", ckpt, "--ws", str(target), "--outdir", str(tmp_path / "bad"), "--device", "cpu"])


def test_export_and_import_of_an_original_pickle(trained, tmp_path):
    """The trained G_ema written as the original's pickle (test-only writer) converts back to a
    generator with the same images; the exported inference file loads without D."""
    g, _ = export.load_generator(trained / "best.safetensors", "cpu")
    exported = export.export_generator(trained / "best.safetensors", tmp_path / "G.safetensors")
    g2, _ = export.load_generator(exported, "cpu")
    pkl = tmp_path / "network-snapshot.pkl"
    official_pickle.dump(official_pickle.snapshot(g), pkl)
    converted = import_official.import_official(pkl, tmp_path / "imported.safetensors")
    g3, _ = export.load_generator(converted, "cpu")
    z = torch.randn(4, g.cfg.z_dim, generator=torch.Generator().manual_seed(0))
    c = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        ref = g(z, c, psi=0.7)
        for other in (g2, g3):
            torch.testing.assert_close(other(z, c, psi=0.7), ref, rtol=0, atol=1e-6)
