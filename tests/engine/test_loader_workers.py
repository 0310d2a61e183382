"""The one data-parallelism knob (--workers, make_loader's num_workers): DALI's num_threads and
its parallel file readers follow it, the batches and resume positions do not, files are read
on several threads (each with its own zip handle), and a corrupt file is still named.

Legend: images_NCHW uint8 batch, labels_N int64.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import PIL.Image
import pytest
import torch

from engine.data import DatasetSpec, FileDataset, open_dataset
from engine.loader import make_loader
from tests.engine.test_data import (  # noqa: F401
    class_folder, encode, needs_dali, scan_cache, smooth_image, write_stylegan)

pytestmark = needs_dali


@pytest.fixture(params=["zip", "classes"])
def dataset(request, tmp_path):
    """A StyleGAN zip of 23 16² PNGs (nothing to resize: DALI matches the torch path exactly) or
    the ImageNet-layout folder of test_data (PNG and JPEG of several sizes); mirrored."""
    if request.param == "zip":
        path = write_stylegan(tmp_path / "d.zip", [i % 4 for i in range(23)])
        return open_dataset(DatasetSpec(path=str(path), resolution=16, cond=True, mirror=True))
    folder = request.getfixturevalue("class_folder")
    return open_dataset(DatasetSpec(path=str(folder), resolution=16, cond=True, mirror=True))


def take(loader, n: int):
    out = [next(loader) for _ in range(n)]
    return out, json.loads(json.dumps(loader.state_dict()))


def assert_same(got, expected):
    assert len(got) == len(expected)
    for (x, y), (ex, ey) in zip(got, expected):
        assert torch.equal(x, ex) and torch.equal(y, ey)


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_dali_num_threads_is_workers(dataset, workers):
    loader = make_loader(dataset, batch_size=4, backend="dali", num_workers=workers)
    assert loader.pipeline is None  # started with the first batch
    next(loader)
    assert loader.pipeline.num_threads == max(1, workers)
    loader.close()
    assert loader.pipeline is None


def test_batches_and_resume_do_not_depend_on_workers(dataset):
    """Same batches in the same order for 0, 1 and 3 workers, across epoch boundaries (7 per
    batch, 46 or 18 items), and a position saved with one count resumes exactly with another."""
    runs = {}
    for workers in (0, 1, 3):
        loader = make_loader(dataset, batch_size=7, seed=4, backend="dali", num_workers=workers)
        runs[workers] = take(loader, 8)
        loader.close()
    for workers in (1, 3):
        assert_same(runs[workers][0], runs[0][0])
        assert runs[workers][1] == runs[0][1]
    torch_loader = make_loader(dataset, batch_size=7, seed=4, backend="torch")
    torch_batches, torch_state = take(torch_loader, 8)
    assert torch_state == runs[0][1]
    for (_, y), (_, ty) in zip(runs[0][0], torch_batches):
        assert torch.equal(y, ty)  # the order the torch path reads (labels follow the items)
    if dataset.name.endswith(".zip"):  # no resize: the images are exactly the torch path's
        assert_same(runs[0][0], torch_batches)
    for saved, resumed in ((1, 3), (3, 1)):
        first = make_loader(dataset, batch_size=7, seed=4, backend="dali", num_workers=saved)
        _, state = take(first, 3)
        first.close()
        second = make_loader(dataset, batch_size=7, seed=4, backend="dali", num_workers=resumed)
        next(second)  # running (and reading ahead) already: load_state_dict restarts it
        second.load_state_dict(state)
        assert_same(take(second, 5)[0], runs[0][0][3:])
        second.close()


class ReadLog:
    """Wraps FileDataset.dali_input: which thread and which dataset object read each file, and
    the most reads in flight at once (each read sleeps 20 ms so that overlapping ones show)."""

    def __init__(self, monkeypatch):
        self.lock, self.active, self.max_active, self.reads = threading.Lock(), 0, 0, []
        original = FileDataset.dali_input
        log = self

        def dali_input(ds, raw):
            with log.lock:
                log.active += 1
                log.max_active = max(log.max_active, log.active)
                log.reads.append((threading.get_ident(), ds))
            try:
                time.sleep(0.02)
                return original(ds, raw)
            finally:
                with log.lock:
                    log.active -= 1

        monkeypatch.setattr(FileDataset, "dali_input", dali_input)


@pytest.mark.parametrize("workers", [0, 3])
def test_files_are_read_on_several_threads(tmp_path, monkeypatch, workers):
    path = write_stylegan(tmp_path / "d.zip", [0] * 24)
    ds = open_dataset(DatasetSpec(path=str(path), resolution=16))
    log = ReadLog(monkeypatch)
    loader = make_loader(ds, batch_size=6, backend="dali", num_workers=workers)
    batches = [next(loader) for _ in range(3)]
    loader.close()
    threads = {ident for ident, _ in log.reads}
    main = threading.get_ident()
    if workers == 0:
        assert threads == {main} and log.max_active == 1 and all(d is ds for _, d in log.reads)
    else:
        assert main not in threads and 2 <= len(threads) <= workers and log.max_active >= 2
        # each reader thread reads through its own copy of the dataset (its own zip handle)
        copies = {ident: {id(d) for i, d in log.reads if i == ident} for ident in threads}
        assert all(len(c) == 1 for c in copies.values()) and len(set().union(*copies.values())) == len(threads)
        assert all(d is not ds for _, d in log.reads)
    assert len(log.reads) > 18  # DALI's prefetch queue and the reader pool read ahead of the 3 batches
    assert all(x.shape == (6, 3, 16, 16) for x, _ in batches)


def test_zero_workers_is_valid_and_negative_is_not(dataset):
    for backend in ("torch", "dali"):
        loader = make_loader(dataset, batch_size=4, backend=backend, num_workers=0)
        x, y = next(loader)
        assert x.shape == (4, 3, 16, 16) and y.shape == (4,)
        loader.close()
    with pytest.raises(ValueError, match="num_workers >= 0"):
        make_loader(dataset, batch_size=4, num_workers=-1)


@pytest.mark.parametrize("workers", [0, 3])
@pytest.mark.parametrize("bad", ["truncated.png", "palette.png"])
def test_corrupt_file_is_named(tmp_path, workers, bad):
    """A file damaged after the open-time scan (which would have refused it): truncated.png, a
    plain PNG DALI would decode; palette.png, converted on the host (a reader thread, with
    workers > 0). Both are decoded on the host once changed, where PIL fails, naming the file."""
    for k in range(5):
        (tmp_path / f"good{k}.png").write_bytes(encode(smooth_image(12, 12, k)))
    image = smooth_image(64, 64)
    data = encode(PIL.Image.fromarray(image).convert("P") if bad == "palette.png" else image)
    (tmp_path / bad).write_bytes(data)
    ds = open_dataset(DatasetSpec(path=str(tmp_path), resolution=8))
    assert len(ds) == 6 and bad in {ds.file_name(i) for i in range(6)}
    (tmp_path / bad).write_bytes(data[: len(data) // 2])
    loader = make_loader(ds, batch_size=4, backend="dali", num_workers=workers)
    with pytest.raises(ValueError, match=bad.replace(".", r"\.")):
        for _ in range(3):
            next(loader)
    assert loader.pipeline is None  # the failed pipeline and its readers are gone
    np.testing.assert_array_equal(ds.labels, np.zeros(6, dtype=np.int64))
