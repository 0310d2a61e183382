"""Datasets and loaders: sources and labels, resize like the dataset tool, mirror, bad files,
synthetic data, sharding, resume, and DALI against the torch path.

Legend: img_HWC / img_CHW uint8 image, images_NCHW uint8 batch, labels_N int64.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

from engine import synthetic
from engine.data import DatasetSpec, open_dataset, sample_labels
from engine.loader import dali_available, make_loader
from tests.conftest import gpu

needs_dali = pytest.mark.skipif(not dali_available(), reason="nvidia.dali (and its PyTorch plugin) is not importable")


@pytest.fixture(autouse=True)
def scan_cache(tmp_path_factory, monkeypatch):
    """The open-time scan's cache (engine/datascan.py) in a fresh folder, not the home folder."""
    path = tmp_path_factory.mktemp("datascan")
    monkeypatch.setenv("SGXL_DATA_CACHE", str(path))
    return path


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """img_HWC uint8: smooth waves plus one hard-edged disc, like a photo more than noise."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([127 + 100 * np.sin(xx * (7 + seed) + c) * np.cos(yy * 5 - c) for c in range(3)], -1)
    img += 40 * ((xx - 0.5) ** 2 + (yy - 0.4) ** 2 < 0.06)[..., None]
    return img.clip(0, 255).astype(np.uint8)


def encode(img: PIL.Image.Image | np.ndarray, fmt: str = "PNG", **save_args) -> bytes:
    buf = io.BytesIO()
    (PIL.Image.fromarray(img) if isinstance(img, np.ndarray) else img).save(buf, format=fmt, **save_args)
    return buf.getvalue()


def tool_reference(data: bytes, res: int) -> np.ndarray:
    """The original dataset tool: RGB (over white), numpy center crop, PIL Lanczos; img_CHW."""
    img = PIL.Image.open(io.BytesIO(data))
    if img.mode == "RGBA":
        white = PIL.Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = PIL.Image.alpha_composite(white, img)
    arr = np.asarray(img.convert("RGB"))
    crop = min(arr.shape[:2])
    h, w = arr.shape[:2]
    arr = arr[(h - crop) // 2 : (h + crop) // 2, (w - crop) // 2 : (w + crop) // 2]
    return np.asarray(PIL.Image.fromarray(arr).resize((res, res), PIL.Image.LANCZOS)).transpose(2, 0, 1)


@pytest.fixture
def class_folder(tmp_path):
    """ImageNet layout: 3 classes, PNG and JPEG, various sizes."""
    root = tmp_path / "classes"
    counts = {"zebra": 3, "ant": 2, "moth": 4}
    for k, (cls, n) in enumerate(counts.items()):
        (root / cls).mkdir(parents=True)
        for j in range(n):
            ext = "jpg" if j % 2 else "png"
            img = smooth_image(20 + 7 * j, 24 + 5 * k, j)
            (root / cls / f"im{j}.{ext}").write_bytes(encode(img, "JPEG" if ext == "jpg" else "PNG"))
    return root


def write_stylegan(path, labels: list[int] | None, *, as_zip: bool = True, json_null: bool = False):
    """StyleGAN layout `{idx//1000:05d}/img{idx:08d}.png` (+ dataset.json) as a zip or a folder."""
    files = {f"{i // 1000:05d}/img{i:08d}.png": encode(smooth_image(16, 16, i)) for i in range(len(labels or [0] * 5))}
    if labels is not None or json_null:
        table = None if json_null else [[name, int(c)] for name, c in zip(files, labels)]
        files["dataset.json"] = json.dumps({"labels": table}).encode()
    if as_zip:
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
    else:
        for name, data in files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
    return path


def test_class_folders_give_sorted_labels(class_folder):
    ds = open_dataset(DatasetSpec(path=str(class_folder), resolution=16, cond=True))
    assert ds.class_names == ("ant", "moth", "zebra") and ds.c_dim == 3 and len(ds) == 9
    assert ds.label_histogram.tolist() == [2, 4, 3]
    for i in range(len(ds)):
        assert ds.class_names[ds.get(i)[1]] == ds.file_name(i).split("/")[0]
    assert make_loader(ds, batch_size=2).backend == ("dali" if dali_available() else "torch")  # auto
    uncond = open_dataset(DatasetSpec(path=str(class_folder), resolution=16, cond=False))
    assert uncond.c_dim == 0 and uncond.labels.tolist() == [0] * 9 and uncond.label_histogram.size == 0


def test_unlabeled_folder_and_cond_error(tmp_path):
    (tmp_path / "nested").mkdir()
    (tmp_path / "a.png").write_bytes(encode(smooth_image(10, 12)))
    (tmp_path / "nested" / "b.jpeg").write_bytes(encode(smooth_image(12, 10), "JPEG"))
    (tmp_path / "notes.txt").write_text("not an image")
    ds = open_dataset(DatasetSpec(path=str(tmp_path), resolution=8))
    assert len(ds) == 2 and ds.c_dim == 0 and [ds.file_name(i) for i in range(2)] == ["a.png", "nested/b.jpeg"]
    with pytest.raises(ValueError, match="needs class labels"):
        open_dataset(DatasetSpec(path=str(tmp_path), resolution=8, cond=True))


@pytest.mark.parametrize("as_zip", [True, False], ids=["zip", "folder"])
def test_stylegan_layout_labels(tmp_path, as_zip):
    labels = [3, 0, 1, 3, 1]
    path = tmp_path / ("d.zip" if as_zip else "d")
    if not as_zip:
        path.mkdir()
    write_stylegan(path, labels, as_zip=as_zip)
    ds = open_dataset(DatasetSpec(path=str(path), resolution=16, cond=True))
    assert ds.c_dim == 4 and ds.labels.tolist() == labels and ds.label_histogram.tolist() == [1, 2, 0, 2]
    assert [ds.get(i)[1] for i in range(5)] == labels
    img_CHW, _ = ds.get(2)
    assert np.array_equal(img_CHW, smooth_image(16, 16, 2).transpose(2, 0, 1))  # 16² at 16: untouched


@pytest.mark.parametrize("json_null", [False, True], ids=["no-json", "labels-null"])
def test_stylegan_zip_without_labels(tmp_path, json_null):
    path = write_stylegan(tmp_path / "d.zip", None, json_null=json_null)
    ds = open_dataset(DatasetSpec(path=str(path), resolution=8))
    assert len(ds) == 5 and ds.c_dim == 0
    with pytest.raises(ValueError, match="needs class labels"):
        open_dataset(DatasetSpec(path=str(path), resolution=8, cond=True))


def test_stylegan_json_missing_label_is_an_error(tmp_path):
    path = write_stylegan(tmp_path / "d.zip", [0, 1, 2, 0, 1])
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("00000/img00000099.png", encode(smooth_image(8, 8)))
    with pytest.raises(ValueError, match="no label for '00000/img00000099.png'"):
        open_dataset(DatasetSpec(path=str(path), resolution=8, cond=True))


@pytest.mark.parametrize("res", [16, 32])
def test_resize_matches_dataset_tool(tmp_path, res):
    sizes = [(30, 50), (50, 30), (33, 33), (200, 120), (9, 14), (res, res + 1)]
    for k, (h, w) in enumerate(sizes):
        (tmp_path / f"{k}.png").write_bytes(encode(smooth_image(h, w, k)))
    ds = open_dataset(DatasetSpec(path=str(tmp_path), resolution=res))
    for i in range(len(ds)):
        img_CHW, _ = ds.get(i)
        assert img_CHW.shape == (3, res, res) and img_CHW.dtype == np.uint8
        assert np.array_equal(img_CHW, tool_reference((tmp_path / ds.file_name(i)).read_bytes(), res))


def test_rgba_over_white_and_grayscale(tmp_path):
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[:, :8] = (255, 0, 0, 255)  # left half opaque red, right half fully transparent black
    (tmp_path / "a.png").write_bytes(encode(rgba))
    (tmp_path / "b.png").write_bytes(encode(smooth_image(16, 16)[..., 0]))  # mode L
    ds = open_dataset(DatasetSpec(path=str(tmp_path), resolution=16))
    img_CHW = ds.get(0)[0]
    assert (img_CHW[:, :, :8] == np.array([255, 0, 0])[:, None, None]).all() and (img_CHW[:, :, 8:] == 255).all()
    gray_CHW = ds.get(1)[0]
    assert np.array_equal(gray_CHW[0], smooth_image(16, 16)[..., 0]) and (gray_CHW == gray_CHW[:1]).all()


def test_mirror_doubles_with_flipped_copies(class_folder):
    ds = open_dataset(DatasetSpec(path=str(class_folder), resolution=16, cond=True, mirror=True))
    assert len(ds) == 18 and ds.num_raw == 9 and ds.label_histogram.tolist() == [2, 4, 3]
    for i in range(9):
        (a, la), (b, lb) = ds.get(i), ds.get(9 + i)
        assert la == lb and np.array_equal(b, a[:, :, ::-1]) and not np.array_equal(a, b)
    with pytest.raises(IndexError):
        ds.get(18)


def write_bad_files(root):
    for k in range(3):
        (root / f"good{k}.png").write_bytes(encode(smooth_image(12, 12, k)))
    (root / "garbage.png").write_bytes(b"definitely not a PNG")
    (root / "truncated.png").write_bytes(encode(smooth_image(64, 64))[:200])


def test_bad_files_are_named_or_skipped(tmp_path):
    write_bad_files(tmp_path)
    with pytest.raises(ValueError, match="garbage.png"):
        open_dataset(DatasetSpec(path=str(tmp_path), resolution=8))
    # The scan decodes every file ("header" is the old name of the same scan): the truncated one is found too.
    for check in ("decode", "header"):
        ds = open_dataset(DatasetSpec(path=str(tmp_path), resolution=8, skip_bad=True, check=check))
        assert len(ds) == 3 and ds.num_skipped == 2 and set(ds.skipped_files) == {"garbage.png", "truncated.png"}


def test_too_few_images_and_bad_arguments(class_folder, tmp_path):
    with pytest.raises(ValueError, match="9 images, fewer than the 16 needed"):
        open_dataset(DatasetSpec(path=str(class_folder), resolution=16), min_images=16)
    with pytest.raises(ValueError, match="missing.zip does not exist"):
        open_dataset(DatasetSpec(path=str(tmp_path / "missing.zip"), resolution=16))
    (class_folder / "empty").mkdir()
    with pytest.raises(ValueError, match="'empty' holds no images"):
        open_dataset(DatasetSpec(path=str(class_folder), resolution=16))
    with pytest.raises(ValueError, match="check"):
        DatasetSpec(resolution=16, check="full")
    with pytest.raises(ValueError, match="resolution"):
        DatasetSpec(resolution=1)


def test_max_images_is_a_seeded_subset(class_folder):
    a = open_dataset(DatasetSpec(path=str(class_folder), resolution=8, max_images=4, seed=1))
    b = open_dataset(DatasetSpec(path=str(class_folder), resolution=8, max_images=4, seed=1))
    names = [a.file_name(i) for i in range(4)]
    assert len(a) == 4 and names == [b.file_name(i) for i in range(4)] and names == sorted(names)


@pytest.mark.parametrize("res", [16, 32, 64, 256])
def test_synthetic_any_resolution_deterministic(res):
    ds = open_dataset(DatasetSpec(resolution=res, cond=True, synthetic_size=30))
    assert ds.c_dim == synthetic.NUM_CLASSES == 10 and ds.label_histogram.tolist() == [3] * 10
    img_CHW, label = ds.get(13)
    assert img_CHW.shape == (3, res, res) and img_CHW.dtype == np.uint8 and label == 3
    assert np.array_equal(img_CHW, open_dataset(DatasetSpec(resolution=res, synthetic_size=30)).get(13)[0])
    other = open_dataset(DatasetSpec(resolution=res, synthetic_size=30, seed=1)).get(13)[0]
    assert np.abs(img_CHW.astype(int) - other).mean() > 5  # another seed draws another image
    assert img_CHW.std() > 10  # not a flat image


def test_synthetic_content_is_resolution_independent_and_cheap():
    # 200 images at 64² (about 2 ms each here): one dataset serves every stage, so image i at 32²
    # is close to image i at 64² box-filtered to 32².
    imgs = [synthetic.render(0, i, 64)[0] for i in range(200)]
    assert len({img.tobytes() for img in imgs}) == 200
    for i in range(0, 200, 25):
        small = synthetic.render(0, i, 32)[0].astype(float)
        down = imgs[i].astype(float).reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
        assert np.abs(small - down).mean() < 3.0


def test_loader_shards_are_disjoint():
    ds = open_dataset(DatasetSpec(resolution=16, synthetic_size=41))  # 41 items: one left over per epoch
    seen = []
    for rank in range(2):
        loader = make_loader(ds, batch_size=4, rank=rank, world_size=2, seed=3, backend="torch")
        batches = [next(loader) for _ in range(5)]  # 20 items: one epoch of this rank's shard
        assert all(x.shape == (4, 3, 16, 16) and x.dtype == torch.uint8 and y.dtype == torch.int64 for x, y in batches)
        seen.append({img.numpy().tobytes() for x, _ in batches for img in x})
        assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["index"] == 0
    assert len(seen[0]) == len(seen[1]) == 20 and not seen[0] & seen[1]


@pytest.mark.parametrize("backend,workers", [("torch", 0), ("torch", 2), pytest.param("dali", 0, marks=needs_dali)])
def test_loader_resume_gives_the_same_next_batch(class_folder, backend, workers):
    ds = open_dataset(DatasetSpec(path=str(class_folder), resolution=16, cond=True, mirror=True))
    first = make_loader(ds, batch_size=5, seed=7, backend=backend, num_workers=workers)
    assert first.backend == backend
    for _ in range(3):  # 15 of 18 items: the next batch straddles the epoch boundary
        next(first)
    state = json.loads(json.dumps(first.state_dict()))  # checkpoints store it as JSON
    expected = [next(first) for _ in range(2)]
    second = make_loader(ds, batch_size=5, seed=7, backend=backend, num_workers=workers)
    next(second)  # running already: load_state_dict restarts it
    second.load_state_dict(state)
    for (x, y), (ex, ey) in zip([next(second) for _ in range(2)], expected):
        assert torch.equal(x, ex) and torch.equal(y, ey)
    assert state["epoch"] == 0 and state["index"] == 15 and first.state_dict()["index"] == 7
    with pytest.raises(ValueError, match="loader state is for 18 items"):
        make_loader(ds, batch_size=5, seed=8, backend=backend).load_state_dict(state)
    first.close(), second.close()


def test_sample_labels_follow_histogram():
    gen = torch.Generator().manual_seed(0)
    labels_N = sample_labels(np.array([0, 30, 10]), 4000, generator=gen)
    counts = torch.bincount(labels_N, minlength=3)
    assert counts[0] == 0 and 2.6 < counts[1] / counts[2] < 3.4
    assert sample_labels(np.zeros(0, dtype=np.int64), 3).tolist() == [0, 0, 0]


def files_one_per_class(root, res):
    """One file per class folder, so that labels name the file. Returns [(file bytes, no resize)].
    Case 1 carries an EXIF rotation tag, which neither PIL nor the dataset tool applies."""
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    alpha = np.tile(np.arange(res, dtype=np.uint8)[None, :, None] * 9, (res, 1, 1))
    rgba = np.concatenate([smooth_image(res, res, 1), alpha], -1)
    palette = [PIL.Image.fromarray(smooth_image(side, side, k)).convert("P") for side, k in ((res, 4), (70, 8))]
    cases = [("png", smooth_image(res, res)), ("jpg", smooth_image(res, res + 3, 2)),
             ("png", smooth_image(res, res, 3)[..., 0]), ("png", palette[0]), ("png", rgba),
             ("png", smooth_image(50, 37, 5)), ("jpg", smooth_image(3 * res, 2 * res, 6)),
             ("png", smooth_image(res // 2, res, 7)), ("png", palette[1])]
    out = []
    for k, (ext, img) in enumerate(cases):
        data = encode(img, "JPEG" if ext == "jpg" else "PNG", **({"exif": exif} if k == 1 else {}))
        (root / f"{k:02d}").mkdir()
        (root / f"{k:02d}" / f"img.{ext}").write_bytes(data)
        out.append((data, min(PIL.Image.open(io.BytesIO(data)).size) == res))
    return out


@needs_dali
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=gpu)])
def test_dali_pipeline_matches_torch_path(tmp_path, device):
    """DALI decodes, center crops and resizes like PIL. Files that need no resize (PNG, JPEG,
    grayscale, palette, RGBA, non-square) match exactly, flipped copies too. Resized files differ
    by PIL's uint8 rounding between its horizontal and vertical Lanczos passes and its edge
    handling (DALI computes in float, within 0.5 of a float64 Lanczos-3 reference): on these
    smooth images at most 8 levels (hard-edged palette images) and under 0.5 on average.
    On CUDA ("mixed") JPEGs are decoded by nvJPEG, whose IDCT may round differently: 2 levels."""
    res = 32
    files = files_one_per_class(tmp_path, res)
    ds = open_dataset(DatasetSpec(path=str(tmp_path), resolution=res, cond=True, mirror=True))
    batches = {}
    for backend in ("torch", "dali"):
        loader = make_loader(ds, batch_size=len(ds), seed=5, backend=backend, device=device)
        batches[backend] = next(loader)
        loader.close()
    (x, lx), (y, ly) = batches["torch"], batches["dali"]
    assert torch.equal(lx, ly) and x.shape == y.shape == (18, 3, res, res) and y.dtype == torch.uint8
    assert y.device.type == device
    diff_N = (x.int() - y.int()).abs().flatten(1).cpu()
    for i, label in enumerate(lx.tolist()):
        if files[label][1]:
            jpeg_on_gpu = device == "cuda" and ds.file_name(label).endswith(".jpg")
            assert diff_N[i].max() <= (2 if jpeg_on_gpu else 0), f"file {label} differs without a resize"
        else:
            assert diff_N[i].max() <= 8 and diff_N[i].float().mean() < 0.5, f"file {label}"
    assert (diff_N.amax(1) > 0).any()  # the resized files do go through DALI's own resize


@needs_dali
def test_dali_synthetic_matches_torch_and_names_bad_files(tmp_path):
    ds = open_dataset(DatasetSpec(resolution=16, cond=True, mirror=True, synthetic_size=12))
    (x, lx), (y, ly) = (next(make_loader(ds, batch_size=8, seed=2, backend=b)) for b in ("torch", "dali"))
    assert torch.equal(x, y) and torch.equal(lx, ly)
    write_bad_files(tmp_path)
    (tmp_path / "garbage.png").unlink()
    (tmp_path / "truncated.png").write_bytes(encode(smooth_image(64, 64)))
    files = open_dataset(DatasetSpec(path=str(tmp_path), resolution=8))
    assert make_loader(files, batch_size=4).backend == "dali" and make_loader(ds, batch_size=4).backend == "torch"
    (tmp_path / "truncated.png").write_bytes(encode(smooth_image(64, 64))[:200])  # damaged after the scan
    with pytest.raises(ValueError, match="truncated.png"):
        loader = make_loader(files, batch_size=4, backend="dali")
        for _ in range(3):
            next(loader)
