"""engine/generate.py and engine/export.py on CPU with tiny 16² generators built directly (no training)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from engine import checkpoint
from engine import generate as gen
from engine.export import export_generator, load_generator
from engine.export import main as export_main
from model.generator import build_generator

ROOT = Path(__file__).resolve().parents[2]
CLASS_NAMES = ["cat", "dog", "bird"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these tiny models gain nothing from more, and on a shared, oversubscribed
    CPU the second thread's spin-waiting makes them 10-30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_checkpoint(path: Path, c_dim: int, *, seed: int = 1, class_names: list[str] | None = None) -> Path:
    """A training-checkpoint-shaped file: tiny 16² G with populated per-class w_avg, a stand-in D part."""
    torch.manual_seed(seed)
    g = build_generator("tiny", 16, c_dim).eval()
    with torch.no_grad():  # w_avg as training would leave it (zeros in a fresh G)
        for _ in range(20):
            g.mapping(torch.randn(16, g.cfg.z_dim), torch.randint(0, c_dim, (16,)) if c_dim else None,
                      update_w_avg=True)
    meta = {"format": "stylegan-xl-engine/1", "stage": 16,
            "arch": {"G": dataclasses.asdict(g.cfg), "D": {"backbones": ["tf_efficientnet_lite0"], "c_dim": c_dim}}}
    if class_names:
        meta["class_names"] = class_names
    parts = {"G": g.state_dict(), "G_ema": g.state_dict(), "D": {"head.weight": torch.randn(4, 4)},
             "opt_G": {"0.step": torch.tensor(1.0)}}
    return checkpoint.save(path, parts, meta)


@pytest.fixture(scope="module")
def cond(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("cond") / "ck.safetensors", 3, class_names=CLASS_NAMES)


@pytest.fixture(scope="module")
def uncond(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("uncond") / "ck.safetensors", 0, seed=2)


def _sampler(path: Path, **kw) -> gen.Sampler:
    g, _ = load_generator(path)
    return gen.Sampler(g, device=torch.device("cpu"), **kw)


def _main(*argv: str) -> None:
    assert gen.main([str(a) for a in argv]) == 0


def _error(capsys, fn, *argv) -> str:
    with pytest.raises(SystemExit) as info:
        fn([str(a) for a in argv])
    assert info.value.code == 2
    return capsys.readouterr().err


# ---------------------------------------------------------------- parsing


def test_parse_ranges_and_classes():
    assert gen.parse_range("0-3,7, 10-11") == [0, 1, 2, 3, 7, 10, 11]
    assert gen.parse_range("42") == [42]
    assert gen.parse_range("", allow_empty=True) == []
    for bad in ("", "3-1", "a", "1,,2", "-1", "1-2-3"):
        with pytest.raises(ValueError):
            gen.parse_range(bad)
    with pytest.raises(ValueError, match="seeds must be in"):
        gen.parse_seeds(f"{2**32}")
    assert gen.parse_vec2("0.25,-1") == (0.25, -1.0)
    with pytest.raises(ValueError, match="two comma-separated"):
        gen.parse_vec2("1")
    assert gen.class_index("dog", 3, CLASS_NAMES) == 1 and gen.class_index("2", 3, CLASS_NAMES) == 2
    assert gen.parse_classes("bird,0-1", 3, CLASS_NAMES) == [2, 0, 1]
    with pytest.raises(ValueError, match="out of range"):
        gen.class_index("3", 3)
    with pytest.raises(ValueError, match="unknown class name 'fish'.*cat, dog, bird"):
        gen.class_index("fish", 3, CLASS_NAMES)
    with pytest.raises(ValueError, match="no class names"):
        gen.class_index("fish", 3, None)
    with pytest.raises(ValueError, match="unconditional"):
        gen.class_index("0", 0)


def test_seed_latents_follow_spec():
    z, labels = gen.seed_latents([5, 9], 64, 10)
    rs = np.random.RandomState(9)
    assert np.array_equal(z[1], rs.randn(1, 64)[0]) and labels[1] == rs.randint(10)
    assert gen.seed_latents([5, 9], 64, 10, cls=3)[1] == [3, 3]
    assert gen.seed_latents([5], 64, 0)[1] is None


# ---------------------------------------------------------------- images


def test_deterministic_and_batch_independent(cond, tmp_path):
    _main("--network", cond, "--seeds", "0-2,5", "--batch", "1", "--outdir", tmp_path / "a")
    _main("--network", cond, "--seeds", "0-2,5", "--batch", "4", "--outdir", tmp_path / "b", "--grid")
    _main("--network", cond, "--seeds", "0-2,5", "--batch", "4", "--outdir", tmp_path / "c", "--grid", "only")
    names = [f"seed{s:04d}.png" for s in (0, 1, 2, 5)]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == names
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["grid.png"] + names
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["grid.png"]  # --grid only: no per-seed files
    for name in names:  # same bytes: same uint8 images, deterministic PNG encoding
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "b/grid.png").read_bytes() == (tmp_path / "c/grid.png").read_bytes()
    grid = np.asarray(Image.open(tmp_path / "b/grid.png"))
    assert grid.shape == (32, 32, 3)  # 4 images in 2 columns, 2 rows
    assert np.array_equal(grid[16:32, 16:32], np.asarray(Image.open(tmp_path / "a/seed0005.png")))
    # A random class per image is drawn from the seed: --class <that class> gives the same image.
    _, labels = gen.seed_latents([2], 64, 3)
    _main("--network", cond, "--seeds", "2", "--class", CLASS_NAMES[labels[0]], "--outdir", tmp_path / "d")
    assert (tmp_path / "d/seed0002.png").read_bytes() == (tmp_path / "a/seed0002.png").read_bytes()


def test_script_entry_point(cond, tmp_path):
    """`python engine/generate.py` works from any folder (the repository root goes on sys.path)."""
    out = subprocess.run([sys.executable, str(ROOT / "engine/generate.py"), "--network", str(cond), "--seeds", "1",
                          "--outdir", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "seed0001.png").exists()


def test_truncation_psi0_gives_the_class_w_avg(cond, uncond):
    s = _sampler(cond, psi=0.0)
    img = s.images(s.seed_ws([0, 1, 2], cls=2))
    assert all(np.array_equal(img[0], im) for im in img[1:])
    w_avg = s.G.mapping.w_avg[2].expand(1, s.G.synthesis.num_ws, -1)
    assert np.array_equal(img[0], s.images(w_avg)[0])
    # Random classes: each image is its own class's w_avg image.
    _, labels = gen.seed_latents(range(4), 64, 3)
    img = s.images(s.seed_ws(list(range(4))))
    per_class = {c: s.images(s.G.mapping.w_avg[c].expand(1, s.G.synthesis.num_ws, -1))[0] for c in set(labels)}
    assert all(np.array_equal(img[i], per_class[c]) for i, c in enumerate(labels))
    assert len(per_class) > 1 and not np.array_equal(*list(per_class.values())[:2])
    u = _sampler(uncond, psi=0.0)  # unconditional: the global w_avg
    img = u.images(u.seed_ws([0, 5, 9]))
    assert all(np.array_equal(img[0], im) for im in img[1:])
    assert np.array_equal(img[0], u.images(u.G.mapping.w_avg.expand(1, u.G.synthesis.num_ws, -1))[0])


def test_translate_rotate(cond):
    g, _ = load_generator(cond)
    cpu = torch.device("cpu")
    ws = gen.Sampler(g, device=cpu).seed_ws([0])
    base = gen.Sampler(g, device=cpu).images(ws)
    assert np.array_equal(gen.make_transform((0, 0), 0), np.eye(3))
    same = gen.Sampler(g, device=cpu, transform=gen.make_transform((0.0, 0.0), 0.0)).images(ws)
    moved = gen.Sampler(g, device=cpu, transform=gen.make_transform((0.3, 0.0), 0.0)).images(ws)
    turned = gen.Sampler(g, device=cpu, transform=gen.make_transform((0.0, 0.0), 30.0)).images(ws)
    assert np.array_equal(same, base)
    assert not np.array_equal(moved, base) and not np.array_equal(turned, base)
    m = np.linalg.inv(gen.make_transform((0.1, 0.2), 90.0))  # SPEC 8.1's m before inversion
    np.testing.assert_allclose(m, [[0, 1, 0.1], [-1, 0, 0.2], [0, 0, 1]], atol=1e-12)
    assert np.array_equal(gen.Sampler(g, device=cpu).images(ws), base)  # a new Sampler resets the transform


# ---------------------------------------------------------------- sheets, mixing, video


def test_class_sheet_and_style_mixing(cond, tmp_path):
    _main("--network", cond, "--seeds", "0-1", "--classes", "bird,0", "--sheet", "--outdir", tmp_path)
    sheet = np.asarray(Image.open(tmp_path / "class_sheet.png"))
    assert sheet.shape == (2 * 16, 2 * 16, 3)
    _main("--network", cond, "--seeds", "0-1", "--class", "2", "--outdir", tmp_path / "bird")
    for j in range(2):  # row 0 = bird at seeds 0..1
        assert np.array_equal(sheet[:16, 16 * j:16 * (j + 1)], np.asarray(Image.open(tmp_path / f"bird/seed{j:04d}.png")))

    s = _sampler(cond)
    num_ws = s.G.synthesis.num_ws
    rows, cols, mixed = gen.style_mix(s, [0, 1], [5, 6], [], cls=1)
    assert mixed.shape == (2, 2, 16, 16, 3)
    assert all(np.array_equal(mixed[r, c], rows[r]) for r in range(2) for c in range(2))
    rows, cols, mixed = gen.style_mix(s, [0, 1], [5, 6], list(range(num_ws)), cls=1)
    assert all(np.array_equal(mixed[r, c], cols[c]) for r in range(2) for c in range(2))
    _, _, mixed = gen.style_mix(s, [0], [5], [0, 1], cls=1)
    assert not np.array_equal(mixed[0, 0], rows[0]) and not np.array_equal(mixed[0, 0], cols[0])
    with pytest.raises(ValueError, match="out of range"):
        gen.style_mix(s, [0], [5], [num_ws])
    _main("--network", cond, "--seeds", "0", "--mix-seeds", "5-6", "--mix-layers", "0-2", "--outdir", tmp_path)
    assert np.asarray(Image.open(tmp_path / "style_mix.png")).shape == (2 * 16, 3 * 16, 3)


def test_interpolation_video_mp4_and_gif_fallback(cond, tmp_path, monkeypatch):
    s = _sampler(cond)
    ws = gen.interpolation_ws(s, [0, 1, 2], [1], interp="w", frames=3)
    keys = s.seed_ws([0, 1, 2], cls=1)
    assert ws.shape[0] == 7 and torch.equal(ws[0], keys[0]) and torch.equal(ws[3], keys[1])
    torch.testing.assert_close(ws[-1], keys[2])
    zs = gen.interpolation_ws(s, [0, 1], [0, 2], interp="slerp", frames=2, loop=True)  # class changes too
    assert zs.shape[0] == 5
    torch.testing.assert_close(zs[0], s.seed_ws([0], cls=0)[0])
    torch.testing.assert_close(zs[2], s.seed_ws([1], cls=2)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="two keyframes"):
        gen.interpolation_ws(s, [0], None)

    _main("--network", cond, "--seeds", "0-2", "--class", "1", "--video", tmp_path / "v.mp4", "--frames", "2")
    frames = iio.imread(tmp_path / "v.mp4")
    assert frames.shape == (5, 16, 16, 3)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # ffmpeg missing: import fails
    assert not gen.has_ffmpeg()
    _main("--network", cond, "--seeds", "0-2", "--class", "1", "--video", tmp_path / "w.mp4", "--frames", "2")
    assert not (tmp_path / "w.mp4").exists()
    with Image.open(tmp_path / "w.gif") as gif:
        assert gif.n_frames == 5 and gif.size == (16, 16)


# ---------------------------------------------------------------- export and loading


def test_export_roundtrip_without_discriminator(cond, tmp_path, monkeypatch):
    import model.discriminator as disc
    import model.feature_networks as fn

    def refuse(*a, **k):
        raise AssertionError("the discriminator must not be built to generate")

    monkeypatch.setattr(disc.ProjectedDiscriminator, "__init__", refuse)
    monkeypatch.setattr(fn.FeatureNetwork, "__init__", refuse)
    out = export_generator(cond, tmp_path / "G.safetensors")
    parts, meta = checkpoint.load(out)
    assert list(parts) == ["G_ema"] and meta["format"] == "stylegan-xl-engine/G-1"
    assert meta["class_names"] == CLASS_NAMES and meta["arch"]["G"]["c_dim"] == 3
    assert out.stat().st_size < cond.stat().st_size
    sa, sb = _sampler(cond), _sampler(out)
    img_a, img_b = sa.images(sa.seed_ws([0, 1])), sb.images(sb.seed_ws([0, 1]))
    assert np.array_equal(img_a, img_b)
    _main("--network", out, "--seeds", "0", "--class", "dog", "--outdir", tmp_path / "x")  # names survive export
    with pytest.raises(ValueError, match="overwrite"):
        export_generator(out, out)
    assert export_main(["--network", str(cond), "--out", str(tmp_path / "G2.safetensors")]) == 0
    assert checkpoint.load(tmp_path / "G2.safetensors")[0]["G_ema"].keys() == parts["G_ema"].keys()


def _d_only(tmp_path: Path) -> Path:
    """A file of this engine's format that holds no generator weights."""
    g = build_generator("tiny", 16, 0)
    return checkpoint.save(tmp_path / "d_only.safetensors", {"D": {"w": torch.zeros(1)}},
                           {"arch": {"G": dataclasses.asdict(g.cfg)}})


def test_bad_inputs_are_clear(cond, uncond, tmp_path, capsys):
    err = _error(capsys, gen.main, "--network", tmp_path / "missing.safetensors")
    assert "does not exist" in err
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    assert "is not a checkpoint of this engine" in _error(capsys, gen.main, "--network", bad)
    assert "out of range" in _error(capsys, gen.main, "--network", cond, "--class", "7", "--outdir", tmp_path)
    assert "unconditional" in _error(capsys, gen.main, "--network", uncond, "--class", "0", "--outdir", tmp_path)
    assert "cannot parse" in _error(capsys, gen.main, "--network", cond, "--seeds", "x", "--outdir", tmp_path)
    assert "conditional" in _error(capsys, gen.main, "--network", uncond, "--sheet", "--outdir", tmp_path)
    assert "use --class" in _error(capsys, gen.main, "--network", cond, "--classes", "0-1", "--outdir", tmp_path)
    assert "holds no G_ema" in _error(capsys, export_main, "--network", _d_only(tmp_path), "--out", tmp_path / "x")
    assert not list(tmp_path.glob("*.png"))
