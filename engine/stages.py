"""Building what one stage trains: G (new stem, or grown from the previous stage), G_ema, a fresh
D, optimizers, data, guidance, and the run directory layout.

Layout: <run_dir>/stage<R>/{latest,best}.safetensors (+ .json), samples_*.png, stats.jsonl,
config.json. A stage above the stem grows from <run_dir>/stage<R/2>/best (else latest), or from
--stem PATH.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from engine import checkpoint, errors
from engine.export import load_generator
from engine.config import TrainConfig
from model.config import D_HEAD_WIDTH, PRESETS
from model.discriminator import ProjectedDiscriminator
from model.generator import Generator, build_generator, freeze_carried, grow


def stage_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.run_dir) / f"stage{cfg.stage}"


def previous_checkpoint(cfg: TrainConfig) -> Path:
    """The checkpoint a superres stage grows from; a clear error naming what to run first."""
    if cfg.stem is not None:
        path = Path(cfg.stem)
        if not path.exists():
            raise FileNotFoundError(f"--stem {path} does not exist")
        return path
    prev = Path(cfg.run_dir) / f"stage{cfg.stage // 2}"
    for name in ("best.safetensors", "latest.safetensors"):
        if (prev / name).exists():
            return prev / name
    raise FileNotFoundError(
        f"stage {cfg.stage} grows from stage {cfg.stage // 2}, but {prev} holds no checkpoint: train it first "
        f"(python engine/train.py --stage {cfg.stage // 2} --outdir {cfg.run_dir} ...) or pass --stem PATH")


def open_training_data(cfg: TrainConfig, device: torch.device, rank: int = 0, world_size: int = 1):
    """(dataset, loader, c_dim, label weights) for this stage; errors before training starts."""
    from engine.data import DatasetSpec, open_dataset
    from engine.loader import make_loader

    dataset = open_dataset(DatasetSpec(resolution=cfg.stage, path=cfg.data, cond=cfg.cond, mirror=cfg.mirror,
                                       seed=cfg.seed, skip_bad=cfg.skip_bad), min_images=cfg.batch)
    loader = make_loader(dataset, batch_size=cfg.batch // world_size, rank=rank, world_size=world_size, seed=cfg.seed,
                         device=device, num_workers=cfg.workers)
    c_dim = dataset.c_dim if cfg.cond else 0
    probs = torch.as_tensor(dataset.label_histogram, dtype=torch.float64) if c_dim else None
    return dataset, loader, c_dim, probs


def class_table(cfg: TrainConfig, dataset, device: torch.device, log=print) -> tuple[torch.Tensor | None, str]:
    """(initial class table or None for N(0, 1), what was chosen) for G's mapping (stem) and D's
    heads (every stage). Computed once per run from the data and kept in
    <run_dir>/class_table.safetensors (engine/class_table.py)."""
    use = cfg.class_init == "lite0" or (cfg.class_init == "auto" and cfg.d_weights != "random")
    if not use:
        return None, "random N(0,1)" + (" (random feature networks)" if cfg.class_init == "auto" else "")
    from safetensors.torch import load_file, save_file

    from engine.class_table import class_table_from_data

    path = Path(cfg.run_dir) / "class_table.safetensors"
    if path.exists():
        table = load_file(str(path))["table"]
        if table.shape[0] < dataset.c_dim:
            raise ValueError(f"{path} has {table.shape[0]} rows but the data has {dataset.c_dim} classes")
    else:
        table = class_table_from_data(dataset, cfg.d_weights, device, per_class=cfg.class_init_images, seed=cfg.seed)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"table": table.contiguous()}, str(tmp))
        os.replace(tmp, path)  # every rank computes the same table; any one of them may write it
        log(f"class table: per-class mean lite0 features of {dataset.name} -> {path}")
    return table.to(device), f"lite0 class means ({path.name})"


@dataclasses.dataclass(kw_only=True)
class Stage:
    """What one stage trains, before the backend takes it over (engine/loop.py)."""

    G: Generator  # requires_grad marks what trains (carried layers frozen)
    D: ProjectedDiscriminator  # heads trainable, feature networks frozen
    dataset: object
    loader: object
    c_dim: int
    label_probs: torch.Tensor | None
    guidance: torch.nn.Module | None  # frozen classifier, one-hot labels
    arch: dict
    decisions: dict
    is_stem: bool


def build_stage(cfg: TrainConfig, device: torch.device, rank: int = 0, world_size: int = 1, log=print) -> Stage:
    """Data (this rank's shard), G (new stem, or grown from the previous stage), a fresh D and the
    guidance classifier. Every rank builds identical networks: call under the same seed."""
    dataset, loader, c_dim, label_probs = open_training_data(cfg, device, rank, world_size)
    if getattr(dataset, "num_skipped", 0):
        log(f"skipped {dataset.num_skipped} unreadable images (--skip-bad), e.g. {list(dataset.skipped_files)[:3]}")
    stem_res = PRESETS[cfg.preset](cfg.stage).stem_res
    table, d3 = class_table(cfg, dataset, device, log) if c_dim else (None, "unconditional")
    if cfg.stage == stem_res:
        G = build_generator(cfg.preset, cfg.stage, c_dim, class_embeddings=table).to(device)
        source = None
    else:
        source = previous_checkpoint(cfg)
        prev, _ = load_generator(source, device)  # G_ema only: D and optimizer tensors are not read
        if prev.cfg.resolution * prev.cfg.up_factor != cfg.stage:
            raise ValueError(f"{source} is a {prev.cfg.resolution}² generator: it grows to "
                             f"{prev.cfg.resolution * prev.cfg.up_factor}², not {cfg.stage}²")
        if prev.cfg.c_dim != c_dim:
            raise ValueError(f"{source} has {prev.cfg.c_dim} classes but the data has {c_dim}")
        G = grow(prev).to(device)
        log(f"grew stage {cfg.stage} from {source}")
    if cfg.resume is not None:  # explicit: copy weights, restart the counter (SPEC 5.8)
        parts, meta = checkpoint.load(cfg.resume)
        checkpoint.check_compatible(meta, {"G": dataclasses.asdict(G.cfg)}, cfg.resume)
        G.load_state_dict(parts["G"])
    with errors.needs_weights():  # missing pretrained weights: an expected, one-line error
        D = ProjectedDiscriminator(cfg.d_backbones, c_dim, weights=cfg.d_weights, class_table=table,
                                   embed_classes=max(1000, c_dim), input_size=cfg.d_input_size,
                                   head_width=D_HEAD_WIDTH[cfg.preset],
                                   augment=cfg.d_augment).to(device)
    freeze_carried(G)
    guidance = None
    if cfg.loss.cls_weight > 0 and c_dim and cfg.stage > G.cfg.stem_res:
        from model.guidance import ClassifierGuidance

        with errors.needs_weights():
            guidance = ClassifierGuidance(weights=cfg.d_weights).to(device).requires_grad_(False)
    arch = {"G": dataclasses.asdict(G.cfg), "D": {"backbones": list(cfg.d_backbones), "c_dim": c_dim,
                                                   "input_size": cfg.d_input_size,
                                                   "head_width": D_HEAD_WIDTH[cfg.preset]}, "stage": cfg.stage}
    decisions = {
        "D1_train_input": G.cfg.train_input, "D2_reduction": cfg.loss.reduction,
        "D3_class_table": d3,
        "D4_pl_times_interval": cfg.loss.pl_times_interval, "grown_from": None if source is None else str(source),
    }
    return Stage(G=G, D=D, dataset=dataset, loader=loader, c_dim=c_dim, label_probs=label_probs, guidance=guidance,
                 arch=arch, decisions=decisions, is_stem=cfg.stage == stem_res)
