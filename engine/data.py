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
`make_loader` (end of this file) streams batches through DALI or a torch DataLoader.

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


# ---------------------------------------------------------------------------------------------
# Loaders


class _ShardOrder:
    """The items rank `rank` reads: per epoch a seeded permutation of all items, split into
    world_size disjoint strided shards of `per_rank` items (the len % world_size leftover items of
    that epoch's permutation are not read that epoch). Batches run on across epoch boundaries."""

    def __init__(self, num_items: int, rank: int, world_size: int, seed: int):
        self.num_items, self.rank, self.world_size, self.seed = num_items, rank, world_size, seed
        self.per_rank = num_items // world_size

    def epoch(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_items)
        return perm[self.rank :: self.world_size][: self.per_rank]

    def advance(self, epoch: int, index: int, count: int) -> tuple[int, int]:
        index += count
        return epoch + index // self.per_rank, index % self.per_rank

    def batches(self, epoch: int, index: int, batch_size: int):
        """Infinite generator of item-index arrays [batch_size], starting at (epoch, index)."""
        order = self.epoch(epoch)
        while True:
            parts, need = [], batch_size
            while need:
                take = order[index : index + need]
                parts.append(take)
                need -= len(take)
                epoch, index = self.advance(epoch, index, len(take))
                if index == 0:
                    order = self.epoch(epoch)
            yield np.concatenate(parts)


class _TorchItems:
    """Map-style torch dataset view: item i -> (img_CHW uint8 tensor, label)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        img_CHW, label = self.dataset.get(int(i))
        return torch.from_numpy(img_CHW), label


class _DaliSource:
    """Non-parallel DALI external source: one call per batch, in order (no worker processes, so
    nothing is re-imported under spawn). Returns (inputs, mirror flags, labels), one entry per sample."""

    def __init__(self, dataset: Dataset, batches):
        self.dataset, self.batches, self.recent = dataset, batches, []

    def __call__(self):
        items_N = next(self.batches)
        self.recent = (self.recent + [items_N])[-8:]  # batches in DALI's prefetch queue, to name a bad file
        raws = [self.dataset.raw_index(int(i)) for i in items_N]
        return ([self.dataset.dali_input(raw) for raw, _ in raws], [np.array(flip, dtype=np.int32) for _, flip in raws],
                [np.array(self.dataset.labels[raw], dtype=np.int64) for raw, _ in raws])


def _dali_pipeline(dataset: Dataset, source: _DaliSource, *, batch_size: int, device_id: int | None,
                   num_threads: int, seed: int):
    """Decode (mixed on GPU, cpu otherwise), center crop, antialiased Lanczos-3 resize, mirror, CHW.

    The crop is done by the decoder (`image_slice`) so that, like PIL, the resize never reads pixels
    outside the square; DALI's float Lanczos then differs from PIL's only by PIL's uint8 rounding
    between its two passes and its edge handling (renormalized vs clamped): within a few levels.
    """
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali import math as dmath

    gpu, res = device_id is not None, dataset.resolution

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed)
    def pipeline():
        data, flips, labels = fn.external_source(source=source, num_outputs=3, batch=True, parallel=False)
        if dataset.encoded:
            shape = fn.peek_image_shape(data, adjust_orientation=False)
            side = dmath.min(shape[0], shape[1])
            anchor = fn.cast(fn.stack((shape[0] - side) // 2, (shape[1] - side) // 2), dtype=types.FLOAT)
            extent = fn.cast(fn.stack(side, side), dtype=types.FLOAT)
            images = fn.decoders.image_slice(data, anchor, extent, device="mixed" if gpu else "cpu",
                                             output_type=types.RGB, adjust_orientation=False, axis_names="HW",
                                             normalized_anchor=False, normalized_shape=False)
            images = fn.resize(images, size=[res, res], interp_type=types.INTERP_LANCZOS3, antialias=True)
        else:  # rendered pixels, already at the resolution
            images = data.gpu() if gpu else data
        images = fn.crop_mirror_normalize(images, dtype=types.UINT8, output_layout="CHW", mirror=flips)
        return images, labels

    return pipeline()


class Loader:
    """Infinite iterator of (images_NCHW uint8 [B, 3, R, R], labels_N int64 [B]) on `device`.

    Each rank reads batch_size items per step from its shard (see _ShardOrder); the order is a
    function of (seed, epoch) only. `state_dict()` is the position of the next batch, {"epoch",
    "index"} plus the item count, and `load_state_dict` restarts exactly there (JSON-safe ints).
    Backends: "dali" (DALI pipeline fed by a non-parallel external source; decodes on the GPU with
    `mixed` when device is CUDA), "torch" (DataLoader with num_workers worker processes, PIL
    decode), "auto" (DALI for file datasets when importable, else torch: the synthetic dataset has
    nothing to decode and its rendering parallelizes over DataLoader workers, so auto picks torch
    for it; backend="dali" feeds its rendered pixels through the pipeline instead).
    """

    def __init__(self, dataset: Dataset, *, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 device="cpu", backend: str = "auto", num_workers: int = 0, num_threads: int = 2):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if batch_size < 1 or num_workers < 0 or num_threads < 1:
            raise ValueError(f"need batch_size >= 1, num_workers >= 0, num_threads >= 1; got {batch_size}, "
                             f"{num_workers}, {num_threads}")
        if len(dataset) < world_size:
            raise ValueError(f"{dataset.name}: {len(dataset)} items cannot be sharded over {world_size} ranks")
        if backend not in ("auto", "dali", "torch"):
            raise ValueError(f"backend must be 'auto', 'dali' or 'torch', got {backend!r}")
        if backend == "auto":
            backend = "dali" if dataset.encoded and dali_available() else "torch"
        self.dataset, self.batch_size, self.backend = dataset, batch_size, backend
        self.device, self.seed = torch.device(device), seed
        self.num_workers, self.num_threads = num_workers, num_threads
        self._order = _ShardOrder(len(dataset), rank, world_size, seed)
        self._epoch, self._index = 0, 0
        self._stream = None  # the running backend, started lazily at (epoch, index)

    def __iter__(self):
        return self

    def __next__(self):
        if self._stream is None:
            start = self._order.batches(self._epoch, self._index, self.batch_size)
            self._stream = self._dali_stream(start) if self.backend == "dali" else self._torch_stream(start)
        try:
            batch = next(self._stream)
        except BaseException:
            self._stream = None  # a failed backend is restarted from the current position
            raise
        self._epoch, self._index = self._order.advance(self._epoch, self._index, self.batch_size)
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "index": self._index, "per_rank": self._order.per_rank,
                "num_items": self._order.num_items, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Restart at a saved position. A different world size keeps the epoch and scales the index
        (approximate); a different dataset size or seed is an error."""
        if state["num_items"] != self._order.num_items or state["seed"] != self.seed:
            raise ValueError(f"loader state is for {state['num_items']} items with seed {state['seed']}, this loader "
                             f"has {self._order.num_items} items with seed {self.seed}")
        self.close()
        self._epoch = int(state["epoch"])
        self._index = int(state["index"]) * self._order.per_rank // int(state["per_rank"])

    def close(self) -> None:
        """Stop the running backend (workers, pipeline); the next batch restarts it."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _torch_stream(self, batches):
        # A private generator: the DataLoader draws its worker base seed from it, not from the global
        # RNG, so restarting the stream on resume does not shift the training's random numbers.
        loader = torch.utils.data.DataLoader(_TorchItems(self.dataset), batch_sampler=batches,
                                             num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
                                             generator=torch.Generator().manual_seed(self.seed))
        for images_NCHW, labels_N in loader:
            yield images_NCHW.to(self.device, non_blocking=True), labels_N.to(self.device, non_blocking=True)

    def _dali_stream(self, batches):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        device_id = None
        if self.device.type == "cuda":
            device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        source = _DaliSource(self.dataset, batches)
        pipe = _dali_pipeline(self.dataset, source, batch_size=self.batch_size, device_id=device_id,
                              num_threads=self.num_threads, seed=self.seed)
        try:
            iterator = DALIGenericIterator([pipe], ["images", "labels"])
            while True:
                out = next(iterator)[0]
                yield out["images"].to(self.device), out["labels"].reshape(-1).to(self.device)
        except Exception:
            for items_N in source.recent:  # name the file DALI could not decode
                for i in items_N:
                    self.dataset.get(int(i))  # raises ValueError naming the file
            raise


def dali_available() -> bool:
    """Whether NVIDIA DALI and its PyTorch plugin import."""
    try:
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def make_loader(dataset: Dataset, *, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                device="cpu", backend: str = "auto", num_workers: int = 0, num_threads: int = 2) -> Loader:
    """Infinite, sharded, resumable batch iterator over dataset (see Loader).

    batch_size: images per rank per step. rank/world_size: the global rank and the number of
    ranks (shard_id and num_shards). seed: the shuffle seed, the same on every rank.
    """
    return Loader(dataset, batch_size=batch_size, rank=rank, world_size=world_size, seed=seed, device=device,
                  backend=backend, num_workers=num_workers, num_threads=num_threads)
