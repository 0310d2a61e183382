"""Training configuration: frozen keyword-only dataclasses, one per concern, checked on creation.

Named setups are functions in engine/presets.py; the CLI (engine/cli.py) maps flags onto fields.
Schedules count images (kimg), never steps, so changing the batch size moves nothing.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class OptimConfig:
    g_lr: float = 0.0025  # generator Adam learning rate before lazy-regularization scaling
    d_lr: float = 0.002  # discriminator Adam learning rate before lazy-regularization scaling
    beta1: float = 0.0
    beta2: float = 0.99
    eps: float = 1e-8
    g_reg_interval: int = 4  # lazy regularization interval of G (path length); scales lr and betas
    d_reg_interval: int = 16  # of D (no R1 in StyleGAN-XL, but the original scales Adam by it)

    def adam(self, net: str) -> dict:
        """lr and betas after the lazy-regularization scaling (SPEC 5.2)."""
        r = self.g_reg_interval if net == "G" else self.d_reg_interval
        ratio = r / (r + 1)
        lr = (self.g_lr if net == "G" else self.d_lr) * ratio
        return dict(lr=lr, betas=(float(self.beta1**ratio), float(self.beta2**ratio)), eps=self.eps)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class LossConfig:
    blur_sigma: float = 2.0  # initial Gaussian blur of D inputs, pixels
    blur_fade_kimg: float = 300.0  # blur fades linearly to 0 over this many kimg of a stage
    pl_weight: float = 2.0  # path-length regularization weight (stem only)
    pl_start_kimg: float = 1000.0  # path-length regularization starts after this many kimg
    pl_batch_shrink: int = 2  # path-length batch = batch_gpu / this
    pl_decay: float = 0.01  # decay of the running path-length mean
    pl_times_interval: bool = False  # D4: multiply the path-length loss by its interval (original: no)
    cls_weight: float = 0.0  # classifier-guidance weight (superres stages, conditional)
    reduction: str = "sum"  # D2: "sum" of per-sample terms (original) or "mean"

    def __post_init__(self):
        if self.reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {self.reduction!r}")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TrainConfig:
    stage: int  # output resolution of the stage being trained (16 = stem)
    preset: str = "tiny"  # generator preset: paper, light, tiny
    data: str | None = None  # dataset path; None = the built-in synthetic dataset
    run_dir: str = "runs/default"  # run directory: checkpoints, samples, stats (one per recipe)
    cond: bool = True  # class-conditional training
    batch: int = 32  # global batch size, images
    batch_gpu: int = 8  # images per device per forward; gradients accumulate to `batch`
    kimg: float = 25.0  # images to train this stage, thousands
    tick: float = 4.0  # status line every this many kimg
    snap: int = 50  # checkpoint + sample grid every this many ticks
    mirror: bool = False  # double the dataset with x-flips
    skip_bad: bool = False  # drop (and count) unreadable images instead of failing on the first
    seed: int = 0
    ema_kimg: float | None = None  # EMA half-life in kimg; None = batch * 10 / 32 (SPEC 5.7)
    ema_rampup: float | None = 0.05  # EMA ramp-up ratio; None = off
    d_backbones: tuple[str, ...] = ("deit_base_distilled_patch16_224", "tf_efficientnet_lite0")
    d_weights: str = "pretrained"  # "pretrained" or "random" feature networks (random: tests, CPU demo)
    d_augment: bool = True  # DiffAugment (color, translation, cutout) of D's inputs
    d_input: int | None = None  # smallest side lite0 sees in D; None = the preset's (model/config.py D_INPUT_SIZE)
    compile: str = "auto"  # torch.compile G and D: "auto" (on for CUDA, off on CPU), "on", "off" (engine/compile.py)
    stem: str | None = None  # checkpoint of the previous stage to grow from (default: run_dir's)
    resume: str | None = None  # explicit checkpoint to copy weights from (restarts the counter)
    max_ticks: int | None = None  # stop after this many ticks (tests)
    stop_signals: tuple[str, ...] = ("INT", "TERM", "USR1")  # save latest and stop on these (engine/interrupt.py)
    max_bad_steps: int = 8  # non-finite steps of one network in a row that stop the run; 0: never (engine/divergence.py)
    workers: int = 2  # data loading per rank: DataLoader worker processes, or DALI threads + file readers
    backend: str = "deepspeed"  # "deepspeed" (one engine per network) or "plain" (torch.optim, debugging)
    zero_stage: int | None = None  # DeepSpeed ZeRO stage of both engines; None = 2 (every stage; README: memory)
    act_ckpt: int = 0  # recompute G's synthesis layers with output side >= this in backward (0 = off)
    metrics: tuple[str, ...] = ()  # computed at every snapshot (engine/metrics.py); the first picks `best`
    class_init: str = "auto"  # D3: "lite0" class means, "random" N(0,1), "auto" (lite0 with pretrained D)
    class_init_images: int = 64  # images per class averaged for the lite0 class table
    d_precision: str = "auto"  # D forward: "fp32", "autocast_bf16", or "auto" (bf16 autocast on CUDA)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)

    def __post_init__(self):
        if self.stage < 16 or self.stage & (self.stage - 1):
            raise ValueError(f"stage must be a power of two >= 16, got {self.stage}")
        if self.batch % self.batch_gpu:
            raise ValueError(f"batch ({self.batch}) must be a multiple of batch_gpu ({self.batch_gpu})")
        if self.d_weights not in ("pretrained", "random"):
            raise ValueError(f"d_weights must be 'pretrained' or 'random', got {self.d_weights!r}")
        if self.backend not in ("deepspeed", "plain"):
            raise ValueError(f"backend must be 'deepspeed' or 'plain', got {self.backend!r}")
        if self.zero_stage not in (None, 0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0-3 (or None for the stage's default), got {self.zero_stage!r}")
        if self.max_bad_steps < 0:
            raise ValueError(f"max_bad_steps must be >= 0 (0: never stop), got {self.max_bad_steps}")
        if self.act_ckpt < 0:
            raise ValueError(f"act_ckpt must be >= 0 (an output side in pixels; 0 = off), got {self.act_ckpt}")
        if self.class_init not in ("auto", "lite0", "random"):
            raise ValueError(f"class_init must be auto, lite0 or random, got {self.class_init!r}")
        if self.ema_kimg is not None and not self.ema_kimg > 0:
            raise ValueError(f"ema_kimg must be > 0 (a half-life in kimg; None = batch * 10 / 32), got {self.ema_kimg}")
        if self.ema_rampup is not None and not self.ema_rampup > 0:
            raise ValueError(f"ema_rampup must be > 0 (None = off), got {self.ema_rampup}")
        if self.d_precision not in ("auto", "fp32", "autocast_bf16"):
            raise ValueError(f"d_precision must be auto, fp32 or autocast_bf16, got {self.d_precision!r}")
        if self.compile not in ("auto", "on", "off"):
            raise ValueError(f"compile must be auto, on or off, got {self.compile!r}")
        if self.d_input is not None and self.d_input < 128:  # D's heads end in 4x4 convs on lite0's /32 maps
            raise ValueError(f"d_input must be >= 128 pixels (or None for the preset's), got {self.d_input}")
        from engine.interrupt import parse_signals

        parse_signals(",".join(self.stop_signals))  # names every unknown signal
        if self.kimg <= 0 or self.tick <= 0 or self.snap < 1:
            raise ValueError("kimg and tick must be positive and snap >= 1")

    def zero_stages(self, path_length_active: bool) -> dict[str, int]:
        """ZeRO stage per network: the flag, else 2 at every stage (ZeRO-3 would save only the
        partitioned fp32 weights, under 1 GB per GPU at 1024², and runs its trainable blocks
        uncompiled: engine/compile.py). G stays at <= 2 in a stage with path-length
        regularization or activation checkpointing (both call G's layers outside the module
        hooks ZeRO-3 fetches parameters in)."""
        z = self.zero_stage if self.zero_stage is not None else 2
        return {"G": min(z, 2) if path_length_active or self.act_ckpt else z, "D": z}

    @property
    def d_input_size(self) -> int:
        """The smallest side lite0 sees in D: the flag, else the preset's."""
        from model.config import D_INPUT_SIZE

        return self.d_input if self.d_input is not None else D_INPUT_SIZE[self.preset]

    @property
    def ema_half_life_img(self) -> float:
        return (self.ema_kimg if self.ema_kimg is not None else self.batch * 10 / 32) * 1000

    def ema_beta(self, cur_nimg: int) -> float:
        """Per-iteration EMA beta with ramp-up (SPEC 5.7)."""
        ema_nimg = self.ema_half_life_img
        if self.ema_rampup is not None:
            ema_nimg = min(ema_nimg, cur_nimg * self.ema_rampup)
        return 0.5 ** (self.batch / max(ema_nimg, 1e-8))

    def blur_sigma(self, cur_nimg: int) -> float:
        fade = self.loss.blur_fade_kimg * 1000
        return max(1 - cur_nimg / fade, 0.0) * self.loss.blur_sigma if fade > 0 else 0.0


def default_metrics(data: str | None, cond: bool = True) -> tuple[str, ...]:
    """--metrics auto: the judge's metrics on the built-in data (data None; shapes_acc only when
    class-conditional), none on other data (Inception FID needs weights that may be absent)."""
    if data is not None:
        return ()
    return ("shapes_fid", "shapes_acc") if cond else ("shapes_fid",)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> TrainConfig:
    d = dict(d)
    d["optim"] = OptimConfig(**d.get("optim", {}))
    d["loss"] = LossConfig(**d.get("loss", {}))
    d["d_backbones"] = tuple(d.get("d_backbones", ()))
    d["metrics"] = tuple(d.get("metrics", ()))
    if "stop_signals" in d:
        d["stop_signals"] = tuple(d["stop_signals"])
    return TrainConfig(**d)

