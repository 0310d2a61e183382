"""Command line -> TrainConfig. Flags a StyleGAN user expects; --dry-run prints the resolved config."""

from __future__ import annotations

import argparse
import dataclasses

from engine.config import LossConfig, OptimConfig, TrainConfig, default_metrics
from engine.interrupt import parse_signals


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="engine/train.py", description="Train one StyleGAN-XL stage.")
    p.add_argument("--stage", type=int, required=True, help="output resolution of the stage (16 = stem)")
    p.add_argument("--data", default=None, help="dataset: class-subfolder folder, image folder or StyleGAN zip "
                                                "(default: the built-in synthetic dataset)")
    p.add_argument("--outdir", default="runs/default", help="run directory (one per recipe; stages live inside)")
    p.add_argument("--preset", default="tiny", choices=("paper", "light", "tiny"))
    p.add_argument("--cond", type=int, default=1, choices=(0, 1), help="class-conditional")
    p.add_argument("--batch", type=int, default=32, help="global batch size")
    p.add_argument("--batch-gpu", type=int, default=8, help="images per device per forward")
    p.add_argument("--kimg", type=float, default=25.0, help="training length of this stage, thousands of images")
    p.add_argument("--tick", type=float, default=4.0, help="status line interval, kimg")
    p.add_argument("--snap", type=int, default=50, help="snapshot interval, ticks")
    p.add_argument("--mirror", type=int, default=0, choices=(0, 1), help="add x-flipped copies")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cls-weight", type=float, default=0.0, help="classifier-guidance weight (superres stages)")
    p.add_argument("--zero-stage", type=int, default=None, choices=(0, 1, 2, 3),
                   help="DeepSpeed ZeRO stage of the G and D engines (default 2; 3 partitions the trainable "
                        "weights too and compiles only the frozen blocks)")
    p.add_argument("--backend", default="deepspeed", choices=("deepspeed", "plain"),
                   help="deepspeed: one engine per network; plain: torch.optim + all-reduce (debugging)")
    p.add_argument("--d-precision", default="auto", choices=("auto", "fp32", "autocast_bf16"),
                   help="D forward precision (auto: bf16 autocast on CUDA, fp32 on CPU)")
    p.add_argument("--act-ckpt", type=int, default=0, metavar="PX",
                   help="activation checkpointing: recompute G's synthesis layers with output side >= PX (0 = off)")
    p.add_argument("--metrics", default="auto", help="comma-separated metrics at every snapshot, e.g. fid50k_full, "
                   "rfid50k_full, kid50k_full, pr50k3_full, rfid1k_128 (CPU-sized), shapes_fid, shapes_acc (the "
                   "built-in data's judge); the first picks best.safetensors. auto: shapes_fid,shapes_acc on the "
                   "built-in data, none on other data; '' for none")
    p.add_argument("--class-init", default="auto", choices=("auto", "lite0", "random"),
                   help="D3: class table from per-class mean lite0 features, or N(0,1) (auto: lite0 when D is pretrained)")
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) unreadable images instead of failing")
    p.add_argument("--resume", default=None, help="copy weights from this checkpoint (restarts the image counter)")
    p.add_argument("--stem", default=None, help="previous-stage checkpoint to grow from")
    p.add_argument("--d-weights", default="pretrained", choices=("pretrained", "random"),
                   help="feature networks of D: pretrained timm weights (local cache/file) or random")
    p.add_argument("--d-backbones", default="deit_base_distilled_patch16_224,tf_efficientnet_lite0",
                   help="comma-separated timm feature networks of D (tf_efficientnet_lite0 alone is the CPU demo)")
    p.add_argument("--d-input", type=int, default=None, metavar="PX",
                   help="smallest side EfficientNet-lite0 sees in D (smaller inputs are resized up to it); default: "
                        "the preset's, 224 (SPEC) for paper/light, 128 for tiny (CPU-sized); recorded in checkpoints")
    p.add_argument("--compile", default="auto", choices=("auto", "on", "off", "1", "0"),
                   help="torch.compile G and D (auto: on CUDA, off on CPU; on also compiles on CPU)")
    p.add_argument("--max-ticks", type=int, default=None, help="stop after this many ticks")
    p.add_argument("--stop-signals", default="INT,TERM,USR1", metavar="NAMES",
                   help="signals that stop the run cleanly: finish the iteration, save latest, exit 3 (re-run "
                        "to resume); a second one aborts at once (exit 130). '' keeps Python's default handlers")
    p.add_argument("--max-bad-steps", type=int, default=8, metavar="N",
                   help="non-finite steps are skipped and counted (skipped_G/skipped_D); N of one network in a "
                        "row stop the run, exit 4, latest.safetensors left as the last good state (0: never stop)")
    p.add_argument("--workers", type=int, default=2,
                   help="data loading parallelism per rank: torch DataLoader worker processes, or with DALI its "
                        "CPU threads and as many threads reading files one batch ahead (0 = read in the "
                        "training process); batches do not depend on it")
    p.add_argument("--glr", type=float, default=0.0025, help="G's Adam learning rate")
    p.add_argument("--dlr", type=float, default=0.002, help="D's Adam learning rate")
    p.add_argument("--ema-kimg", type=float, default=None,
                   help="G_ema half-life, kimg (default: batch * 10 / 32, SPEC 5.7)")
    p.add_argument("--ema-rampup", type=float, default=0.05,
                   help="the half-life is at most this fraction of the images seen so far (0 = no ramp-up)")
    p.add_argument("--augment", type=int, default=1, choices=(0, 1), help="DiffAugment of D's inputs")
    p.add_argument("--blur-sigma", type=float, default=2.0, help="initial Gaussian blur of D's inputs, pixels")
    p.add_argument("--blur-fade-kimg", type=float, default=300.0, help="the blur fades linearly to 0 over this many kimg")
    p.add_argument("--reduction", default="sum", choices=("sum", "mean"), help="D2: loss reduction")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and the layer table, then exit")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        stage=args.stage, preset=args.preset, data=args.data, run_dir=args.outdir, cond=bool(args.cond),
        batch=args.batch, batch_gpu=args.batch_gpu, kimg=args.kimg, tick=args.tick, snap=args.snap,
        mirror=bool(args.mirror), skip_bad=args.skip_bad, seed=args.seed, zero_stage=args.zero_stage,
        backend=args.backend, d_precision=args.d_precision, class_init=args.class_init,
        metrics=default_metrics(args.data, args.cond) if args.metrics == "auto" else tuple(
            m for m in args.metrics.split(",") if m),
        act_ckpt=args.act_ckpt, d_weights=args.d_weights, d_input=args.d_input, d_augment=bool(args.augment),
        d_backbones=tuple(b for b in args.d_backbones.split(",") if b), compile={"1": "on", "0": "off"}.get(args.compile, args.compile),
        stem=args.stem, resume=args.resume, max_ticks=args.max_ticks, workers=args.workers,
        stop_signals=parse_signals(args.stop_signals), max_bad_steps=args.max_bad_steps,
        ema_kimg=args.ema_kimg, ema_rampup=args.ema_rampup or None,
        optim=OptimConfig(g_lr=args.glr, d_lr=args.dlr),
        loss=dataclasses.replace(LossConfig(), cls_weight=args.cls_weight, reduction=args.reduction,
                                 blur_sigma=args.blur_sigma, blur_fade_kimg=args.blur_fade_kimg),
    )
