"""Data checks before training (issue 12): every PIL mode (16-bit included) converted right on
both paths, the open-time decode scan and its cache, bad files skipped at open and at read,
and clear messages for missing, unsupported and damaged paths.

Legend: img_HWC / img_CHW uint8 image, v16_HW / v16_HWC uint16 pixel values.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import warnings
import zlib

import numpy as np
import PIL.Image
import pytest
import torch

from engine import datascan
from engine.data import DatasetSpec, open_dataset, to_rgb
from engine.loader import make_loader
from tests.engine.test_data import encode, needs_dali, scan_cache, smooth_image, write_stylegan  # noqa: F401


def png16(v16: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG written chunk by chunk (Pillow cannot write 48-bit RGB): v16 is [H, W] for grey
    (colour type 0) or [H, W, C] for LA (4), RGB (2), RGBA (6)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w = v16.shape[:2]
    rows = b"".join(b"\x00" + v16[y].astype(">u2").tobytes() for y in range(h))  # filter 0 per row
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def decoded_dali_input(ds, raw: int) -> np.ndarray:
    """What DALI is fed for raw image `raw`, decoded back with PIL: img_HWC."""
    return np.asarray(PIL.Image.open(io.BytesIO(ds.dali_input(raw).tobytes())).convert("RGB"))


def levels16(h: int, w: int, channels: int = 0) -> np.ndarray:
    """v16: every 16-bit value of interest, 0, 255, 256, 4096, 32767, 32768, 65280, 65535, tiled."""
    values = np.array([0, 255, 256, 4096, 32767, 32768, 65280, 65535], dtype=np.uint16)
    shape = (h, w, channels) if channels else (h, w)
    return values[np.arange(np.prod(shape)).reshape(shape) % len(values)]


def test_16bit_grey_and_rgb_pngs_are_scaled_not_clipped(tmp_path):
    """Pillow reads 48-bit RGB (and 64-bit RGBA) PNGs as 8-bit RGB by the high byte and 16-bit grey
    as I;16; to_rgb scales I;16 the same way (v >> 8: 32768 -> 128, not 255). load() and the
    DALI input (re-encoded as 8-bit PNG, never the 16-bit file itself) agree exactly."""
    grey16, rgb16 = levels16(6, 6), levels16(6, 6, 3)
    rgba16 = np.concatenate([rgb16, np.full((6, 6, 1), 65535, np.uint16)], -1)
    (tmp_path / "a_grey16.png").write_bytes(encode(PIL.Image.fromarray(grey16)))  # Pillow writes I;16
    (tmp_path / "b_rgb16.png").write_bytes(png16(rgb16, 2))
    (tmp_path / "c_rgba16.png").write_bytes(png16(rgba16, 6))
    assert PIL.Image.open(tmp_path / "a_grey16.png").mode == "I;16"
    ds = open_dataset(DatasetSpec(path=str(tmp_path), resolution=6))
    expected = [np.repeat((grey16 >> 8)[..., None], 3, -1), rgb16 >> 8, rgb16 >> 8]
    for raw, want in enumerate(expected):
        img_HWC = ds.load(raw)
        assert np.array_equal(img_HWC, want.astype(np.uint8)), ds.file_name(raw)
        assert np.array_equal(decoded_dali_input(ds, raw), img_HWC), ds.file_name(raw)
        png = ds.dali_input(raw).tobytes()
        assert png[24] == 8, "16-bit files are re-encoded as 8-bit PNG, not fed to DALI as they are"
    assert ds.load(0)[0, 5, 0] == 128  # the 32768 pixel: about half, not white
    assert "I;16 1" in ds.scan_summary and "RGB;16 1" in ds.scan_summary and "RGBA;16 1" in ds.scan_summary


def mode_cases():
    """(file name, file bytes, expected img_HWC) for each PIL mode, 4x4 images."""
    grey = np.array([[0, 60, 128, 255]] * 4, dtype=np.uint8)
    rgb = smooth_image(4, 4, 3)
    alpha = np.array([[0, 128, 255, 255]] * 4, dtype=np.uint8)
    over_white = lambda c, a: np.round(c * (a / 255.0) + 255 * (1 - a / 255.0))  # noqa: E731
    bits = np.array([[0, 1, 1, 0]] * 4, dtype=bool)
    palette = PIL.Image.fromarray(rgb).quantize(4)  # P, colours from its palette
    pal_rgb = np.asarray(palette.convert("RGB"))
    transparent_p = palette.copy()
    transparent_p.info["transparency"] = int(np.asarray(palette)[0, 0])
    pal_clear = (np.asarray(palette) == np.asarray(palette)[0, 0])[..., None]
    cmyk = np.dstack([grey, 255 - grey, np.full_like(grey, 40), np.full_like(grey, 100)])
    cmyk_rgb = np.round((255.0 - cmyk[..., :3]) * (255.0 - cmyk[..., 3:]) / 255)
    i32 = np.array([[0, 32768, 65535, 70000]] * 4, dtype=np.int32)  # mode I, read as 16-bit (70000 clips)
    grey16_t = np.array([[0, 1000, 32768, 65535]] * 4, dtype=np.uint16)
    return [
        ("1.png", encode(PIL.Image.fromarray(bits)), np.repeat(bits[..., None] * 255, 3, -1)),
        ("L.png", encode(grey), np.repeat(grey[..., None], 3, -1)),
        ("LA.png", encode(np.dstack([grey, alpha])), np.repeat(over_white(grey, alpha)[..., None], 3, -1)),
        ("P.png", encode(palette), pal_rgb),
        ("P_transparency.png", encode(transparent_p, transparency=transparent_p.info["transparency"]),
         np.where(pal_clear, 255, pal_rgb)),
        ("RGBA.png", encode(np.dstack([rgb, alpha])), over_white(rgb, alpha[..., None])),
        ("CMYK.tif", encode(PIL.Image.fromarray(cmyk, "CMYK"), "TIFF"), cmyk_rgb),
        ("I.tif", encode(PIL.Image.fromarray(i32), "TIFF"), np.repeat((np.clip(i32, 0, 65535) >> 8)[..., None], 3, -1)),
        ("I16_trns.png", encode(PIL.Image.fromarray(grey16_t), transparency=1000),
         np.repeat(np.where(grey16_t == 1000, 255, grey16_t >> 8)[..., None], 3, -1)),
    ]


def test_every_mode_gives_the_expected_rgb(tmp_path):
    """1, L, LA, P (with and without transparency), RGBA (over white, as the dataset tool), CMYK
    (PIL's conversion), I (16-bit range), I;16 with a tRNS grey value: the same pixels from
    load() and from the DALI input; the scan counts each mode."""
    cases = mode_cases()
    for name, data, _ in cases:
        (tmp_path / name).write_bytes(data)
    ds = open_dataset(DatasetSpec(path=str(tmp_path), resolution=4))
    by_name = {ds.file_name(i): i for i in range(ds.num_raw)}
    for name, _, want in cases:
        img_HWC = ds.load(by_name[name])
        np.testing.assert_allclose(img_HWC, want, atol=1, rtol=0, err_msg=name)  # alpha blending rounds
        assert np.array_equal(decoded_dali_input(ds, by_name[name]), img_HWC), name
    assert np.array_equal(ds.load(by_name["P.png"]), mode_cases()[3][2])  # no blending: exact
    for mode in ("1 1", "L 1", "LA 1", "P 2", "RGBA 1", "CMYK 1", "I 1", "I;16 1"):
        assert mode in ds.scan_summary
    with pytest.raises(ValueError, match="mode F"):
        to_rgb(PIL.Image.fromarray(np.zeros((2, 2), np.float32)))


@needs_dali
def test_dali_loader_matches_torch_for_16bit_and_modes(tmp_path):
    for name, data, _ in mode_cases():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "rgb16.png").write_bytes(png16(levels16(4, 4, 3), 2))
    ds = open_dataset(DatasetSpec(path=str(tmp_path), resolution=4))
    (x, lx), (y, ly) = (next(make_loader(ds, batch_size=len(ds), seed=1, backend=b)) for b in ("torch", "dali"))
    assert torch.equal(x, y) and torch.equal(lx, ly)


def write_folder(root, n: int = 3, labels: bool = False):
    """n good 8x8 PNGs (in class folders c0, c1, ... one image each when labels)."""
    for k in range(n):
        path = root / (f"c{k}/im.png" if labels else f"good{k:03d}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(smooth_image(8, 8, k)))


def test_truncated_png_is_skipped_at_open_or_stops_the_run(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "truncated.png").write_bytes(encode(smooth_image(64, 64))[:300])  # a valid header
    ds = open_dataset(DatasetSpec(path=str(tmp_path), resolution=8, skip_bad=True))
    assert len(ds) == 3 and ds.num_skipped == 1 and ds.skipped_files == ("truncated.png",)
    assert all(ds.get(i)[0].shape == (3, 8, 8) for i in range(3)) and ds.num_skipped_at_read == 0
    assert "1 unreadable skipped (--skip-bad)" in ds.scan_summary
    with pytest.raises(ValueError) as info:
        open_dataset(DatasetSpec(path=str(tmp_path), resolution=8))
    message = str(info.value)
    assert "'truncated.png'" in message and "image file is truncated" in message and "--skip-bad" in message


def test_file_damaged_after_open_is_replaced_at_read(tmp_path):
    """With skip_bad the image is replaced by the next one (its label too) and counted, on the
    PIL path, the DALI input path and in DataLoader worker processes; without, it is named."""
    write_folder(tmp_path, 4, labels=True)
    ds = open_dataset(DatasetSpec(path=str(tmp_path), resolution=8, skip_bad=True, cond=True))
    strict = open_dataset(DatasetSpec(path=str(tmp_path), resolution=8, cond=True))
    (tmp_path / "c1/im.png").write_bytes(b"garbage, not a PNG any more")
    with pytest.warns(UserWarning, match="c1/im.png"):
        img_CHW, label = ds.get(1)
    assert label == 2 and np.array_equal(img_CHW, ds.get(2)[0]) and ds.num_skipped_at_read == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data, raw = ds.dali_item(1)
        assert raw == 2 and np.array_equal(data, ds.dali_item(2)[0]) and ds.num_skipped_at_read == 2
        loader = make_loader(ds, batch_size=4, backend="torch", num_workers=1)  # a worker process reads it
        _, labels_N = next(loader)
        loader.close()
    # the worker's count reaches this process (it may also have read the next batch ahead)
    assert sorted(labels_N.tolist()) == [0, 2, 2, 3] and ds.num_skipped_at_read >= 3
    with pytest.raises(ValueError, match="c1/im.png"):
        strict.get(1)


def test_scan_cache_is_written_once_reused_and_invalidated(tmp_path, scan_cache, monkeypatch):
    root = tmp_path / "d"
    write_folder(root, 70)  # more than one thread-pool chunk
    first = open_dataset(DatasetSpec(path=str(root), resolution=8))
    files = list(scan_cache.glob("*.json"))
    assert len(files) == 1 and files[0].name.startswith("d-") and first.scan_summary.startswith("scanned: 70")
    calls = []
    original = datascan.probe
    monkeypatch.setattr(datascan, "probe", lambda data, convert: calls.append(1) or original(data, convert))
    again = open_dataset(DatasetSpec(path=str(root), resolution=8))
    assert not calls and again.scan_summary.startswith("cached scan: 70") and len(again) == 70
    assert list(scan_cache.glob("*.json")) == files
    (root / "good005.png").write_bytes(encode(smooth_image(8, 9, 5)))  # changed: size (and mtime) differ
    changed = open_dataset(DatasetSpec(path=str(root), resolution=8))
    assert len(calls) == 70 and changed.scan_summary.startswith("scanned") and "9x8 1" in changed.scan_summary  # W x H
    files[0].write_text("{not json")  # a corrupt cache file is ignored and rewritten
    open_dataset(DatasetSpec(path=str(root), resolution=8))
    assert len(calls) == 140 and json.loads(files[0].read_text())["num_files"] == 70


def test_zip_scan_cache_follows_the_members(tmp_path, monkeypatch):
    path = write_stylegan(tmp_path / "d.zip", [0, 1, 0, 1])
    open_dataset(DatasetSpec(path=str(path), resolution=16))
    calls = []
    original = datascan.probe
    monkeypatch.setattr(datascan, "probe", lambda data, convert: calls.append(1) or original(data, convert))
    open_dataset(DatasetSpec(path=str(path), resolution=16))
    assert not calls
    write_stylegan(path, [0, 1, 0, 1, 1])  # rewritten with one more member: another content key
    assert len(open_dataset(DatasetSpec(path=str(path), resolution=16))) == 5 and len(calls) == 5


def test_missing_path_says_it_does_not_exist(tmp_path):
    with pytest.raises(ValueError, match=r"nowhere\.zip does not exist; --data takes a folder of images"):
        open_dataset(DatasetSpec(path=str(tmp_path / "nowhere.zip"), resolution=8))


def test_unsupported_paths_say_what_they_are(tmp_path):
    tar = tmp_path / "images.tar"
    with tarfile.open(tar, "w") as tf:
        (tmp_path / "x.png").write_bytes(encode(smooth_image(8, 8)))
        tf.add(tmp_path / "x.png", arcname="x.png")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("a")
    (tmp_path / "docs" / "b.txt").write_text("b")
    expected = {tar: "is a tar archive", tmp_path / "notes.txt": r"is a text file \(\.txt, 5 bytes\)",
                tmp_path / "x.png": "is a single image", tmp_path / "empty": "is an empty folder",
                tmp_path / "docs": r"is a folder with 2 files \(2 \.txt\) in 0 subfolders and no images"}
    for path, match in expected.items():
        with pytest.raises(ValueError, match=match + ".*; --data takes a folder of images"):
            open_dataset(DatasetSpec(path=str(path), resolution=8))


def test_damaged_zip_is_called_damaged(tmp_path):
    path = write_stylegan(tmp_path / "d.zip", [0, 1, 2])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a download cut short: no central directory
    with pytest.raises(ValueError, match=r"d\.zip is a damaged zip file \(BadZipFile: .*\): re-create or re-download"):
        open_dataset(DatasetSpec(path=str(path), resolution=8))
    other = tmp_path / "dataset.bin"  # not named .zip, but starting like one
    other.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="damaged zip file"):
        open_dataset(DatasetSpec(path=str(other), resolution=8))


@pytest.mark.parametrize("kind", ["zip", "folder"])
def test_cond_on_unlabeled_data_names_cond_0(tmp_path, kind):
    if kind == "zip":
        path = write_stylegan(tmp_path / "d.zip", None)
    else:
        path = tmp_path
        write_folder(path)
    with pytest.raises(ValueError, match=r"needs class labels.*pass --cond 0"):
        open_dataset(DatasetSpec(path=str(path), resolution=8, cond=True))


def test_scan_summary_counts_modes_and_sizes(tmp_path):
    for k, (h, w) in enumerate([(8, 8), (8, 8), (8, 8), (10, 12), (20, 6)]):
        (tmp_path / f"{k}.png").write_bytes(encode(smooth_image(h, w, k)))
    (tmp_path / "5.jpg").write_bytes(encode(smooth_image(8, 8)[..., 0], "JPEG"))
    ds = open_dataset(DatasetSpec(path=str(tmp_path), resolution=8))
    assert ds.scan_summary == ("scanned: 6 images; modes RGB 5, L 1; sizes 8x8 4, 12x10 1, 6x20 1 "
                               "(shorter side 6-10 px)")


def test_synthetic_dataset_is_not_scanned(monkeypatch):
    monkeypatch.setattr(datascan, "scan", lambda *a, **k: pytest.fail("the synthetic dataset was scanned"))
    ds = open_dataset(DatasetSpec(resolution=8, synthetic_size=20))
    assert ds.scan_summary == "" and ds.num_skipped_at_read == 0 and ds.num_skipped == 0
