"""Data checks before training, for engine/data.py: what a dataset path that is not a dataset
holds (describe_file, describe_folder, open_zip: messages saying what was found), and the scan
of a file dataset: every image decoded once, in parallel, with the result cached per dataset.

What the scan finds per image: readable or not (and why), whether DALI may decode the file bytes
itself ("direct": 8-bit RGB or grey PNG or JPEG without transparency; everything else, 16-bit
PNGs included, is converted on the host), its mode and its size. A file counts as readable when
PIL decodes all of it and `convert` (data.to_rgb) accepts the result, which is exactly what
reading it for training does. JPEGs are decoded at 1/8 scale (libjpeg's DCT scaling still reads
every coefficient, so a truncated or corrupt file fails the same way, at a fraction of the cost).
Modes are PIL's, except 16-bit PNGs, which Pillow reads as 8-bit RGB/RGBA and are counted as
"RGB;16", "RGBA;16", "LA;16" (16-bit grey is PIL's "I;16").

The work runs on threads (PIL and zlib release the GIL while decoding) with a tqdm bar on stderr
when there are at least PROGRESS_MIN files and stderr is a terminal.

Cache: one JSON file per dataset in $SGXL_DATA_CACHE, else ~/.cache/stylegan_xl_engine/datascan,
named `<dataset basename>-<hash of its absolute path>.json`. It holds the scan's result and the
content key it was made for: a SHA-256 over the scan version, the Pillow version, the source of
`convert` and, for every image file in name order, its name and
  zip:    CRC32, compressed and uncompressed size, from the central directory (no data is read);
  folder: size and mtime (ns), one stat per file.
So a file that is added, removed, renamed, rewritten or touched, or a new Pillow, means a rescan
on the next open, which rewrites the file. A cache file that cannot be read or parsed, or that
does not match, is ignored and rewritten; an unwritable cache folder only loses the cache.

Legend: *_N per-file arrays in name order, stats_N2 int64 [N, 2] per-file (size, mtime_ns) for a
folder or (size, CRC32) for a zip.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import inspect
import io
import json
import os
import re
import sys
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import PIL
import PIL.Image

CACHE_ENV = "SGXL_DATA_CACHE"
SCAN_VERSION = 2  # bump when what the probe records or accepts changes
PROGRESS_MIN = 1000  # files: fewer scan without a progress bar
_CHUNK = 64  # files per thread-pool task
_DALI_FORMATS, _DALI_MODES = ("PNG", "JPEG"), ("RGB", "L")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG16_MODES = {0: "I;16", 2: "RGB;16", 4: "LA;16", 6: "RGBA;16"}  # by PNG colour type


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Scan:
    """What the scan found (see the module docstring)."""

    good_N: np.ndarray  # bool: the image decodes
    direct_N: np.ndarray  # bool: DALI may decode the file bytes as they are
    stats_N2: np.ndarray  # int64: what a later read compares to notice a changed file
    bad: tuple[tuple[str, str], ...]  # (name, error) of the unreadable files, in name order
    modes: dict[str, int]  # images per mode, readable ones only, most common first
    sizes: tuple[tuple[int, int, int], ...]  # (width, height, images), most common first, at most 8
    num_sizes: int  # distinct sizes
    side_range: tuple[int, int]  # (smallest, largest) shorter side, pixels; (0, 0) without images
    cached: bool  # read from the cache file rather than decoded now

    @property
    def summary(self) -> str:
        """One line: counts per mode and per size, the shorter-side range, unreadable files."""
        n = int(self.good_N.sum())
        modes = ", ".join(f"{mode} {count}" for mode, count in self.modes.items()) or "none"
        sizes = ", ".join(f"{w}x{h} {count}" for w, h, count in self.sizes[:4]) or "none"
        more = f", +{self.num_sizes - 4} more sizes" if self.num_sizes > 4 else ""
        bad = f"; {len(self.bad)} unreadable" if self.bad else ""
        how = "cached scan" if self.cached else "scanned"
        return (f"{how}: {n} images; modes {modes}; sizes {sizes}{more} (shorter side "
                f"{self.side_range[0]}-{self.side_range[1]} px){bad}")


def probe(data: bytes, convert: Callable[[PIL.Image.Image], PIL.Image.Image]) -> tuple[str, int, int, bool]:
    """Decode one file's bytes: (mode, width, height, DALI-direct). Raises when unreadable."""
    with PIL.Image.open(io.BytesIO(data)) as img:
        mode, (w, h), fmt, transparent = img.mode, img.size, img.format, "transparency" in img.info
        if fmt == "JPEG":
            img.draft(img.mode, (1, 1))  # DCT-scaled decode: every coefficient is still read
        img.load()
        png = fmt == "PNG" and data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR"
        depth = data[24] if png else 8
        direct = fmt in _DALI_FORMATS and mode in _DALI_MODES and not transparent and depth == 8
        if not direct:
            convert(img)  # what reading it will do: refuses modes it cannot convert faithfully
    if png and depth == 16:
        mode = _PNG16_MODES.get(data[25], mode)
    return mode, w, h, direct


def describe_file(path: Path, image_extensions: tuple[str, ...]) -> str:
    """What a file that is not a dataset looks like, and what to do, for the error message."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(1024)
    ext = path.suffix.lower()
    if size == 0:
        return "an empty file, not a dataset"
    if head[257:262] == b"ustar" or ext == ".tar":
        return (f"a tar archive ({size} bytes), not a dataset: extract it into a folder (tar xf) or pack the "
                f"images as a zip")
    if head[:2] == b"\x1f\x8b":
        return f"a gzip file ({size} bytes), not a dataset: extract it into a folder (tar xzf or gunzip)"
    if path.name.lower().endswith(image_extensions):
        return f"a single image ({size} bytes), not a dataset: put the images in a folder and pass the folder"
    try:
        head.decode("utf-8")
        kind = "a text file"
    except UnicodeDecodeError:
        kind = "a binary file"
    return f"{kind} ({ext or 'no extension'}, {size} bytes), not a dataset"


def describe_folder(root: Path, image_extensions: tuple[str, ...]) -> str:
    """What a folder without images holds, for the error message."""
    exts, num_dirs = collections.Counter(), 0
    for _, dirnames, filenames in os.walk(root, followlinks=True):
        num_dirs += len(dirnames)
        exts.update(Path(f).suffix.lower() or "(no extension)" for f in filenames)
    if not exts and not num_dirs:
        return "an empty folder"
    kinds = ", ".join(f"{c} {e}" for e, c in exts.most_common(4)) + (", ..." if len(exts) > 4 else "")
    return (f"a folder with {sum(exts.values())} files{f' ({kinds})' if exts else ''} in {num_dirs} subfolders "
            f"and no images ({', '.join(image_extensions)})")


def open_zip(root: Path) -> zipfile.ZipFile | None:
    """The zip at root; None if it is no zip; ValueError if it looks like one but cannot be opened."""
    with open(root, "rb") as f:
        head = f.read(4)
    try:
        return zipfile.ZipFile(root)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        if root.suffix.lower() == ".zip" or head in (b"PK\x03\x04", b"PK\x05\x06"):
            raise ValueError(f"{root} is a damaged zip file ({type(exc).__name__}: {exc}): re-create or "
                             f"re-download it") from exc
        return None


def error_text(exc: Exception) -> str:
    """`Type: message` of a read failure, without PIL's `<_io.BytesIO object at 0x...>`."""
    if isinstance(exc, PIL.UnidentifiedImageError):
        return f"{type(exc).__name__}: not an image format PIL recognises (damaged, or not an image)"
    return f"{type(exc).__name__}: {exc}"


def cache_dir() -> Path:
    """Where scan results are kept: $SGXL_DATA_CACHE, else ~/.cache/stylegan_xl_engine/datascan."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "stylegan_xl_engine" / "datascan")


def cache_file(root: Path) -> Path:
    """The cache file of the dataset at root (one per dataset path)."""
    resolved = str(Path(root).resolve())
    stem = re.sub(r"[^A-Za-z0-9]+", "-", Path(resolved).name).strip("-")[:40] or "dataset"
    return cache_dir() / f"{stem}-{hashlib.sha256(resolved.encode()).hexdigest()[:16]}.json"


def content_key(root: Path, names: list[str], zf: zipfile.ZipFile | None,
                convert: Callable) -> tuple[str, np.ndarray]:
    """(content key, stats_N2) of the image files `names` under root (see the module docstring)."""
    try:
        convert_source = inspect.getsource(convert)
    except (OSError, TypeError):
        convert_source = getattr(convert, "__qualname__", repr(convert))
    h = hashlib.sha256(f"scan{SCAN_VERSION};pil{PIL.__version__};n{len(names)};".encode())
    h.update(convert_source.encode())
    if zf is not None:
        infos = [zf.getinfo(name) for name in names]
        stats_N2 = np.array([(i.file_size, i.CRC) for i in infos], dtype=np.int64).reshape(-1, 2)
        h.update("".join(f"{i.filename}:{i.CRC}:{i.compress_size}:{i.file_size};" for i in infos).encode())
    else:
        def stat(name: str) -> tuple[int, int]:
            try:
                st = os.stat(root / name)
            except OSError:
                return -1, -1  # gone since the folder was listed: the scan reports it unreadable
            return st.st_size, st.st_mtime_ns

        stats_N2 = np.array(_parallel_map(stat, names, "stat"), dtype=np.int64).reshape(-1, 2)
        h.update("".join(f"{name}:{s}:{t};" for name, (s, t) in zip(names, stats_N2.tolist())).encode())
    return h.hexdigest(), stats_N2


def scan(root: Path, names: list[str], *, read: Callable[[str], bytes], zf: zipfile.ZipFile | None,
         convert: Callable) -> Scan:
    """Decode every file `names` (read by `read(name)`), or take the result from the cache."""
    key, stats_N2 = content_key(root, names, zf, convert)
    path = cache_file(root)
    found = _load(path, key, names, stats_N2)
    if found is not None:
        return found

    def one(name: str):
        try:
            return probe(read(name), convert)
        except Exception as exc:  # noqa: BLE001 - any failure means unreadable; reported by name
            return error_text(exc)

    results = _parallel_map(one, names, "scanning images")
    bad = tuple((name, r) for name, r in zip(names, results) if isinstance(r, str))
    ok = [r for r in results if not isinstance(r, str)]
    good_N = np.array([not isinstance(r, str) for r in results], dtype=bool)
    direct_N = np.array([not isinstance(r, str) and r[3] for r in results], dtype=bool)
    modes = collections.Counter(mode for mode, _, _, _ in ok)
    sizes = collections.Counter((w, h) for _, w, h, _ in ok)
    sides = [min(w, h) for _, w, h, _ in ok]
    found = Scan(good_N=good_N, direct_N=direct_N, stats_N2=stats_N2, bad=bad, modes=dict(modes.most_common()),
                 sizes=tuple((w, h, c) for (w, h), c in sizes.most_common(8)), num_sizes=len(sizes),
                 side_range=(min(sides), max(sides)) if sides else (0, 0), cached=False)
    _store(path, key, str(root), names, found)
    return found


def _parallel_map(fn: Callable, items: list, desc: str) -> list:
    """[fn(x) for x in items] on a thread pool, in order, with a progress bar for many items."""
    if len(items) <= _CHUNK:
        return [fn(x) for x in items]
    from tqdm import tqdm

    workers = min(32, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    chunks = [items[k : k + _CHUNK] for k in range(0, len(items), _CHUNK)]
    out = []
    quiet = len(items) < PROGRESS_MIN or not sys.stderr.isatty()
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="datascan") as pool, \
            tqdm(total=len(items), desc=desc, unit="file", file=sys.stderr, disable=quiet, mininterval=0.5) as bar:
        for part in pool.map(lambda chunk: [fn(x) for x in chunk], chunks):
            out += part
            bar.update(len(part))
    return out


def _load(path: Path, key: str, names: list[str], stats_N2: np.ndarray) -> Scan | None:
    """The cached scan at path if it was made for `key`, else None (unreadable files included)."""
    try:
        saved = json.loads(path.read_text())
        if saved["version"] != SCAN_VERSION or saved["key"] != key or saved["num_files"] != len(names):
            return None
        n = len(names)
        direct_N = np.unpackbits(np.frombuffer(base64.b64decode(saved["direct"]), dtype=np.uint8), count=n)
        good_N = np.ones(n, dtype=bool)
        bad = []
        for index, name, err in saved["bad"]:
            if names[index] != name:
                return None
            good_N[index] = False
            bad.append((name, str(err)))
        return Scan(good_N=good_N, direct_N=direct_N.astype(bool), stats_N2=stats_N2, bad=tuple(bad),
                    modes={str(m): int(c) for m, c in saved["modes"]},
                    sizes=tuple((int(w), int(h), int(c)) for w, h, c in saved["sizes"]),
                    num_sizes=int(saved["num_sizes"]), side_range=tuple(int(s) for s in saved["side_range"]),
                    cached=True)
    except Exception:  # noqa: BLE001 - missing, corrupt or foreign: scan again and rewrite it
        return None


def _store(path: Path, key: str, root: str, names: list[str], found: Scan) -> None:
    index = {name: k for k, name in enumerate(names)}
    saved = {"version": SCAN_VERSION, "key": key, "root": root, "num_files": len(names),
             "bad": [[index[name], name, err] for name, err in found.bad],
             "direct": base64.b64encode(np.packbits(found.direct_N).tobytes()).decode(),
             "modes": [[m, c] for m, c in found.modes.items()], "sizes": [list(s) for s in found.sizes],
             "num_sizes": found.num_sizes, "side_range": list(found.side_range)}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(saved))
        os.replace(tmp, path)  # several ranks may write the same result; any one of them wins
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
