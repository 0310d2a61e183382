"""Quality metrics of a generator against its dataset (SPEC 7): FID, rFID, KID, precision/recall.

Protocol. Generated images: z ~ N(0, I) and classes uniform over c_dim, drawn for all num_gen
images at once from torch.Generator().manual_seed(seed) on the CPU, so image i depends only on
(seed, i), not on the batch size or the number of ranks; psi = 1; G runs in batches of `batch`
(not the original's 4: outputs do not depend on it beyond float rounding); images quantized as
clamp(x * 127.5 + 128, 0, 255) -> uint8. Real images: the whole dataset at the stage resolution
(G's), no x-flip. Ranks take contiguous shares of both; moments are all-reduced and features
gathered with torch.distributed when it is initialized; rank 0 computes and broadcasts the values.

Real statistics are cached in cache_dir (default $SGXL_METRICS_CACHE, else
~/.cache/stylegan_xl_engine/metrics) as one safetensors file per (dataset content, resolution,
detector identity): mu and sigma (float64, biased covariance as StyleGAN) over the whole dataset,
plus, for KID/PR, the features (float32) of the first max_real images. The key hashes: for a zip,
each member's name, size and CRC-32; for a folder, each file's name, size and mtime; for the
synthetic dataset, its seed, size and renderer source; plus the resolution, the preprocessing
code, the Pillow version and the detector identity (preprocessing + SHA-256 of its weights, so the
rFID seed is part of it). Datasets of other types are keyed by a hash of their pixels.

Metrics (METRICS): fid50k_full, fid10k_full (Inception), rfid50k_full, rfid10k_full, rfid5k_full
(random Inception, seed rfid_seed, decision D5), rfid1k_128 (the same, CPU-sized), shapes_fid and
shapes_acc (1k generated images; the judge of the built-in dataset, engine/judge.py: Fréchet
distance of its 128 penultimate features, and the fraction of samples it assigns to their class;
offline, any resolution), kid50k_full (50k generated vs up to 1M real,
100 subsets of 1000), pr50k3_full (VGG16, k = 3, up to 200k real). `num_gen=` overrides the
generated count of any of them. Weights: see engine/inception.py.

CLI: python -m engine.metrics --network CKPT --metrics rfid50k_full,fid50k_full [--data PATH]
prints one JSON object (values, detector identities, seeds).

Legend: feat_NF features, mu_F means, sigma_FF covariances, images_NCHW uint8 images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import re
import weakref
import zipfile
from pathlib import Path

import PIL
import torch
from tqdm import tqdm

from engine import data, errors, inception, synthetic
from engine.metric_math import (  # noqa: F401  (feature_moments, frechet_distance: public here too)
    feature_moments, fid_from_features, frechet_distance, kid, precision_recall)

CACHE_ENV = "SGXL_METRICS_CACHE"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class MetricSpec:
    kind: str  # "fid", "kid", "pr" or "acc" (judge accuracy)
    detector: str  # "inception", "inception_random", "vgg16" or "shapes_judge"
    num_gen: int  # generated images
    max_real: int | None = None  # real images for KID/PR features (None = all); FID moments always use all
    k: int = 3  # precision/recall neighbourhood size
    size: int | None = None  # detector input side; None = the protocol's (299 Inception, 224 VGG16)


METRICS = {
    "fid50k_full": MetricSpec(kind="fid", detector="inception", num_gen=50_000),
    "fid10k_full": MetricSpec(kind="fid", detector="inception", num_gen=10_000),
    "rfid50k_full": MetricSpec(kind="fid", detector="inception_random", num_gen=50_000),
    "rfid10k_full": MetricSpec(kind="fid", detector="inception_random", num_gen=10_000),
    "rfid5k_full": MetricSpec(kind="fid", detector="inception_random", num_gen=5_000),
    # CPU-sized rFID for the quick start: 1k generated images, the random Inception at 128 px.
    # A trend within one run, comparable only with itself (not with the protocol's rFID).
    "rfid1k_128": MetricSpec(kind="fid", detector="inception_random", num_gen=1_000, size=128),
    # The built-in dataset's judge (engine/judge.py): readable on a CPU, the defaults for that data.
    "shapes_fid": MetricSpec(kind="fid", detector="shapes_judge", num_gen=1_000),
    "shapes_acc": MetricSpec(kind="acc", detector="shapes_judge", num_gen=1_000),
    "kid50k_full": MetricSpec(kind="kid", detector="inception", num_gen=50_000, max_real=1_000_000),
    "pr50k3_full": MetricSpec(kind="pr", detector="vgg16", num_gen=50_000, max_real=200_000, k=3),
}


def _spec(name: str) -> MetricSpec:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    return METRICS[name]


def is_better(name: str, a: float, b: float | None) -> bool:
    """Whether value a of metric (or result key) `name` beats b: lower FID/rFID/KID, higher
    precision/recall. b None (no value yet) loses to anything."""
    if b is None:
        return True
    if name.endswith(("_precision", "_recall")) or _spec(name).kind == "acc":
        return a > b
    if _spec(name).kind == "pr":
        raise ValueError(f"{name} has two values: compare {name}_precision or {name}_recall")
    return a < b


# -- distributed helpers ------------------------------------------------------------------------------

def _share(n: int, rank: int, world_size: int) -> range:
    """Contiguous share of rank among n items (the last ranks may get fewer or none)."""
    per = -(-n // world_size)
    return range(min(rank * per, n), min((rank + 1) * per, n))


def _distributed(world_size: int) -> bool:
    if world_size == 1:
        return False
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise ValueError(f"world_size={world_size} needs an initialized torch.distributed process group (one "
                         f"rank's share alone comes from generated_features(..., rank=, world_size=))")
    return True


def _gather_rows(local: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Concatenate every rank's rows (counts[r] rows on rank r) in rank order, on every rank."""
    pad = max(counts)
    buf = torch.zeros((pad, *local.shape[1:]), dtype=local.dtype, device=local.device)
    buf[: local.shape[0]] = local
    parts = [torch.empty_like(buf) for _ in counts]
    torch.distributed.all_gather(parts, buf)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


# -- generated images ---------------------------------------------------------------------------------

# Images per G forward on a CPU: a small generator's activations stay in cache, 64 at once do not
# (tiny preset, 2-core CPU: 145 img/s at 4-8 per forward, 50-80 img/s at 64; measured).
CPU_G_CHUNK = 8


def generated_images(G: torch.nn.Module, num_gen: int, *, batch: int = 64, seed: int = 0, rank: int = 0,
                     world_size: int = 1, device=None, with_labels: bool = False):
    """Yield this rank's share of the num_gen metric images as uint8 [B, 3, R, R] batches on device
    (with_labels: (images, classes [B] or None) pairs)."""
    cfg = G.cfg
    device = torch.device(device) if device is not None else next(G.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    z_all = torch.randn(num_gen, cfg.z_dim, generator=gen)
    c_all = torch.randint(0, cfg.c_dim, (num_gen,), generator=gen) if cfg.c_dim else None
    share = _share(num_gen, rank, world_size)
    if device.type == "cpu":
        batch = min(batch, CPU_G_CHUNK)
    with torch.no_grad():
        for start in range(share.start, share.stop, batch):
            sl = slice(start, min(start + batch, share.stop))
            c = c_all[sl].to(device) if c_all is not None else None
            img = (G(z_all[sl].to(device), c, psi=1.0).float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
            yield (img, c) if with_labels else img


def generated_features(G: torch.nn.Module, detector: torch.nn.Module, num_gen: int, *, batch: int = 64,
                       seed: int = 0, rank: int = 0, world_size: int = 1, device=None,
                       progress: bool = False) -> torch.Tensor:
    """Detector features [share, F] of this rank's share of the num_gen images (see generated_images)."""
    bar = tqdm(total=len(_share(num_gen, rank, world_size)), desc="generated features", unit="img",
               disable=not progress or rank != 0, dynamic_ncols=True, leave=False)
    feats = []
    with torch.no_grad(), bar:
        for images in generated_images(G, num_gen, batch=batch, seed=seed, rank=rank, world_size=world_size,
                                       device=device):
            feats.append(detector(images))
            bar.update(images.shape[0])
    if not feats:
        dev = torch.device(device) if device is not None else next(G.parameters()).device
        return torch.zeros(0, detector.feature_dim, device=dev)
    return torch.cat(feats)


def judge_pass(G: torch.nn.Module, judge, num_gen: int, *, batch: int = 64, seed: int = 0, rank: int = 0,
               world_size: int = 1, device=None, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of the judge over this rank's share of the num_gen images (see generated_images):
    its features [share, 128] (for shapes_fid) and [correct, total] (float64, this rank's; for
    shapes_acc: images it assigns to the class they were generated for). Unconditional G: no
    class counts ([0, 0])."""
    device = torch.device(device) if device is not None else next(G.parameters()).device
    counts = torch.zeros(2, dtype=torch.float64, device=device)  # correct, total
    feats = []
    bar = tqdm(total=len(_share(num_gen, rank, world_size)), desc="judged images", unit="img",
               disable=not progress or rank != 0, dynamic_ncols=True, leave=False)
    with torch.no_grad(), bar:
        for images, c in generated_images(G, num_gen, batch=batch, seed=seed, rank=rank, world_size=world_size,
                                          device=device, with_labels=True):
            f = judge(images)
            feats.append(f)
            if c is not None:
                counts[0] += (judge.classify(f).argmax(1) == c).sum()
                counts[1] += c.numel()
            bar.update(images.shape[0])
    feats = torch.cat(feats) if feats else torch.zeros(0, judge.feature_dim, device=device)
    return feats, counts


def _check_conditional(G: torch.nn.Module) -> None:
    if not G.cfg.c_dim:
        raise ValueError("shapes_acc needs a class-conditional generator (c_dim > 0): this one is unconditional; "
                         "use shapes_fid")


def judge_accuracy(G: torch.nn.Module, judge, num_gen: int, *, batch: int = 64, seed: int = 0, rank: int = 0,
                   world_size: int = 1, device=None, progress: bool = False,
                   counts: torch.Tensor | None = None) -> float:
    """shapes_acc: the fraction of the num_gen class-conditional images (classes uniform, see
    generated_images) that the judge assigns to the class they were generated for (all ranks).
    counts: this rank's [correct, total] from judge_pass, instead of a new pass."""
    _check_conditional(G)
    if counts is None:
        _, counts = judge_pass(G, judge, num_gen, batch=batch, seed=seed, rank=rank, world_size=world_size,
                               device=device, progress=progress)
    counts = counts.clone()
    if _distributed(world_size):
        torch.distributed.all_reduce(counts)
    return (counts[0] / counts[1]).item()


# -- real statistics ----------------------------------------------------------------------------------

@dataclasses.dataclass(kw_only=True)
class RealStats:
    num_items: int  # images in the dataset (no x-flip)
    mu: torch.Tensor  # float64 [F]
    sigma: torch.Tensor  # float64 [F, F], biased
    features: torch.Tensor | None  # float32 [M, F]: the first M images (None when not captured)


_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # dataset -> content hash


def dataset_fingerprint(dataset: data.Dataset) -> str:
    """SHA-256 of what determines the dataset's pixels at its resolution (see the module docstring)."""
    if dataset in _FINGERPRINTS:
        return _FINGERPRINTS[dataset]
    h = hashlib.sha256(f"res={dataset.resolution};n={dataset.num_raw};".encode())
    if isinstance(dataset, data.SyntheticDataset):
        h.update(f"synthetic;seed={dataset.spec.seed};".encode())
        h.update(Path(synthetic.__file__).read_bytes())
    elif isinstance(dataset, data.FileDataset):
        h.update(f"pil={PIL.__version__};".encode())
        h.update(inspect.getsource(data.to_rgb).encode() + inspect.getsource(data.center_crop_resize).encode())
        root = Path(dataset.spec.path)
        names = [dataset.file_name(i) for i in range(dataset.num_raw)]
        if root.is_file():
            with zipfile.ZipFile(root) as zf:
                for name in names:
                    info = zf.getinfo(name)
                    h.update(f"{name}:{info.file_size}:{info.CRC};".encode())
        else:
            for name in names:
                st = (root / name).stat()
                h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    else:
        h.update(type(dataset).__qualname__.encode())
        for i in range(dataset.num_raw):
            h.update(dataset.get(i)[0])
    _FINGERPRINTS[dataset] = digest = h.hexdigest()
    return digest


def cache_path(dataset: data.Dataset, detector: inception.FeatureDetector, cache_dir: str | os.PathLike) -> Path:
    """The statistics file of (dataset content, resolution, detector identity) in cache_dir."""
    key = hashlib.sha256(f"{dataset_fingerprint(dataset)};{detector.identity}".encode()).hexdigest()[:20]
    stem = re.sub(r"[^A-Za-z0-9]+", "-", Path(dataset.name.rstrip("/")).name).strip("-")[:40] or "dataset"
    return Path(cache_dir) / f"{stem}-{dataset.resolution}px-{detector.name}-{key}.safetensors"


def _default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "stylegan_xl_engine" / "metrics")


class _Items(torch.utils.data.Dataset):
    def __init__(self, dataset: data.Dataset, indices: range):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.dataset.get(self.indices[i])[0])  # raw image: no x-flip


def _load_cache(path: Path, max_features: int) -> RealStats | None:
    from safetensors import safe_open

    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        have = int(json.loads(f.metadata()["meta"])["num_features"])
        if have < max_features:
            return None
        feats = f.get_slice("features")[:max_features] if max_features else None
        return RealStats(num_items=int(f.get_tensor("num_items")), mu=f.get_tensor("mu"), sigma=f.get_tensor("sigma"),
                         features=feats)


def _save_cache(path: Path, stats: RealStats, key: dict) -> None:
    from safetensors.torch import save_file

    tensors = {"mu": stats.mu.cpu(), "sigma": stats.sigma.cpu(), "num_items": torch.tensor(stats.num_items)}
    if stats.features is not None:
        tensors["features"] = stats.features.cpu().contiguous()
    meta = dict(key, num_features=0 if stats.features is None else stats.features.shape[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)})
    os.replace(tmp, path)


def real_stats(dataset: data.Dataset, detector: inception.FeatureDetector, *, max_features: int = 0,
               batch: int = 64, device=None, rank: int = 0, world_size: int = 1,
               cache_dir: str | os.PathLike | None = None, num_workers: int = 0,
               progress: bool = False) -> RealStats | None:
    """Moments over the whole dataset (no x-flip) and the features of its first max_features images.

    Read from the cache when a file there has at least that many features; otherwise computed
    (ranks split the images; moments all-reduced, features gathered) and written by rank 0.
    cache_dir=None uses the default; pass cache_dir=False to skip the cache.
    Returns None on ranks > 0 when rank 0 read the cache (only rank 0 computes the metrics).
    """
    device = torch.device(device) if device is not None else detector.offset.device
    dist = _distributed(world_size)
    max_features = min(max_features, dataset.num_raw)
    path = None if cache_dir is False else cache_path(dataset, detector, cache_dir or _default_cache_dir())
    cached = _load_cache(path, max_features) if path is not None and rank == 0 else None
    hit = cached is not None
    if dist:  # rank 0 decides; the other ranks then have nothing to compute
        flag = torch.tensor([float(hit)], device=device)
        torch.distributed.broadcast(flag, src=0)
        hit = bool(flag.item())
    if hit:
        return cached

    share = _share(dataset.num_raw, rank, world_size)
    f = detector.feature_dim
    total = torch.zeros(f, dtype=torch.float64, device=device)
    gram = torch.zeros(f, f, dtype=torch.float64, device=device)
    captured = []
    loader = torch.utils.data.DataLoader(_Items(dataset, share), batch_size=batch, num_workers=num_workers,
                                         pin_memory=device.type == "cuda")
    bar = tqdm(total=len(share), desc=f"real features {dataset.resolution}px", unit="img",
               disable=not progress or rank != 0, dynamic_ncols=True, leave=False)
    start = share.start
    with torch.no_grad(), bar:
        for images in loader:
            feat = detector(images.to(device, non_blocking=True))
            x = feat.double()
            total += x.sum(0)
            gram += x.T @ x
            keep = max(0, min(feat.shape[0], max_features - start))
            if keep:
                captured.append(feat[:keep])
            start += feat.shape[0]
            bar.update(feat.shape[0])
    local = torch.cat(captured) if captured else torch.zeros(0, f, device=device)
    if dist:
        torch.distributed.all_reduce(total)
        torch.distributed.all_reduce(gram)
        counts = [max(0, min(s.stop, max_features) - s.start) for s in
                  (_share(dataset.num_raw, r, world_size) for r in range(world_size))]
        local = _gather_rows(local, counts)
    n = dataset.num_raw
    mu = total / n
    stats = RealStats(num_items=n, mu=mu, sigma=gram / n - torch.outer(mu, mu),
                      features=local.cpu() if max_features else None)
    if path is not None and rank == 0:
        key = {"dataset": dataset.name, "fingerprint": dataset_fingerprint(dataset),
               "resolution": dataset.resolution, "detector": detector.identity}
        _save_cache(path, stats, key)
    return stats


# -- the metrics --------------------------------------------------------------------------------------

def metric_detector(name: str, *, inception_weights=None, vgg16_weights=None, rfid_seed: int = 0,
                    size: int | None = None) -> inception.FeatureDetector:
    """The detector of metric `name` (CPU). size overrides its input side (quick tests only)."""
    spec = _spec(name)
    size = size or spec.size
    sized = {} if size is None else {"size": size}
    if spec.detector == "shapes_judge":
        from engine.judge import load_judge

        return load_judge()
    if spec.detector == "inception_random":
        return inception.inception_v3("random", seed=rfid_seed, **sized)
    if spec.detector == "inception":
        return inception.inception_v3(inception_weights, seed=rfid_seed, **sized)
    return inception.vgg16(vgg16_weights, seed=rfid_seed, **sized)


def _stage_dataset(dataset, resolution: int) -> data.Dataset:
    if isinstance(dataset, data.DatasetSpec):
        return data.open_dataset(dataclasses.replace(dataset, resolution=resolution, mirror=False))
    if dataset.resolution != resolution:
        raise ValueError(f"{dataset.name} is opened at {dataset.resolution}px but G makes {resolution}px images: "
                         f"real statistics need the dataset at the stage resolution (pass a DatasetSpec to resize)")
    return dataset


def compute_metric(name: str, G: torch.nn.Module, dataset, *, num_gen: int | None = None, batch: int = 64,
                   device=None, rank: int = 0, world_size: int = 1, cache_dir: str | os.PathLike | None = None,
                   seed: int = 0, progress: bool = True, inception_weights=None, vgg16_weights=None,
                   rfid_seed: int = 0, detector: inception.FeatureDetector | None = None,
                   detector_size: int | None = None, num_workers: int = 0,
                   shared: dict | None = None) -> dict[str, float]:
    """Metric `name` of G (G_ema, psi = 1) against dataset, on every rank.

    Args:
        dataset: a Dataset at G's resolution, or a DatasetSpec (opened at G's resolution, no mirror).
        num_gen: generated images (None = the metric's count, e.g. 50k).
        batch: generator and detector batch per rank. seed: latents and classes (and KID subsets).
        device: where G and the detector run (None = G's device).
        rank, world_size: this process and the number of processes sharing the work.
        cache_dir: real-statistics cache (None = default, False = none).
        inception_weights, vgg16_weights: weights files (None = env/hub cache; see engine/inception.py).
        rfid_seed: initialization seed of the random Inception of rFID (decision D5).
        detector: use this detector instead of building the metric's one.
        detector_size: detector input side (None = 299/224; smaller values only for quick tests).
        num_workers: data-loader workers decoding the real images.
        shared: a dict passed to every compute_metric call of one evaluation of the same G (and
            seed): metrics of the same pass share it (shapes_fid and shapes_acc: one judge pass).
    Returns:
        {name: value} for FID/rFID/KID; {name_precision, name_recall} for precision/recall.
    Raises:
        RuntimeError: the metric's pretrained weights are missing (the message names the options).
    """
    spec = _spec(name)
    device = torch.device(device) if device is not None else next(G.parameters()).device
    dist = _distributed(world_size)
    if detector is None:
        detector = metric_detector(name, inception_weights=inception_weights, vgg16_weights=vgg16_weights,
                                   rfid_seed=rfid_seed, size=detector_size)
    detector = detector.to(device)
    n_gen = num_gen or spec.num_gen
    judged = None
    if spec.kind == "acc":
        _check_conditional(G)
    if spec.detector == "shapes_judge":
        key = ("shapes_judge", n_gen, seed, batch)
        judged = shared.get(key) if shared is not None else None
        if judged is None:
            judged = judge_pass(G, detector, n_gen, batch=batch, seed=seed, rank=rank, world_size=world_size,
                                device=device, progress=progress)
            if shared is not None and G.cfg.c_dim:  # unconditional: only shapes_fid uses it
                shared[key] = judged
    if spec.kind == "acc":
        return {name: judge_accuracy(G, detector, n_gen, world_size=world_size, counts=judged[1])}
    dataset = _stage_dataset(dataset, G.cfg.resolution)
    max_features = 0 if spec.kind == "fid" else min(spec.max_real or dataset.num_raw, dataset.num_raw)
    real = real_stats(dataset, detector, max_features=max_features, batch=batch, device=device, rank=rank,
                      world_size=world_size, cache_dir=cache_dir, num_workers=num_workers, progress=progress)
    gen = judged[0] if judged is not None else generated_features(
        G, detector, n_gen, batch=batch, seed=seed, rank=rank, world_size=world_size, device=device, progress=progress)
    if dist:
        gen = _gather_rows(gen, [len(_share(n_gen, r, world_size)) for r in range(world_size)])
    keys = [f"{name}_precision", f"{name}_recall"] if spec.kind == "pr" else [name]
    values = torch.zeros(len(keys), dtype=torch.float64, device=device)
    if rank == 0:
        if spec.kind == "fid":
            values[0] = fid_from_features(real.mu, real.sigma, gen)
        elif spec.kind == "kid":
            values[0] = kid(real.features.to(device), gen, seed=seed)
        else:
            values.copy_(torch.tensor(precision_recall(real.features, gen, k=spec.k), device=device))
    if dist:
        torch.distributed.broadcast(values, src=0)
    return dict(zip(keys, values.tolist()))


# -- CLI ----------------------------------------------------------------------------------------------

@errors.cli
def main(argv: list[str] | None = None) -> dict:
    """The command line; returns what it prints. Expected errors (bad arguments or files, missing
    pretrained weights): one `error:` line, exit status 2 (engine/errors.py)."""
    p = errors.ArgumentParser(prog="python -m engine.metrics", description=__doc__.split("\n\n")[0])
    p.add_argument("--network", required=True, help="checkpoint of this engine (G_ema is evaluated)")
    p.add_argument("--metrics", default="rfid50k_full", help=f"comma-separated, of: {', '.join(METRICS)}")
    p.add_argument("--data", help="dataset path (default: the checkpoint's training data; 'synthetic' = built-in)")
    p.add_argument("--num-gen", type=int, help="generated images (default: the metric's count)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="latent/class seed")
    p.add_argument("--rfid-seed", type=int, default=0, help="random Inception init seed of rFID (D5)")
    p.add_argument("--inception-weights", help=f"Inception-v3 state dict (default: ${inception.INCEPTION_ENV}, hub cache)")
    p.add_argument("--vgg16-weights", help=f"VGG16 state dict or 'random' (default: ${inception.VGG16_ENV}, hub cache)")
    p.add_argument("--cache-dir", help=f"real statistics cache (default: ${CACHE_ENV} or ~/.cache/stylegan_xl_engine/metrics)")
    p.add_argument("--workers", type=int, default=4, help="data-loader workers for the real images")
    p.add_argument("--max-images", type=int, help="real images: a seeded subset of this many (quick checks only; "
                   "the protocol uses the whole dataset)")
    p.add_argument("--detector-size", type=int, help="detector input side (quick checks only; default 299/224)")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    args = p.parse_args(argv)
    unknown = [n for n in args.metrics.split(",") if n not in METRICS]
    if unknown:
        p.error(f"unknown metric(s) {unknown} in --metrics; choose from: {', '.join(METRICS)}")

    from engine.export import load_generator
    from engine.generate import device_of

    rank, world_size = 0, int(os.environ.get("WORLD_SIZE", "1"))
    device = device_of(args.device)
    if world_size > 1:  # launched with torchrun
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank = torch.distributed.get_rank()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    G, meta = load_generator(args.network, device)
    config = meta.get("config", {})
    path = args.data if args.data is not None else config.get("data")
    spec = data.DatasetSpec(resolution=G.cfg.resolution, path=None if path in (None, "synthetic") else path,
                            seed=int(config.get("seed", 0)), max_images=args.max_images)
    dataset = data.open_dataset(spec)
    out = {"network": args.network, "dataset": dataset.name, "resolution": dataset.resolution,
           "num_images": dataset.num_raw, "seed": args.seed, "rfid_seed": args.rfid_seed, "results": {},
           "num_gen": {}, "detectors": {}}
    shared = {}
    for name in args.metrics.split(","):
        with errors.needs_weights():  # Inception/VGG16 weights not found offline: the message lists the ways
            det = metric_detector(name, inception_weights=args.inception_weights, vgg16_weights=args.vgg16_weights,
                                  rfid_seed=args.rfid_seed, size=args.detector_size)
        out["results"] |= compute_metric(name, G, dataset, num_gen=args.num_gen, batch=args.batch, device=device,
                                         rank=rank, world_size=world_size, cache_dir=args.cache_dir, seed=args.seed,
                                         detector=det, num_workers=args.workers, shared=shared)
        out["num_gen"][name] = args.num_gen or METRICS[name].num_gen
        out["detectors"][name] = det.identity
    if rank == 0:
        print(json.dumps(out, indent=2))
    if world_size > 1:
        torch.distributed.destroy_process_group()
    return out


if __name__ == "__main__":
    main()
