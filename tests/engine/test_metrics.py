"""engine/metrics.py and engine/inception.py: metric math against independent numpy/scipy code,
the protocol (determinism, rank split, statistics cache), weights handling, end to end runs.

The math tests use small random features. Protocol tests use a tiny random conv detector and a
cheap stand-in generator (FakeG); the rFID tests use the real random-init Inception-v3 with a
small input side (80 px instead of 299: about 7x cheaper on CPU, same code path; 75 px hits
a slow oneDNN path and is 10x slower than 80).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from engine import checkpoint, data, inception, metrics
from model.generator import build_generator
from tests.conftest import assert_close


class FakeG(nn.Module):
    """G's interface at no cost: cfg (resolution, z_dim, c_dim) and G(z, c, psi) -> [-1, 1] images."""

    def __init__(self, resolution: int = 16, z_dim: int = 8, c_dim: int = 3, seed: int = 0):
        super().__init__()
        self.cfg = types.SimpleNamespace(resolution=resolution, z_dim=z_dim, c_dim=c_dim)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.proj = nn.Linear(z_dim, 3 * resolution * resolution)
            self.embed = nn.Embedding(max(c_dim, 1), 3 * resolution * resolution)

    def forward(self, z, c=None, psi=1.0):
        x = self.proj(z) + (self.embed(c) if c is not None else 0)
        return torch.tanh(x).view(z.shape[0], 3, self.cfg.resolution, self.cfg.resolution)


def tiny_detector(seed: int = 0) -> inception.FeatureDetector:
    """A random conv net behind the real FeatureDetector front end: 32-d features."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
    return inception.FeatureDetector(net, name=f"tiny{seed}", feature_dim=32, size=16, resize="bilinear",
                                     offset=(127.5,) * 3, scale=(1 / 127.5,) * 3)


def synthetic(resolution: int = 16, size: int = 12) -> data.Dataset:
    return data.open_dataset(data.DatasetSpec(resolution=resolution, synthetic_size=size))


@pytest.fixture(scope="module")
def rand_inception():
    return inception.inception_v3("random", seed=0, size=80)


def small_generator():
    """The tiny preset made cheaper still (8 channels, 3 stem layers): about 0.3 s a call on CPU."""
    return build_generator("tiny", 16, 10, syn_layers=3, channel_max=8, channel_base=512, w_dim=32).eval()


# -- math ---------------------------------------------------------------------------------------------

def _np_fid(mu1, s1, mu2, s2):
    """Independent FID: Tr (S1 S2)^(1/2) = sum of sqrt eigenvalues of S1^(1/2) S2 S1^(1/2) (eigh)."""
    lam, v = np.linalg.eigh(s1)
    r = (v * np.sqrt(np.clip(lam, 0, None))) @ v.T
    tr = np.sqrt(np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr)


def test_frechet_distance_matches_numpy():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 24))
    b = rng.standard_normal((200, 24)) @ rng.uniform(0.5, 1.5, (24, 24)) / 4 + 0.3
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False, bias=True), np.cov(b, rowvar=False, bias=True)
    mu_t, s_t = metrics.feature_moments(torch.from_numpy(a).float())
    assert_close(mu_t, torch.from_numpy(mu_a), dtype=torch.float32)
    assert_close(s_t, torch.from_numpy(s_a), dtype=torch.float32)
    expected = _np_fid(mu_a, s_a, mu_b, s_b)
    assert metrics.frechet_distance(mu_a, s_a, mu_b, s_b) == pytest.approx(expected, rel=1e-9)
    assert metrics.frechet_distance(mu_a, s_a, mu_a, s_a) == pytest.approx(0, abs=1e-9)
    # Fewer generated samples than features: the exact low-rank path against the full formulas. The
    # full ones take square roots of the 14 zero eigenvalues' rounding noise (about sqrt(1e-16)
    # each), hence rel 1e-7 rather than 1e-9.
    few = torch.from_numpy(b[:10])
    mu_f, s_f = b[:10].mean(0), np.cov(b[:10], rowvar=False, bias=True)
    got = metrics.fid_from_features(torch.from_numpy(mu_a), torch.from_numpy(s_a), few)
    assert got == pytest.approx(_np_fid(mu_a, s_a, mu_f, s_f), rel=1e-7)
    assert got == pytest.approx(metrics.frechet_distance(mu_a, s_a, mu_f, s_f), rel=1e-7)


def test_kid_matches_numpy_loop():
    rng = np.random.default_rng(1)
    real, gen = rng.standard_normal((50, 16)), rng.standard_normal((40, 16)) * 1.2 + 0.1
    num_subsets, m, d = 5, 30, real.shape[1]
    draw = np.random.RandomState(7)
    total = 0.0
    for _ in range(num_subsets):
        x, y = gen[draw.choice(40, m, replace=False)], real[draw.choice(50, m, replace=False)]
        kxx = kyy = kxy = 0.0
        for i in range(m):
            for j in range(m):
                kxy += (x[i] @ y[j] / d + 1) ** 3
                if i != j:
                    kxx += (x[i] @ x[j] / d + 1) ** 3
                    kyy += (y[i] @ y[j] / d + 1) ** 3
        total += (kxx + kyy) / (m * (m - 1)) - 2 * kxy / (m * m)
    got = metrics.kid(torch.from_numpy(real), torch.from_numpy(gen), num_subsets=num_subsets, max_subset_size=m, seed=7)
    assert got == pytest.approx(total / num_subsets, rel=1e-10)


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_matches_brute_force(k):
    rng = np.random.default_rng(2)
    real, gen = rng.standard_normal((60, 8)), rng.standard_normal((50, 8)) * 1.3 + 0.4

    def coverage(probes, manifold):
        radii = np.sort(np.linalg.norm(manifold[:, None] - manifold[None], axis=-1), axis=1)[:, k]
        d = np.linalg.norm(probes[:, None] - manifold[None], axis=-1)
        return float((d <= radii[None]).any(axis=1).mean())

    p, r = metrics.precision_recall(torch.from_numpy(real), torch.from_numpy(gen), k=k, block=16, dtype=torch.float64)
    assert (p, r) == (coverage(gen, real), coverage(real, gen))
    assert 0 < p < 1 and 0 < r < 1


def test_tf1_resize_and_is_better():
    x = torch.tensor([[[[0.0, 10.0]]]])  # 1 x 2 -> 1 x 4 along the width: TF1 legacy source = i * 0.5
    y = inception._tf1_resize_axis(x, 4, dim=3)
    assert y.flatten().tolist() == [0.0, 5.0, 10.0, 10.0]
    assert metrics.is_better("fid50k_full", 1.0, 2.0) and not metrics.is_better("rfid5k_full", 2.0, 1.0)
    assert metrics.is_better("kid50k_full", 0.1, None)
    assert metrics.is_better("pr50k3_full_recall", 0.6, 0.5) and not metrics.is_better("pr50k3_full_precision", 0.4, 0.5)
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.is_better("fid", 1.0, 2.0)
    with pytest.raises(ValueError, match="two values"):
        metrics.is_better("pr50k3_full", 1.0, 2.0)


# -- protocol -----------------------------------------------------------------------------------------

def test_rfid_identical_images_zero_shifted_larger(rand_inception):
    ds = synthetic(size=12)
    real = metrics.real_stats(ds, rand_inception, max_features=12, batch=6, cache_dir=False)
    same = real.features  # the detector's features of every image, captured by the same pass
    mu, sigma = metrics.feature_moments(same)  # the streamed moments equal the direct ones
    assert_close(real.mu / mu.abs().max(), mu / mu.abs().max(), dtype=torch.float32)
    assert_close(real.sigma / sigma.abs().max(), sigma / sigma.abs().max(), dtype=torch.float32)
    images = torch.stack([torch.from_numpy(ds.get(i)[0]) for i in range(ds.num_raw)])
    with torch.no_grad():
        bright = rand_inception((images.int() + 40).clamp(max=255).to(torch.uint8))
    fid_same = metrics.fid_from_features(real.mu, real.sigma, same)
    fid_bright = metrics.fid_from_features(real.mu, real.sigma, bright)
    assert fid_bright > 0 and abs(fid_same) < 1e-6 * fid_bright


def test_real_stats_cache_hit_and_key(tmp_path, rand_inception):
    ds, det = synthetic(size=10), tiny_detector()
    calls = []
    det.register_forward_hook(lambda *_: calls.append(1))
    first = metrics.real_stats(ds, det, batch=4, cache_dir=tmp_path)
    assert len(calls) == 3 and first.features is None and first.num_items == 10
    second = metrics.real_stats(ds, det, batch=4, cache_dir=tmp_path)
    assert len(calls) == 3  # read from the cache
    torch.testing.assert_close(second.mu, first.mu)
    torch.testing.assert_close(second.sigma, first.sigma)
    more = metrics.real_stats(ds, det, max_features=6, batch=4, cache_dir=tmp_path)  # needs features: recomputed
    assert len(calls) == 6 and more.features.shape == (6, 32)
    assert metrics.real_stats(ds, det, max_features=4, batch=4, cache_dir=tmp_path).features.shape == (4, 32)
    assert len(calls) == 6 and len(list(tmp_path.iterdir())) == 1
    with torch.no_grad():
        direct = det(torch.stack([torch.from_numpy(ds.get(i)[0]) for i in range(6)]))
    assert_close(more.features, direct)

    path = metrics.cache_path(ds, rand_inception, tmp_path)
    assert path != metrics.cache_path(synthetic(resolution=32, size=10), rand_inception, tmp_path)
    assert path != metrics.cache_path(synthetic(size=11), rand_inception, tmp_path)
    other_seed = inception.inception_v3("random", seed=1, size=80)
    assert other_seed.identity != rand_inception.identity
    assert path != metrics.cache_path(ds, other_seed, tmp_path)
    assert path == metrics.cache_path(synthetic(size=10), rand_inception, tmp_path)  # a new, equal dataset


def test_file_dataset_fingerprint(tmp_path):
    """Folder: names, sizes and mtimes; zip: names, sizes and CRC-32s; a new dataset object of the
    same files has the same key, changed content a different one."""
    import zipfile

    import PIL.Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        PIL.Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    with zipfile.ZipFile(tmp_path / "imgs.zip", "w") as zf:
        for i in range(3):
            zf.write(folder / f"{i}.png", f"{i}.png")

    def key(path):
        return metrics.dataset_fingerprint(data.open_dataset(data.DatasetSpec(resolution=8, path=str(path))))

    k_folder, k_zip = key(folder), key(tmp_path / "imgs.zip")
    assert key(folder) == k_folder and key(tmp_path / "imgs.zip") == k_zip
    PIL.Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(folder / "1.png")
    with zipfile.ZipFile(tmp_path / "imgs.zip", "w") as zf:
        for i in range(3):
            zf.write(folder / f"{i}.png", f"{i}.png")
    assert key(folder) != k_folder and key(tmp_path / "imgs.zip") != k_zip


def test_generation_deterministic_and_rank_split():
    """Image i depends on (seed, i) only: ranks' shares concatenated equal one rank's run, exactly
    (same batches), for the stand-in and for a real generator."""
    G, det = FakeG(c_dim=5), tiny_detector()
    one = metrics.generated_features(G, det, 7, batch=2, seed=0)
    split = [metrics.generated_features(G, det, 7, batch=2, seed=0, rank=r, world_size=2) for r in range(2)]
    assert [s.shape[0] for s in split] == [4, 3]
    torch.testing.assert_close(torch.cat(split), one, rtol=0, atol=0)
    assert not torch.allclose(metrics.generated_features(G, det, 7, batch=2, seed=1), one)
    assert metrics.generated_features(G, det, 3, batch=3, seed=0, rank=3, world_size=4).shape == (0, 32)

    G = small_generator()
    one = metrics.generated_features(G, det, 4, batch=2, seed=0)
    second = metrics.generated_features(G, det, 4, batch=2, seed=0, rank=1, world_size=2)
    torch.testing.assert_close(second, one[2:], rtol=0, atol=0)


def test_generated_images_protocol():
    G = FakeG(c_dim=5)
    seen = []
    G.register_forward_hook(lambda m, args, out: seen.append(args[1]))
    images = torch.cat(list(metrics.generated_images(G, 10, batch=4, seed=3)))
    assert images.dtype == torch.uint8 and images.shape == (10, 3, 16, 16)
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(10, 8, generator=gen)
    c = torch.randint(0, 5, (10,), generator=gen)
    assert torch.equal(torch.cat(seen), c) and [s.shape[0] for s in seen] == [4, 4, 2]
    expected = (G(z, c).float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    assert torch.equal(images, expected)


def test_cpu_generation_chunks_do_not_change_images(monkeypatch):
    """On a CPU, G runs at most CPU_G_CHUNK images per forward; the images are those of one big batch."""
    G = small_generator()
    monkeypatch.setattr(metrics, "CPU_G_CHUNK", 3)
    seen = []
    handle = G.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    chunked = torch.cat(list(metrics.generated_images(G, 7, batch=64, seed=0)))
    handle.remove()
    assert seen == [3, 3, 1]
    monkeypatch.setattr(metrics, "CPU_G_CHUNK", 64)
    whole = torch.cat(list(metrics.generated_images(G, 7, batch=64, seed=0)))
    assert (chunked.int() - whole.int()).abs().max() <= 1  # float summation order only


# -- weights ------------------------------------------------------------------------------------------

def test_missing_weights_raise_helpful_error(tmp_path, monkeypatch):
    monkeypatch.delenv(inception.INCEPTION_ENV, raising=False)
    monkeypatch.delenv(inception.VGG16_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(RuntimeError) as err:
        inception.inception_v3()
    msg = str(err.value)
    for needle in ("inception_weights=", "--inception-weights", inception.INCEPTION_ENV, "rfid50k_full",
                   "pt_inception-2015-12-05", str(tmp_path / "hub" / "checkpoints"), "weights_only"):
        assert needle in msg
    with pytest.raises(RuntimeError, match=inception.INCEPTION_ENV):
        metrics.compute_metric("fid50k_full", FakeG(), synthetic(), cache_dir=tmp_path, progress=False)
    with pytest.raises(RuntimeError, match="vgg16_weights='random'"):
        metrics.compute_metric("pr50k3_full", FakeG(), synthetic(), cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="existing file"):
        inception.inception_v3(tmp_path / "nope.pth")


def test_weights_files(tmp_path, monkeypatch):
    """A torchvision state dict (.safetensors, with AuxLogits) via the environment variable, the
    1008-class TF 2015 conversion (.pth) with its blocks, and a refused pickled module."""
    tv = torchvision.models.Inception3(aux_logits=True, init_weights=False).eval()
    sd = tv.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "tv.safetensors"))
    monkeypatch.setenv(inception.INCEPTION_ENV, str(tmp_path / "tv.safetensors"))
    det = inception.inception_v3(size=80)
    assert det.name == "inception_v3-torchvision"
    images = torch.randint(0, 256, (2, 3, 20, 20), dtype=torch.uint8)
    tv.fc = nn.Identity()
    with torch.no_grad():
        expected = tv(inception.resize_images(images.float(), 80, "tf1") / 127.5 - 1)
        got = det(images)
    unit = expected.abs().max()  # torch's default init gives features of about 1e-7: compare relative
    assert_close(got / unit, expected / unit)

    sd15 = dict(sd, **{"fc.weight": torch.randn(1008, 2048), "fc.bias": torch.zeros(1008)})
    torch.save({k: v for k, v in sd15.items() if not k.startswith("AuxLogits.")}, tmp_path / "pt_inception.pth")
    det15 = inception.inception_v3(tmp_path / "pt_inception.pth", size=80)
    assert det15.name == "inception_v3-tf2015" and isinstance(det15.net.Mixed_7c, inception._TF2015InceptionE)
    assert det15.identity != det.identity
    with torch.no_grad():
        got15 = det15(images)
    assert got15.shape == (2, 2048) and not torch.allclose(got15 / unit, got / unit, atol=1e-3)  # other pools

    torch.save(nn.Linear(2, 2), tmp_path / "module.pth")  # a pickled module, not a state dict
    with pytest.raises(ValueError, match="weights_only"):
        inception.inception_v3(tmp_path / "module.pth")


# -- end to end ---------------------------------------------------------------------------------------

def test_compute_metric_rfid_end_to_end(tmp_path, rand_inception):
    spec = data.DatasetSpec(resolution=32, synthetic_size=12)  # opened at G's 16 px
    out = metrics.compute_metric("rfid5k_full", small_generator(), spec, num_gen=6, batch=6, cache_dir=tmp_path,
                                 detector_size=80, progress=False)
    assert list(out) == ["rfid5k_full"] and math.isfinite(out["rfid5k_full"]) and out["rfid5k_full"] > 0
    (cached,) = tmp_path.iterdir()
    assert "16px-inception_v3-random-seed0" in cached.name
    # The random Inception built inside is the fixture's: same seed, same weights, same cache file.
    assert cached == metrics.cache_path(synthetic(size=12), rand_inception, tmp_path)


def test_compute_metric_kid_pr(tmp_path):
    G, ds, det = FakeG(), synthetic(size=20), tiny_detector()
    out = metrics.compute_metric("kid50k_full", G, ds, num_gen=12, batch=5, cache_dir=tmp_path, detector=det,
                                 progress=False)
    assert list(out) == ["kid50k_full"] and math.isfinite(out["kid50k_full"])
    pr = metrics.compute_metric("pr50k3_full", G, ds, num_gen=12, batch=5, cache_dir=tmp_path, detector=det,
                                progress=False)
    assert list(pr) == ["pr50k3_full_precision", "pr50k3_full_recall"]
    assert all(0 <= v <= 1 for v in pr.values())
    same = metrics.compute_metric("pr50k3_full", G, ds, num_gen=12, batch=5, cache_dir=tmp_path, detector=det,
                                  progress=False)
    assert same == pr  # deterministic by seed, cached real features


def test_cli(tmp_path, capsys):
    G = small_generator()
    meta = {"arch": {"G": dataclasses.asdict(G.cfg)}, "config": {"data": None, "seed": 0}}
    path = checkpoint.save(tmp_path / "net.safetensors", {"G_ema": G.state_dict()}, meta)
    out = metrics.main(["--network", str(path), "--metrics", "rfid5k_full", "--num-gen", "4", "--batch", "4",
                        "--max-images", "6", "--detector-size", "80", "--cache-dir", str(tmp_path / "cache"),
                        "--workers", "0", "--device", "cpu"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["results"] == out["results"] and math.isfinite(out["results"]["rfid5k_full"])
    assert printed["rfid_seed"] == 0 and "inception_v3-random-seed0" in printed["detectors"]["rfid5k_full"]
    assert printed["num_images"] == 6 and printed["resolution"] == 16


def _rank_worker(rank: int, world_size: int, tmp: str) -> None:
    """One rank of test_process_group: the three metric kinds over gloo, results to <tmp>/<rank>.json."""
    torch.set_num_threads(1)  # two ranks share the test machine's cores
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=world_size)
    try:
        G, det, ds = FakeG(), tiny_detector(), synthetic(size=10)
        out = {}
        for name in ("rfid5k_full", "kid50k_full", "pr50k3_full"):
            out |= metrics.compute_metric(name, G, ds, num_gen=7, batch=2, rank=rank, world_size=world_size,
                                          cache_dir=f"{tmp}/cache", detector=det, progress=False)
        with open(f"{tmp}/{rank}.json", "w") as f:
            json.dump(out, f)
    finally:
        torch.distributed.destroy_process_group()


def test_process_group(tmp_path):
    """Two gloo ranks (moments all-reduced, features gathered, values broadcast) give one rank's values."""
    torch.multiprocessing.spawn(_rank_worker, args=(2, str(tmp_path)), nprocs=2)
    G, det, ds = FakeG(), tiny_detector(), synthetic(size=10)
    expected = {}
    for name in ("rfid5k_full", "kid50k_full", "pr50k3_full"):
        expected |= metrics.compute_metric(name, G, ds, num_gen=7, batch=2, cache_dir=False, detector=det,
                                           progress=False)
    for rank in range(2):
        got = json.loads((tmp_path / f"{rank}.json").read_text())
        assert got == pytest.approx(expected, rel=1e-5)
    assert len(list((tmp_path / "cache").iterdir())) == 1  # written once, by rank 0
