"""Datasets: one source for every stage, resized on the fly (SPEC 6 and 10.4).

`open_dataset(spec)` detects the source:
- `path=None`: the built-in synthetic dataset (engine/synthetic.py), rendered at the resolution.
- a `.zip`, or a folder holding `dataset.json`: the StyleGAN layout, labels from `dataset.json`
  (`{"labels": [[name, int], ...]}` or `null`); without it (or with `null`) unlabeled.
- a folder of class subfolders (ImageNet layout): label = index of the sorted subfolder name.
  Subfolders all named with five digits are the StyleGAN folder layout, unlabeled.
- a folder with images directly inside: unlabeled, images found recursively.
A path that does not exist, a file that is not a zip (a tar, a text file, ...), a damaged zip
and a folder without images each fail at once with a message saying what was found.
Images are converted as the original dataset tool does (see to_rgb for every PIL mode, 16-bit
included): transparency composited over white, grayscale to RGB, center crop to a square, PIL
Lanczos resize to the resolution.

Before training, every image of a file dataset is decoded once (engine/datascan.py: threads,
a progress bar for big datasets, the result cached per dataset by content), so an unreadable
file fails at open, naming it, or with `skip_bad=True` is dropped and counted (`num_skipped`,
`skipped_files`). `scan_summary` is a one-line account (images per mode and per size). An
image that fails when it is read for training (it changed after the scan) raises ValueError
naming it; with skip_bad it is replaced by the next readable image (deterministic; its label
comes along) and counted in `num_skipped_at_read`, a count shared by the reader threads and
DataLoader worker processes. `make_loader` (engine/loader.py) streams batches through DALI or
a torch DataLoader.

Legend: img_HWC / img_CHW uint8 image, images_NCHW uint8 batch, labels_N int64, histogram_C
per-class image counts, stats_N2 per-file (size, mtime_ns) or (size, CRC32) of the scan.
"""

from __future__ import annotations

import dataclasses
import io
import json
import multiprocessing.context
import multiprocessing.sharedctypes
import os
import re
import threading
import warnings
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from engine import datascan, synthetic

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
ACCEPTED = ("--data takes a folder of images, a folder of class subfolders, or a StyleGAN .zip (or folder with "
            "dataset.json); leave it out for the built-in synthetic dataset")
MAX_READ_RETRIES = 16  # with skip_bad: images tried in a row before a read gives up


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class DatasetSpec:
    resolution: int  # output side, pixels: every image is center-cropped and resized to it
    path: str | None = None  # class-subfolder folder, image folder, StyleGAN zip/folder; None = synthetic
    cond: bool = False  # use class labels (c_dim > 0); True fails on an unlabeled dataset
    mirror: bool = False  # append an x-flipped copy of every image (len doubles, deterministic)
    skip_bad: bool = False  # drop and count unreadable images instead of failing on the first
    check: str = "decode"  # scan at open: every file decoded ("header" is an old name for the same)
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


class SharedCount:
    """A count shared by a dataset and its copies: reader threads (shallow copies) and DataLoader
    workers (forked processes inherit it; spawned ones get it as shared memory). Pickled outside
    a process start it becomes a plain copy of its value."""

    def __init__(self, value: int = 0):
        self._shared = multiprocessing.sharedctypes.RawValue("q", value)
        self._lock = threading.Lock()  # this process's threads; processes rarely add at the same moment

    def add(self, n: int = 1) -> None:
        with self._lock:
            self._shared.value += n

    @property
    def value(self) -> int:
        return int(self._shared.value)

    def __getstate__(self):
        spawning = multiprocessing.context.get_spawning_popen() is not None
        return {"shared": self._shared} if spawning else {"value": self.value}

    def __setstate__(self, state):
        shared = state.get("shared")  # (not `or`: a ctypes value of 0 is falsy)
        self._shared = shared if shared is not None else multiprocessing.sharedctypes.RawValue("q", state["value"])
        self._lock = threading.Lock()


class Dataset:
    """Common interface of the datasets. Item i < n_raw is raw image i; with mirror, item
    n_raw + j is raw image j flipped left-right (StyleGAN's x-flip doubling).

    Attributes: spec, resolution, name (the source, for messages), c_dim (0 unless cond),
    class_names (c_dim names), labels (int64 [n_raw]; zeros when c_dim == 0), num_skipped and
    skipped_files (unreadable files dropped at open with skip_bad), num_skipped_at_read (reads
    that failed during training and were replaced, with skip_bad), scan_summary (the open-time
    scan in one line; "" when nothing was scanned), encoded (True: DALI decodes file bytes;
    False: DALI is fed rendered pixels).
    """

    encoded = False
    _read_skips: SharedCount | None = None  # file datasets count replaced reads here

    def __init__(self, spec: DatasetSpec, name: str, labels: np.ndarray, class_names: tuple[str, ...]):
        self.spec, self.resolution, self.name = spec, spec.resolution, name
        self.num_raw = len(labels)
        self.c_dim = len(class_names) if spec.cond else 0
        self.class_names = class_names if spec.cond else ()
        self.labels = labels.astype(np.int64) if self.c_dim else np.zeros(self.num_raw, dtype=np.int64)
        self.num_skipped, self.skipped_files, self.scan_summary = 0, (), ""

    def __len__(self) -> int:
        return self.num_raw * (2 if self.spec.mirror else 1)

    def __repr__(self) -> str:
        mirrored = " x2 mirrored" if self.spec.mirror else ""
        return (f"{type(self).__name__}({self.name!r}: {self.num_raw} images{mirrored}, "
                f"c_dim {self.c_dim}, {self.resolution}px, {self.num_skipped} skipped)")

    @property
    def num_skipped_at_read(self) -> int:
        """Reads that failed during training and were replaced by another image (skip_bad); a file
        that stays unreadable counts each time it comes up."""
        return 0 if self._read_skips is None else self._read_skips.value

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
        img_HWC, raw = self.fetch(raw, self.load)
        if flip:
            img_HWC = img_HWC[:, ::-1]
        return np.ascontiguousarray(img_HWC.transpose(2, 0, 1)), int(self.labels[raw])

    def dali_item(self, raw: int) -> tuple[np.ndarray, int]:
        """(dali_input of raw image `raw`, the raw index it came from): see fetch."""
        return self.fetch(raw, self.dali_input)

    def fetch(self, raw: int, read) -> tuple[object, int]:
        """(read(raw), raw). With skip_bad, an image whose read raises is replaced by the next one
        that reads (raw + 1, raw + 2, ... cyclically; at most MAX_READ_RETRIES tried), counted in
        num_skipped_at_read and warned about; its label goes with it. Without, the error is raised."""
        if not self.spec.skip_bad:
            return read(raw), raw
        errors = []
        for k in range(min(MAX_READ_RETRIES, self.num_raw)):
            r = (raw + k) % self.num_raw
            try:
                return read(r), r
            except Exception as exc:  # noqa: BLE001 - any failure: this image is unreadable now
                if self._read_skips is not None:
                    self._read_skips.add()
                errors.append(exc)
                warnings.warn(f"{exc}; skipped at read (--skip-bad), the next image is used instead", stacklevel=3)
        raise ValueError(f"{self.name}: {len(errors)} images in a row could not be read (the dataset changed "
                         f"after it was opened?); last: {errors[-1]}") from errors[-1]

    def load(self, raw: int) -> np.ndarray:
        """Raw image `raw` as img_HWC uint8 [R, R, 3]."""
        raise NotImplementedError

    def dali_input(self, raw: int) -> np.ndarray:
        """What the DALI pipeline is fed for raw image `raw`: file bytes (uint8 [bytes]) when
        `encoded`, else img_HWC."""
        return self.load(raw)


class SyntheticDataset(Dataset):
    """The built-in class-conditional dataset, rendered on the fly (deterministic by seed, index);
    max_images keeps its first images. Nothing to scan."""

    def __init__(self, spec: DatasetSpec):
        size = min(spec.synthetic_size, spec.max_images or spec.synthetic_size)
        labels = np.arange(size, dtype=np.int64) % synthetic.NUM_CLASSES
        super().__init__(spec, f"synthetic(seed={spec.seed})", labels, synthetic.CLASS_NAMES)

    def load(self, raw: int) -> np.ndarray:
        return synthetic.render(self.spec.seed, raw, self.resolution)[0]


def to_rgb(img: PIL.Image.Image) -> PIL.Image.Image:
    """RGB like the dataset tool, right for every mode PIL decodes:
    - transparency (alpha: RGBA, LA, PA, RGBa; or a tRNS colour or palette entry) composited over
      white; 1, L, P, CMYK, YCbCr, LAB, HSV converted by PIL (grey replicated);
    - 16-bit grey (I;16, I;16B/L/N, and I, read as 16-bit) scaled, not clipped: v >> 8, so
      0..65535 -> 0..255 and 32768 -> 128. Pillow reads 16-bit RGB, RGBA and LA PNGs as 8-bit
      RGB/RGBA by the same high byte, so a 16-bit file gives the same pixels grey or colour.
      Values of mode I outside 0..65535 are clipped; a tRNS grey value becomes transparent.
    - F (32-bit float) is refused: it has no range to scale from.
    """
    if img.mode == "F":
        raise ValueError("32-bit float (mode F) images have no fixed range: save them as 8- or 16-bit")
    if img.mode.startswith("I"):  # I, I;16, I;16B, I;16L, I;16N
        v = np.asarray(img)
        grey = (np.clip(v, 0, 65535).astype(np.uint16) >> 8).astype(np.uint8)
        key = img.info.get("transparency")
        if isinstance(key, int) and not isinstance(key, bool):
            img = PIL.Image.fromarray(np.stack([grey, np.where(v == key, 0, 255).astype(np.uint8)], -1))  # LA
        else:
            img = PIL.Image.fromarray(grey)  # L
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
        scan = datascan.scan(root, names, read=self._read_name, zf=self._zip() if self._is_zip else None,
                             convert=to_rgb)
        if scan.bad and not spec.skip_bad:
            name, err = scan.bad[0]
            raise ValueError(f"{root}: cannot read image {name!r} ({err}); {len(scan.bad)} of {len(names)} images "
                             f"are unreadable: pass --skip-bad (skip_bad=True) to skip them and train on the rest")
        keep = np.flatnonzero(scan.good_N)
        if spec.max_images is not None and spec.max_images < len(keep):  # StyleGAN's seeded subset
            keep = np.sort(np.random.default_rng(spec.seed).permutation(keep)[: spec.max_images])
        self._names = [names[k] for k in keep]
        self._direct, self._stats_N2 = scan.direct_N[keep], scan.stats_N2[keep]
        labels_all = labels if labels is not None else np.zeros(len(names), dtype=np.int64)
        super().__init__(spec, str(root), labels_all[keep], class_names)
        self.num_skipped, self.skipped_files = len(scan.bad), tuple(name for name, _ in scan.bad)
        self.scan_summary = scan.summary + (" skipped (--skip-bad)" if scan.bad else "")
        self._read_skips = SharedCount()

    def __getstate__(self):  # DataLoader workers (spawn) and reader threads get a copy without the zip handle
        state = self.__dict__.copy()
        state["_zip_handle"] = None
        return state

    def _zip(self) -> zipfile.ZipFile:
        if self._zip_handle is None or self._zip_handle[0] != os.getpid():
            self._zip_handle = (os.getpid(), zipfile.ZipFile(self._root))
        return self._zip_handle[1]

    def _read_name(self, name: str) -> bytes:
        """The bytes of file `name` (a zip member's CRC32 is checked when it is read)."""
        return self._zip().read(name) if self._is_zip else (self._root / name).read_bytes()

    def file_name(self, raw: int) -> str:
        """Path of raw image `raw` inside the folder or zip."""
        return self._names[raw]

    def _error(self, raw: int, exc: Exception) -> ValueError:
        return ValueError(f"{self._root}: cannot read image {self._names[raw]!r} ({datascan.error_text(exc)})")

    def _read(self, raw: int) -> tuple[bytes, bool]:
        """(file bytes, unchanged since the scan: same size and mtime, or a zip member whose CRC32
        zipfile has checked)."""
        try:
            if self._is_zip:
                return self._zip().read(self._names[raw]), True
            with open(self._root / self._names[raw], "rb") as f:
                st = os.fstat(f.fileno())
                return f.read(), (st.st_size, st.st_mtime_ns) == tuple(self._stats_N2[raw].tolist())
        except Exception as exc:
            raise self._error(raw, exc) from exc

    def read_bytes(self, raw: int) -> bytes:
        return self._read(raw)[0]

    def _decode(self, raw: int, data: bytes | None = None) -> PIL.Image.Image:
        data = self.read_bytes(raw) if data is None else data
        try:
            return to_rgb(PIL.Image.open(io.BytesIO(data)))
        except Exception as exc:
            raise self._error(raw, exc) from exc

    def load(self, raw: int) -> np.ndarray:
        return center_crop_resize(self._decode(raw), self.resolution)

    def dali_input(self, raw: int) -> np.ndarray:
        """File bytes; files DALI would decode differently from PIL (transparency, palette, CMYK,
        16-bit, other formats), and files changed since the scan, are converted to RGB on the host
        (failing here, by name, if unreadable) and re-encoded losslessly as 8-bit PNG."""
        data, unchanged = self._read(raw)
        if self._direct[raw] and unchanged:
            return np.frombuffer(data, dtype=np.uint8)
        buf = io.BytesIO()
        self._decode(raw, data).save(buf, format="PNG", compress_level=1)
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
    if not root.exists():
        broken = f" (a broken link to {os.readlink(root)})" if root.is_symlink() else ""
        raise ValueError(f"dataset path {root} does not exist{broken}; {ACCEPTED}")
    if root.is_file():
        zf = datascan.open_zip(root)
        if zf is None:
            raise ValueError(f"{root} is {datascan.describe_file(root, IMAGE_EXTENSIONS)}; {ACCEPTED}")
        with zf:
            members = zf.namelist()
            names = sorted(n for n in members if _is_image(n))
            text = zf.read("dataset.json").decode() if "dataset.json" in members else None
        if not names:
            listed = ", ".join(repr(n) for n in members[:3]) + (", ..." if len(members) > 3 else "")
            raise ValueError(f"{root}: the zip holds no images ({', '.join(IMAGE_EXTENSIONS)}) among its "
                             f"{len(members)} entries{f' ({listed})' if members else ''}; {ACCEPTED}")
        labels, classes = _json_labels(text, names, str(root))
        return FileDataset(spec, root, names, labels, classes)
    if not root.is_dir():
        raise ValueError(f"{root} is neither a file nor a folder; {ACCEPTED}")
    if (root / "dataset.json").is_file():
        names = _walk_images(root)
        if not names:
            raise ValueError(f"{root} is {datascan.describe_folder(root, IMAGE_EXTENSIONS)}; {ACCEPTED}")
        labels, classes = _json_labels((root / "dataset.json").read_text(), names, str(root))
        return FileDataset(spec, root, names, labels, classes)
    entries = [e for e in sorted(root.iterdir()) if not e.name.startswith(".")]
    subdirs = [e.name for e in entries if e.is_dir()]
    if any(e.is_file() and _is_image(e.name) for e in entries) or all(re.fullmatch(r"\d{5}", d) for d in subdirs):
        names = _walk_images(root)
        if not names:
            raise ValueError(f"{root} is {datascan.describe_folder(root, IMAGE_EXTENSIONS)}; {ACCEPTED}")
        return FileDataset(spec, root, names, None, ())
    per_class = [_walk_images(root / sub) for sub in subdirs]
    if not any(per_class):
        raise ValueError(f"{root} is {datascan.describe_folder(root, IMAGE_EXTENSIONS)}; {ACCEPTED}")
    names, labels = [], []
    for label, (sub, found) in enumerate(zip(subdirs, per_class)):
        if not found:
            raise ValueError(f"{root}: class folder {sub!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        names += [f"{sub}/{f}" for f in found]
        labels += [label] * len(found)
    return FileDataset(spec, root, names, np.array(labels, dtype=np.int64), tuple(subdirs))


def open_dataset(spec: DatasetSpec, *, min_images: int = 1) -> Dataset:
    """Open the dataset described by spec (see the module docstring for the sources). A file
    dataset is scanned first (engine/datascan.py; cached), so this is the place bad data fails.

    min_images: fewest distinct images accepted (mirror copies not counted), e.g. the batch size.
    Raises ValueError for a missing or unsupported path or a damaged zip, an unreadable image
    (unless skip_bad), cond=True on an unlabeled dataset, or fewer than min_images images.
    """
    dataset = SyntheticDataset(spec) if spec.path is None else _open_files(spec)
    if spec.cond and not dataset.c_dim:
        raise ValueError(f"{dataset.name}: conditional training (cond=True, --cond 1, the default) needs class "
                         f"labels, but the dataset has none: pass --cond 0 (cond=False) to train unconditionally, "
                         f"or label it (class subfolders, or a dataset.json with labels)")
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
