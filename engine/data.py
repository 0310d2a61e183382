"""Datasets: one source for every stage, resized on the fly (SPEC 6 and 10.4).

`open_dataset(spec)` detects the source:
- `path=None`: the built-in synthetic dataset (engine/synthetic.py), rendered at the resolution.
- a `.zip`, or a folder holding `dataset.json`: the StyleGAN layout, labels from `dataset.json`
  (`{"labels": [[name, int], ...]}` or `null`); without it (or with `null`) unlabeled.
- a folder of class subfolders (ImageNet layout): label = index of the sorted subfolder name.
  Subfolders all named with five digits are the StyleGAN folder layout, unlabeled.
- a folder with images directly inside: unlabeled, images found recursively.
Images are converted as the original dataset tool does: RGBA (any transparency) composited over
white, grayscale to RGB, center crop to a square, PIL Lanczos resize to the resolution.
Every file is opened (header only, about 60 us a file on 8 threads, or fully decoded with
`check="decode"`) when the dataset is opened, so an unreadable file fails before training starts,
naming the file, or with `skip_bad=True` is dropped and counted (`num_skipped`, `skipped_files`).
A file that passes the header check but fails to decode later raises ValueError naming it.
`make_loader` (engine/loader.py) streams batches through DALI or a torch DataLoader.

Legend: img_HWC / img_CHW uint8 image, images_NCHW uint8 batch, labels_N int64, histogram_C
per-class image counts.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from engine import synthetic

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# Files DALI decodes exactly like PIL: RGB and grayscale PNG and JPEG. Others (palette, alpha, CMYK,
# 16-bit, other formats) are converted to RGB on the host and fed to DALI as PNG.
_DALI_FORMATS, _DALI_MODES = ("PNG", "JPEG"), ("RGB", "L")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class DatasetSpec:
    resolution: int  # output side, pixels: every image is center-cropped and resized to it
    path: str | None = None  # class-subfolder folder, image folder, StyleGAN zip/folder; None = synthetic
    cond: bool = False  # use class labels (c_dim > 0); True fails on an unlabeled dataset
    mirror: bool = False  # append an x-flipped copy of every image (len doubles, deterministic)
    skip_bad: bool = False  # drop and count unreadable images instead of failing on the first
    check: str = "header"  # scan at open: "header" opens every file, "decode" decodes every file
    seed: int = 0  # synthetic content and the max_images subset
    max_images: int | None = None  # keep a seeded random subset of this many images; None = all
    synthetic_size: int = 2000  # images in the built-in synthetic dataset (path=None)

    def __post_init__(self):
        if self.resolution < 2:
            raise ValueError(f"resolution must be >= 2 pixels, got {self.resolution}")
        if self.check not in ("header", "decode"):
            raise ValueError(f"check must be 'header' or 'decode', got {self.check!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"max_images must be >= 1 or None, got {self.max_images}")
        if self.synthetic_size < 1:
            raise ValueError(f"synthetic_size must be >= 1, got {self.synthetic_size}")


class Dataset:
    """Common interface of the datasets. Item i < n_raw is raw image i; with mirror, item
    n_raw + j is raw image j flipped left-right (StyleGAN's x-flip doubling).

    Attributes: spec, resolution, name (the source, for messages), c_dim (0 unless cond),
    class_names (c_dim names), labels (int64 [n_raw]; zeros when c_dim == 0), num_skipped and
    skipped_files (unreadable files dropped with skip_bad), encoded (True: DALI decodes file bytes;
    False: DALI is fed rendered pixels).
    """

    encoded = False

    def __init__(self, spec: DatasetSpec, name: str, labels: np.ndarray, class_names: tuple[str, ...]):
        self.spec, self.resolution, self.name = spec, spec.resolution, name
        self.num_raw = len(labels)
        self.c_dim = len(class_names) if spec.cond else 0
        self.class_names = class_names if spec.cond else ()
        self.labels = labels.astype(np.int64) if self.c_dim else np.zeros(self.num_raw, dtype=np.int64)
        self.num_skipped, self.skipped_files = 0, ()

    def __len__(self) -> int:
        return self.num_raw * (2 if self.spec.mirror else 1)

    def __repr__(self) -> str:
        mirrored = " x2 mirrored" if self.spec.mirror else ""
        return (f"{type(self).__name__}({self.name!r}: {self.num_raw} images{mirrored}, "
                f"c_dim {self.c_dim}, {self.resolution}px, {self.num_skipped} skipped)")

    @property
    def label_histogram(self) -> np.ndarray:
        """histogram_C: number of images per class (int64 [c_dim]; empty when c_dim == 0)."""
        return np.bincount(self.labels, minlength=self.c_dim)[: self.c_dim].astype(np.int64)

    def raw_index(self, i: int) -> tuple[int, bool]:
        """(raw image index, x-flipped) of item i."""
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} out of range for {len(self)} items")
        return i % self.num_raw, i >= self.num_raw

    def get(self, i: int) -> tuple[np.ndarray, int]:
        """Item i at the dataset resolution: (img_CHW uint8 [3, R, R], label)."""
        raw, flip = self.raw_index(i)
        img_HWC = self.load(raw)
        if flip:
            img_HWC = img_HWC[:, ::-1]
        return np.ascontiguousarray(img_HWC.transpose(2, 0, 1)), int(self.labels[raw])

    def load(self, raw: int) -> np.ndarray:
        """Raw image `raw` as img_HWC uint8 [R, R, 3]."""
        raise NotImplementedError

    def dali_input(self, raw: int) -> np.ndarray:
        """What the DALI pipeline is fed for raw image `raw`: file bytes (uint8 [bytes]) when
        `encoded`, else img_HWC."""
        return self.load(raw)


class SyntheticDataset(Dataset):
    """The built-in class-conditional dataset, rendered on the fly (deterministic by seed, index);
    max_images keeps its first images."""

    def __init__(self, spec: DatasetSpec):
        size = min(spec.synthetic_size, spec.max_images or spec.synthetic_size)
        labels = np.arange(size, dtype=np.int64) % synthetic.NUM_CLASSES
        super().__init__(spec, f"synthetic(seed={spec.seed})", labels, synthetic.CLASS_NAMES)

    def load(self, raw: int) -> np.ndarray:
        return synthetic.render(self.spec.seed, raw, self.resolution)[0]


def to_rgb(img: PIL.Image.Image) -> PIL.Image.Image:
    """RGB like the dataset tool: transparency composited over white, grayscale replicated."""
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return PIL.Image.alpha_composite(PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def center_crop_resize(img: PIL.Image.Image, resolution: int) -> np.ndarray:
    """The dataset tool's center crop (floor offsets) then PIL Lanczos resize: img_HWC uint8."""
    w, h = img.size
    side = min(w, h)
    x0, y0 = (w - side) // 2, (h - side) // 2
    img = img.crop((x0, y0, x0 + side, y0 + side))
    if side != resolution:
        img = img.resize((resolution, resolution), PIL.Image.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


class FileDataset(Dataset):
    """Images read from a folder or a zip (see the module docstring for layouts)."""

    encoded = True

    def __init__(self, spec: DatasetSpec, root: Path, names: list[str], labels: np.ndarray | None,
                 class_names: tuple[str, ...]):
        self._root, self._is_zip = root, root.is_file()
        self._zip_handle: tuple[int, zipfile.ZipFile] | None = None  # (pid, handle), reopened after fork
        good, direct, bad = self._scan(names, spec)
        if bad and not spec.skip_bad:
            name, err = bad[0]
            raise ValueError(f"{root}: cannot read image {name!r} ({err}); pass skip_bad=True (--skip-bad) to skip "
                             f"unreadable images ({len(bad)} found)")
        keep = np.flatnonzero(good)
        if spec.max_images is not None and spec.max_images < len(keep):  # StyleGAN's seeded subset
            keep = np.sort(np.random.default_rng(spec.seed).permutation(keep)[: spec.max_images])
        self._names = [names[k] for k in keep]
        self._direct = direct[keep]
        labels_all = labels if labels is not None else np.zeros(len(names), dtype=np.int64)
        super().__init__(spec, str(root), labels_all[keep], class_names)
        self.num_skipped, self.skipped_files = len(bad), tuple(name for name, _ in bad)

    def __getstate__(self):  # DataLoader workers (spawn) get a copy without the open zip handle
        state = self.__dict__.copy()
        state["_zip_handle"] = None
        return state

    def _zip(self) -> zipfile.ZipFile:
        if self._zip_handle is None or self._zip_handle[0] != os.getpid():
            self._zip_handle = (os.getpid(), zipfile.ZipFile(self._root))
        return self._zip_handle[1]

    def _open(self, name: str):
        return self._zip().open(name) if self._is_zip else open(self._root / name, "rb")

    def file_name(self, raw: int) -> str:
        """Path of raw image `raw` inside the folder or zip."""
        return self._names[raw]

    def _scan(self, names: list[str], spec: DatasetSpec):
        """Open (or decode) every file: (readable mask, DALI-direct mask, [(name, error)])."""

        def probe(name: str) -> tuple[bool, str]:
            try:
                with self._open(name) as f, PIL.Image.open(f) as img:
                    if spec.check == "decode":
                        img.load()
                    return (img.format in _DALI_FORMATS and img.mode in _DALI_MODES
                            and "transparency" not in img.info), ""
            except Exception as exc:  # noqa: BLE001 - any failure means unreadable; reported by name
                return False, f"{type(exc).__name__}: {exc}"

        with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            results = list(pool.map(probe, names))
        errors = [(name, err) for name, (_, err) in zip(names, results) if err]
        good = np.array([not err for _, err in results], dtype=bool)
        direct = np.array([ok for ok, _ in results], dtype=bool)
        return good, direct, errors

    def read_bytes(self, raw: int) -> bytes:
        with self._open(self._names[raw]) as f:
            return f.read()

    def _decode(self, raw: int) -> PIL.Image.Image:
        try:
            img = PIL.Image.open(io.BytesIO(self.read_bytes(raw)))
            return to_rgb(img)
        except Exception as exc:
            raise ValueError(f"{self._root}: cannot read image {self._names[raw]!r} "
                             f"({type(exc).__name__}: {exc})") from exc

    def load(self, raw: int) -> np.ndarray:
        return center_crop_resize(self._decode(raw), self.resolution)

    def dali_input(self, raw: int) -> np.ndarray:
        """File bytes; files DALI would decode differently from PIL (transparency, palette, CMYK,
        16-bit, other formats) are converted to RGB on the host and re-encoded losslessly as PNG."""
        if self._direct[raw]:
            return np.frombuffer(self.read_bytes(raw), dtype=np.uint8)
        buf = io.BytesIO()
        self._decode(raw).save(buf, format="PNG", compress_level=1)
        return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def _is_image(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return name.lower().endswith(IMAGE_EXTENSIONS) and not base.startswith(".") and "__MACOSX/" not in name


def _walk_images(root: Path) -> list[str]:
    """Image files under root, recursively, as sorted posix paths relative to root."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(root)
        found += [(rel / f).as_posix() for f in filenames if _is_image(f)]
    return sorted(found)


def _json_labels(text: str | None, names: list[str], where: str) -> tuple[np.ndarray | None, tuple[str, ...]]:
    """Labels from a StyleGAN dataset.json (None when absent or `null`) and their class names."""
    if text is None:
        return None, ()
    try:
        table = json.loads(text).get("labels")
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"{where}: dataset.json is not a JSON object with a 'labels' entry ({exc})") from exc
    if table is None:
        return None, ()
    table = {str(name).replace("\\", "/"): label for name, label in table}
    labels = np.zeros(len(names), dtype=np.int64)
    for k, name in enumerate(names):
        if name not in table:
            raise ValueError(f"{where}: dataset.json has no label for {name!r}")
        label = table[name]
        if isinstance(label, bool) or not isinstance(label, int) or label < 0:
            raise ValueError(f"{where}: the label of {name!r} must be a class index >= 0, got {label!r}")
        labels[k] = label
    c_dim = int(labels.max()) + 1 if len(labels) else 0
    return labels, tuple(str(c) for c in range(c_dim))


def _open_files(spec: DatasetSpec) -> FileDataset:
    root = Path(spec.path)
    if root.is_file() and zipfile.is_zipfile(root):
        with zipfile.ZipFile(root) as zf:
            names = sorted(n for n in zf.namelist() if _is_image(n))
            text = zf.read("dataset.json").decode() if "dataset.json" in zf.namelist() else None
        labels, classes = _json_labels(text, names, str(root))
        return FileDataset(spec, root, names, labels, classes)
    if not root.is_dir():
        raise ValueError(f"unsupported dataset path {str(root)!r}: expected a folder of images, a folder of class "
                         f"subfolders, or a StyleGAN .zip (None = the built-in synthetic dataset)")
    if (root / "dataset.json").is_file():
        names = _walk_images(root)
        labels, classes = _json_labels((root / "dataset.json").read_text(), names, str(root))
        return FileDataset(spec, root, names, labels, classes)
    entries = [e for e in sorted(root.iterdir()) if not e.name.startswith(".")]
    subdirs = [e.name for e in entries if e.is_dir()]
    if any(e.is_file() and _is_image(e.name) for e in entries) or all(re.fullmatch(r"\d{5}", d) for d in subdirs):
        return FileDataset(spec, root, _walk_images(root), None, ())
    names, labels = [], []
    for label, sub in enumerate(subdirs):
        found = _walk_images(root / sub)
        if not found:
            raise ValueError(f"{root}: class folder {sub!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        names += [f"{sub}/{f}" for f in found]
        labels += [label] * len(found)
    return FileDataset(spec, root, names, np.array(labels, dtype=np.int64), tuple(subdirs))


def open_dataset(spec: DatasetSpec, *, min_images: int = 1) -> Dataset:
    """Open the dataset described by spec (see the module docstring for the sources).

    min_images: fewest distinct images accepted (mirror copies not counted), e.g. the batch size.
    Raises ValueError for an unsupported path, an unreadable image (unless skip_bad), cond=True
    on an unlabeled dataset, or fewer than min_images images.
    """
    dataset = SyntheticDataset(spec) if spec.path is None else _open_files(spec)
    if spec.cond and not dataset.c_dim:
        raise ValueError(f"{dataset.name}: conditional training (cond=True, --cond) needs class labels, but the "
                         f"dataset has none; use class subfolders or a dataset.json, or train unconditionally")
    if dataset.num_raw < min_images:
        skipped = f" ({dataset.num_skipped} unreadable skipped)" if dataset.num_skipped else ""
        raise ValueError(f"{dataset.name}: {dataset.num_raw} images{skipped}, fewer than the {min_images} needed "
                         f"(e.g. one batch)")
    return dataset


def sample_labels(histogram_C: np.ndarray, n: int, *, generator=None, device="cpu"):
    """n labels (int64 tensor [n]) drawn by the dataset label distribution; zeros when c_dim == 0."""
    counts = torch.as_tensor(np.asarray(histogram_C), dtype=torch.float64)
    if counts.numel() == 0:
        return torch.zeros(n, dtype=torch.int64, device=device)
    return torch.multinomial(counts, n, replacement=True, generator=generator).to(device)
