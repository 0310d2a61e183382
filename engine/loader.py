"""Loaders: batches of a dataset (engine/data.py) through NVIDIA DALI or a torch DataLoader,
sharded across ranks, resumable at an exact position (state_dict / load_state_dict).

One knob sets the data parallelism, `num_workers` (`--workers`, TrainConfig.workers): the torch
DataLoader's worker processes, or for DALI both the pipeline's CPU threads (`num_threads`,
decode and resize on CPU) and the threads reading the files that feed it. 0 means: read in the
training process (DataLoader in-process; DALI with one thread, files read as DALI asks for them).

Legend: images_NCHW uint8 batch, labels_N int64.
"""

from __future__ import annotations

import collections
import concurrent.futures
import copy
import threading
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from engine.data import Dataset



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
    """DALI external source (non-parallel: DALI calls it once per batch, in order, on the thread
    that runs the pipeline). Returns (inputs, mirror flags, labels), one entry per sample; the
    label is that of the image read (with skip_bad an unreadable image is replaced, Dataset.fetch).

    With `readers` > 0 the batch's files are read by a pool of that many threads, and the next
    batch's reads are queued when a batch is handed over, so reading overlaps the training step
    (DALI's own prefetch queue keeps two more batches ahead). Each thread reads through its own
    shallow copy of the dataset, i.e. its own zip handle (FileDataset drops the handle on copy).
    With readers = 0 the files are read in the calling thread, one after another.

    Why threads rather than DALI's parallel external source (worker processes): file reads and
    zip member reads release the GIL and decoding happens in DALI's threads anyway, so threads
    give the parallelism without spawn workers that re-import `__main__` (engine/train.py under
    the deepspeed launcher), without pickling the dataset into each worker, and with the reader's
    exception (a ValueError naming the file) reaching the training thread as it was raised. The
    order is exact by construction: the item indices are drawn here, in order, and the results
    are gathered by position, so batches and Loader.state_dict() are the same for any `readers`.
    """

    def __init__(self, dataset: Dataset, batches, *, readers: int):
        self.dataset, self.batches, self.recent = dataset, batches, []
        self._pool = (concurrent.futures.ThreadPoolExecutor(readers, thread_name_prefix="dali-read")
                      if readers else None)
        self._local = threading.local()
        self._pending = collections.deque()  # ((input, raw) reads or their futures, flips), in order

    def _read(self, raw: int) -> tuple[np.ndarray, int]:
        """(DALI's input, raw index read) for raw image `raw`, on a reader thread, through that
        thread's dataset copy."""
        dataset = getattr(self._local, "dataset", None)
        if dataset is None:
            dataset = self._local.dataset = copy.copy(self.dataset)
        return dataset.dali_item(raw)

    def _queue_next(self) -> None:
        items_N = next(self.batches)
        self.recent = (self.recent + [items_N])[-8:]  # batches queued or in DALI's prefetch queue, to name a bad file
        raws = [self.dataset.raw_index(int(i)) for i in items_N]
        if self._pool is None:
            reads = [self.dataset.dali_item(raw) for raw, _ in raws]
        else:
            reads = [self._pool.submit(self._read, raw) for raw, _ in raws]
        self._pending.append((reads, [np.array(flip, dtype=np.int32) for _, flip in raws]))

    def __call__(self):
        while len(self._pending) < (1 if self._pool is None else 2):  # this batch, and the next one reading
            self._queue_next()
        reads, flips = self._pending.popleft()
        if self._pool is not None:
            reads = [future.result() for future in reads]  # re-raises a reader's error
        # the label of the image actually read: with skip_bad an unreadable one is replaced (Dataset.fetch)
        labels = [np.array(self.dataset.labels[raw], dtype=np.int64) for _, raw in reads]
        return [data for data, _ in reads], flips, labels

    def close(self) -> None:
        """Drop queued reads and stop the reader threads."""
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


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
    Backends: "dali" (DALI pipeline with num_threads = max(1, num_workers), fed by an external
    source whose files num_workers threads read one batch ahead, see _DaliSource; decodes on the
    GPU with `mixed` when device is CUDA), "torch" (DataLoader with num_workers worker processes,
    PIL decode), "auto" (DALI for file datasets when importable, else torch: the synthetic dataset has
    nothing to decode and its rendering parallelizes over DataLoader workers, so auto picks torch
    for it; backend="dali" feeds its rendered pixels through the pipeline instead).
    The batches do not depend on num_workers. `pipeline` is the running DALI pipeline (None
    before the first batch, after close() and on the torch backend).
    """

    def __init__(self, dataset: Dataset, *, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 device="cpu", backend: str = "auto", num_workers: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"need batch_size >= 1 and num_workers >= 0; got {batch_size}, {num_workers}")
        if len(dataset) < world_size:
            raise ValueError(f"{dataset.name}: {len(dataset)} items cannot be sharded over {world_size} ranks")
        if backend not in ("auto", "dali", "torch"):
            raise ValueError(f"backend must be 'auto', 'dali' or 'torch', got {backend!r}")
        if backend == "auto":
            backend = "dali" if dataset.encoded and dali_available() else "torch"
        self.dataset, self.batch_size, self.backend = dataset, batch_size, backend
        self.device, self.seed = torch.device(device), seed
        self.num_workers = num_workers
        self.pipeline = None
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
        source = _DaliSource(self.dataset, batches, readers=self.num_workers)
        self.pipeline = _dali_pipeline(self.dataset, source, batch_size=self.batch_size, device_id=device_id,
                                       num_threads=max(1, self.num_workers), seed=self.seed)
        try:
            iterator = DALIGenericIterator([self.pipeline], ["images", "labels"])
            while True:
                out = next(iterator)[0]
                yield out["images"].to(self.device), out["labels"].reshape(-1).to(self.device)
        except Exception:
            for items_N in source.recent:  # name the file DALI (or a reader thread) could not decode
                for i in items_N:
                    self.dataset.get(int(i))  # raises ValueError naming the file
            raise
        finally:
            source.close()
            self.pipeline = None


def dali_available() -> bool:
    """Whether NVIDIA DALI and its PyTorch plugin import."""
    try:
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def make_loader(dataset: Dataset, *, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                device="cpu", backend: str = "auto", num_workers: int = 0) -> Loader:
    """Infinite, sharded, resumable batch iterator over dataset (see Loader).

    batch_size: images per rank per step. rank/world_size: the global rank and the number of
    ranks (shard_id and num_shards). seed: the shuffle seed, the same on every rank.
    num_workers (--workers): torch DataLoader worker processes; for DALI its CPU threads and the
    file-reading threads feeding it (0: read in the training process). Batches do not depend on it.
    """
    return Loader(dataset, batch_size=batch_size, rank=rank, world_size=world_size, seed=seed, device=device,
                  backend=backend, num_workers=num_workers)
