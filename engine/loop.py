"""The training loop of one stage, top to bottom, on one or many ranks.

Per iteration, engine/step.py's train_iteration (SPEC 5.2) through the backend of
engine/distributed.py (DeepSpeed engines, or plain PyTorch): G-main on every chunk with D frozen,
path-length regularization every 4th iteration in the stem, G step; D-main (fakes with the w_avg
update, then reals, one combined loss per chunk), D step; EMA. Schedules count images. A tick
prints a status line and appends to stats.jsonl; every `snap` ticks (and at the end) the loop
writes latest.safetensors atomically and a sample grid PNG. Re-running the same command resumes from latest.

Several ranks (`deepspeed engine/train.py ...`): each rank reads its own shard of every global
batch (batch / world images, in batch_gpu chunks), draws its own latents and labels (seed
seed * world + rank, as the original), and the backend averages gradients. Networks are built
identically on every rank (same seed). Checkpoints hold full tensors and every rank's RNG
state; rank 0 writes them, all ranks read them. Buffers that the original keeps rank-local (D's
BatchNorm statistics, G's w_avg, the path-length mean) are saved from rank 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import torch
import torch.distributed as tdist
from tqdm import tqdm

from engine import checkpoint
from engine.compile import compile_enabled
from engine.config import TrainConfig, to_dict
from engine.samples import save_grid
from engine.stages import build_stage, stage_dir
from engine import divergence
from engine.divergence import Diverged, read_counters
from engine.interrupt import AGREE_EVERY, StopRequest, Stopped
from engine.stats import StatsWriter
from engine.step import PathLength, PhaseLosses, train_iteration
from engine.telemetry import Telemetry

FORMAT = "stylegan-xl-engine/2"  # /2: optimizer state keyed by parameter name, per-rank RNG


@dataclasses.dataclass(kw_only=True, slots=True)
class Progress:
    cur_nimg: int = 0  # images shown to D this stage (all ranks)
    cur_tick: int = 0
    batch_idx: int = 0  # iterations this stage
    pl_mean: float = 0.0  # running path-length mean (stem; rank 0's)
    best_metric: float | None = None
    tick_start_nimg: int | None = None  # where the current tick began (a stop can fall mid-tick); None: cur_nimg
    skipped_G: int = 0  # G steps skipped as non-finite this stage (engine/divergence.py)
    skipped_D: int = 0


def make_backend(cfg: TrainConfig, device: torch.device, path_length_active: bool):
    """The backend the config asks for: DeepSpeed (per-network ZeRO stage) or plain PyTorch."""
    from engine.distributed import DeepSpeedBackend, PlainBackend

    d_precision = cfg.d_precision if cfg.d_precision != "auto" else (
        "autocast_bf16" if device.type == "cuda" else "fp32")
    precision = {"G": "fp32", "D": d_precision}  # G's compute dtype is GeneratorConfig.dtype
    if cfg.backend == "plain":
        return PlainBackend(device=device, precision=precision)
    return DeepSpeedBackend(device=device, precision=precision, batch_gpu=cfg.batch_gpu,
                            zero_stage=cfg.zero_stages(path_length_active))


def _rng_state(device: torch.device) -> torch.Tensor:
    state = torch.get_rng_state()
    if device.type == "cuda":
        state = torch.cat([state, torch.cuda.get_rng_state(device)])
    return state


def _set_rng_state(state: torch.Tensor, device: torch.device) -> None:
    state = state.to(torch.uint8).cpu()
    n = torch.get_rng_state().numel()
    torch.set_rng_state(state[:n])
    if device.type == "cuda" and state.numel() > n:
        torch.cuda.set_rng_state(state[n:], device)


def _gather(be, obj) -> list:
    """Every rank's `obj`, in rank order (collective when there are several ranks)."""
    if be.world_size == 1:
        return [obj]
    out = [None] * be.world_size
    tdist.all_gather_object(out, obj)
    return out


def _all_rng_states(be, device) -> dict[str, torch.Tensor]:
    """{"rank<r>": RNG state} of every rank (collective)."""
    return {f"rank{r}": s for r, s in enumerate(_gather(be, _rng_state(device)))}


def shared_digest(parts: dict[str, dict[str, torch.Tensor]], be) -> str:
    """sha256 of everything every rank must hold identically: G and D parameters, the EMA and the
    Adam moments. Buffers (BatchNorm statistics, w_avg) are rank-local by design and left out."""
    h = hashlib.sha256()
    names = {"G": be.param_names["G"], "D": be.param_names["D"], "G_ema": be.param_names["G"]}
    for part in ("G", "D", "G_ema", "opt_G", "opt_D"):
        for k in names.get(part) or sorted(parts[part]):
            h.update(f"{part}/{k}".encode())
            h.update(parts[part][k].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_ranks_agree(parts: dict, be) -> list[str]:
    """Every rank's shared_digest (collective); raises when ranks diverged (the original checks
    DDP consistency at every snapshot as well)."""
    digests = _gather(be, shared_digest(parts, be))
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks hold different weights or optimizer state: {digests}")
    return digests


def save_checkpoint(paths: list[Path], be, st, prog: Progress, cfg: TrainConfig, device) -> None:
    """Every rank calls (the state is gathered and compared); rank 0 writes each path atomically."""
    parts = be.state_dicts()
    digests = check_ranks_agree(parts, be)
    parts["rng"] = _all_rng_states(be, device)
    if not be.is_main:
        return
    meta = {"format": FORMAT, "config": to_dict(cfg), "arch": st.arch, "progress": dataclasses.asdict(prog),
            "world_size": be.world_size, "rank_digests": digests, "data": st.loader.state_dict(),
            "decisions": st.decisions, "class_names": list(st.dataset.class_names)}
    for path in paths:
        checkpoint.save(path, parts, meta)


def load_checkpoint(path: Path, be, st, device) -> Progress:
    parts, meta = checkpoint.load(path)
    checkpoint.check_compatible(meta, st.arch, path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} has format {meta.get('format')!r}; this engine reads {FORMAT!r}")
    be.load_state_dicts({k: v for k, v in parts.items() if k != "rng"})
    rng = parts["rng"].get(f"rank{be.rank}")
    if rng is not None and meta.get("world_size") == be.world_size:
        _set_rng_state(rng, device)
    else:  # another world size: a fresh, deterministic stream per rank
        torch.manual_seed(cfg_seed(meta["config"]["seed"], be) + meta["progress"]["cur_nimg"])
    st.loader.load_state_dict(meta["data"])
    return Progress(**meta["progress"])


def checkpoint_bytes(G: torch.nn.Module, D: torch.nn.Module) -> int:
    """About how large this stage's checkpoint is: G and G_ema, D, and the two Adam moments of
    every trainable parameter, in fp32."""
    size = lambda tensors: sum(t.numel() * 4 for t in tensors)  # noqa: E731
    trainable = [p for m in (G, D) for p in m.parameters() if p.requires_grad]
    return 2 * size(G.state_dict().values()) + size(D.state_dict().values()) + 2 * size(trainable)


def cfg_seed(seed: int, be) -> int:
    return seed * be.world_size + be.rank


def metric_detectors(cfg: TrainConfig) -> dict:
    """The feature network of every requested metric, built before training starts so that an
    unknown metric or missing Inception/VGG16 weights fail now, not at the first snapshot."""
    from engine import errors
    from engine.metrics import metric_detector

    with errors.needs_weights():
        return {name: metric_detector(name) for name in cfg.metrics}


def run_metrics(cfg: TrainConfig, g_ema, st, detectors: dict, device, rank: int, world: int,
                progress: bool) -> dict[str, float]:
    """cfg.metrics of the EMA generator against the stage's dataset (no x-flip), generation split
    over the ranks; the same values on every rank. Dataset statistics are cached by content hash
    (engine/metrics.py; $SGXL_METRICS_CACHE or ~/.cache/stylegan_xl_engine/metrics)."""
    from engine.metrics import compute_metric

    results, shared = {}, {}  # shared: one judge pass for shapes_fid and shapes_acc
    for name in cfg.metrics:
        results.update(compute_metric(name, g_ema, st.dataset.spec, detector=detectors[name], device=device, rank=rank,
                                      world_size=world, seed=cfg.seed, progress=progress, shared=shared))
    return results


class _Status:
    """Rank 0's progress bar and telemetry (no-ops on other ranks). `update` moves the bar (host
    only, every iteration); `read` and `show` touch NVML and device memory: once per tick."""

    def __init__(self, cfg: TrainConfig, enabled: bool, device: torch.device):
        self.telemetry = Telemetry(device.index or 0) if device.type == "cuda" and enabled else None
        self.device = device
        self.bar = tqdm(total=cfg.kimg, unit="kimg", desc=f"stage {cfg.stage}", dynamic_ncols=True,
                        disable=not enabled)

    def update(self, cur_nimg: int) -> None:
        if not self.bar.disable:
            self.bar.update(min(cur_nimg / 1000, self.bar.total) - self.bar.n)

    def show(self, losses: dict[str, float], t: dict) -> None:
        short = {k: f"{t[k]:.0f}" for k in ("gpu_mem_gb", "gpu_util_pct", "power_w") if k in t}
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()} | short, refresh=False)

    def read(self) -> dict:
        out = self.telemetry.read() if self.telemetry is not None else {}
        if self.device.type == "cuda":
            out["peak_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return out

    def close(self) -> None:
        self.bar.close()


def train_stage(cfg: TrainConfig, device: torch.device, log=print) -> Progress:
    """Train one stage to cfg.kimg (or cfg.max_ticks); resumes from the stage's latest checkpoint.

    Run by every rank of a launcher (DeepSpeed sets RANK/WORLD_SIZE), or by one plain process.
    """
    from engine.distributed import init_distributed, launch_env

    launch_env()
    rank, world = init_distributed(device)
    if cfg.batch % (cfg.batch_gpu * world):
        raise ValueError(f"--batch {cfg.batch} must be a multiple of --batch-gpu {cfg.batch_gpu} x {world} ranks")
    main = rank == 0
    say = log if main else (lambda *a, **k: None)
    out = stage_dir(cfg)
    # Before anything is built or written: which checkpoint this run resumes from, and that it is intact.
    resume_from = checkpoint.resume_source(out, say)
    if main and out.is_dir():
        removed = checkpoint.remove_stale_temporaries(out)
        if removed:
            say(f"removed {len(removed)} temporary file(s) of an interrupted write: {', '.join(removed[:3])}")
    torch.manual_seed(cfg.seed)  # identical networks on every rank
    detectors = metric_detectors(cfg) if cfg.metrics else {}
    st = build_stage(cfg, device, rank, world, log=say)  # opens (and checks) the data first
    if main and getattr(st.dataset, "scan_summary", None):
        say(st.dataset.scan_summary)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.check_free_space(out, checkpoint_bytes(st.G, st.D), copies=1 if resume_from else 2)
    pl_active = st.is_stem and cfg.loss.pl_weight > 0
    be = make_backend(cfg, device, pl_active)
    if cfg.act_ckpt:
        from engine.memory import checkpoint_synthesis

        say(f"activation checkpointing: {', '.join(checkpoint_synthesis(st.G, cfg.act_ckpt)) or 'no layer'}")
    compiled = compile_enabled(cfg.compile, device)
    be.setup(st.G, st.D, cfg.optim, compile=compiled)
    say(f"torch.compile: {'on' if compiled else 'off'} (--compile {cfg.compile}, {device.type})")
    G = be.g_module  # raw module: the path-length phase calls its submodules
    torch.manual_seed(cfg_seed(cfg.seed, be))  # per-rank latents, labels and augmentations
    latest = out / "latest.safetensors"
    prog = load_checkpoint(resume_from, be, st, device) if resume_from else Progress()
    if prog.cur_nimg:
        say(f"resuming {resume_from} at {prog.cur_nimg / 1000:g} kimg (tick {prog.cur_tick})")
    if main:  # after the checkpoint loaded: a refused resume leaves the previous config.json
        ds = {n: be.config(n, cfg.optim) for n in ("G", "D")} if hasattr(be, "config") else None
        (out / "config.json").write_text(json.dumps({"train": to_dict(cfg), "arch": st.arch, "decisions": st.decisions,
                                                     "world_size": world, "deepspeed": ds}, indent=2))
    split = st.D.num_logits(cfg.stage)
    reduction = cfg.loss.reduction
    total_nimg = int(cfg.kimg * 1000)
    if prog.tick_start_nimg is None:  # a fresh start, or a checkpoint written at a tick's end
        prog.tick_start_nimg = prog.cur_nimg
    tick_start_nimg, tick_start_time, start_time = prog.cur_nimg, time.time(), time.time()  # for the timings
    stats_out = StatsWriter(out, resume_tick=prog.cur_tick) if main else None
    status = _Status(cfg, enabled=main, device=device)
    grid_z = torch.randn(64, G.cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 1)).to(device)
    # Up to 16 classes: one column per class (e.g. 10 columns x 6 rows); else classes 0, 1, 2, ... in order.
    grid_cols = st.c_dim if 0 < st.c_dim <= 16 else 8
    grid_n = grid_cols * (64 // grid_cols)
    scale = max(1, 64 // cfg.stage)  # small stages enlarged (nearest) so that a person can see them
    grid_c = (torch.arange(grid_n) % st.c_dim).to(device) if st.c_dim else None
    iterator = iter(st.loader)

    label_probs = st.label_probs.to(device, torch.float32) if st.c_dim else None

    def draw(phase: str, r: int, n: int):
        """Latents, and fake labels following the dataset's label histogram (SPEC 5.2), on the device."""
        z = torch.randn(n, G.cfg.z_dim, device=device)
        return z, torch.multinomial(label_probs, n, replacement=True) if st.c_dim else None

    tick_losses = PhaseLosses(device)
    pl = PathLength(batch=max(cfg.batch_gpu // cfg.loss.pl_batch_shrink, 1), decay=cfg.loss.pl_decay,
                    weight=cfg.loss.pl_weight * (cfg.optim.g_reg_interval if cfg.loss.pl_times_interval else 1),
                    mean=torch.tensor(prog.pl_mean, device=device))  # on the device; prog.pl_mean is written per tick
    done = prog.cur_nimg >= total_nimg
    ran = not done
    status.update(prog.cur_nimg)
    if done:
        say(f"stage {cfg.stage} is trained to {prog.cur_nimg / 1000:g} kimg already (--kimg {cfg.kimg:g}): nothing to do; "
            f"raise --kimg to continue")
    stop = StopRequest(cfg.stop_signals)
    skipped_base = {n: getattr(prog, f"skipped_{n}") for n in ("G", "D")}  # from earlier runs of this stage
    saved_kimg = prog.cur_nimg / 1000 if resume_from else None  # where latest's good state is
    diverged = stopping = None

    def note_counters() -> dict[str, int]:
        """The backend's skip counters on the host (one read), carried into prog."""
        c = read_counters(be)
        for n in ("G", "D"):
            setattr(prog, f"skipped_{n}", skipped_base[n] + c[f"skipped_{n}"])
        return c

    with stop:
        while not done:
            sigma_now = cfg.blur_sigma(prog.cur_nimg)
            sigma = torch.tensor(sigma_now, device=device)  # 0-d: never recompiles
            reals, real_labels = next(iterator)
            reals = (reals.to(device).float() / 127.5 - 1).split(cfg.batch_gpu)
            real_c = real_labels.to(device).split(cfg.batch_gpu) if st.c_dim else [None] * len(reals)
            pl_now = (pl_active and prog.cur_nimg >= cfg.loss.pl_start_kimg * 1000
                      and prog.batch_idx % cfg.optim.g_reg_interval == 0)
            train_iteration(be, list(zip(reals, real_c)), draw, split=split, c_dim=st.c_dim, reduction=reduction,
                            sigma=sigma, guidance=st.guidance, cls_weight=cfg.loss.cls_weight, pl=pl if pl_now else None,
                            ema_beta=cfg.ema_beta(prog.cur_nimg), losses=tick_losses)
            prog.cur_nimg += cfg.batch
            prog.batch_idx += 1
            status.update(prog.cur_nimg)
            done = prog.cur_nimg >= total_nimg
            tick_end = done or prog.cur_nimg >= prog.tick_start_nimg + cfg.tick * 1000
            # Every AGREE_EVERY iterations and at every tick's end, on every rank alike: the stop
            # request (agreed over the ranks) and the non-finite-step counters (the same on every rank).
            if tick_end or prog.batch_idx % AGREE_EVERY == 0:
                stopping = stop.agreed(be)
                if tick_end or stopping or cfg.max_bad_steps > 0:  # one host read of the skip counters
                    counters = note_counters()
                if cfg.max_bad_steps > 0:
                    try:
                        divergence.check(counters, cfg.max_bad_steps, kimg=prog.cur_nimg / 1000, latest=latest,
                                         saved_kimg=saved_kimg)
                    except Diverged as e:
                        diverged = e
                        break
                if stopping and not tick_end:  # mid-tick: save this iteration's state as it is
                    prog.pl_mean = float(pl.mean)
                    save_checkpoint([latest], be, st, prog, cfg, device)
                    break
            if not tick_end:
                continue

            # Tick: status line, stats, and every `snap` ticks a sample grid, the metrics and a checkpoint.
            # The only host reads of the tick's device values happen here.
            prog.cur_tick += 1
            prog.pl_mean = float(pl.mean)
            losses = tick_losses.read()
            telemetry = status.read()
            status.show(losses, telemetry)
            now = time.time()
            sec_per_kimg = (now - tick_start_time) / max((prog.cur_nimg - tick_start_nimg) / 1000, 1e-8)
            stats = {"tick": prog.cur_tick, "kimg": prog.cur_nimg / 1000, "sec_per_kimg": sec_per_kimg,
                     "img_per_sec": 1000 / sec_per_kimg, "total_sec": now - start_time, "blur_sigma": sigma_now,
                     **{f"loss_{k}": v for k, v in losses.items()}, **telemetry}
            if getattr(st.dataset, "num_skipped_at_read", 0):  # unreadable at read time, replaced (--skip-bad)
                stats["skipped_at_read"] = st.dataset.num_skipped_at_read
            if prog.skipped_G or prog.skipped_D:  # steps not applied (engine/divergence.py), read above
                stats.update(skipped_G=prog.skipped_G, skipped_D=prog.skipped_D)
            if cfg.max_ticks is not None and prog.cur_tick >= cfg.max_ticks:
                done = True
            snapshot = done or prog.cur_tick % cfg.snap == 0
            is_best = False
            if snapshot:
                g_ema = be.ema_module()  # collective under ZeRO-3
                if main:
                    with torch.no_grad():
                        grid = torch.cat([g_ema(grid_z[i:min(i + 16, grid_n)], None if grid_c is None else grid_c[i:i + 16])
                                          for i in range(0, grid_n, 16)])
                    save_grid(grid, out / f"samples_{prog.cur_nimg / 1000:09.3f}kimg.png", cols=grid_cols, scale=scale)
                if cfg.metrics:
                    t0 = time.time()
                    results = run_metrics(cfg, g_ema, st, detectors, device, rank, world, progress=main)
                    stats.update({f"metric_{k}": v for k, v in results.items()}, metrics_sec=time.time() - t0)
                    key = next(iter(results))  # the first metric picks `best`
                    from engine.metrics import is_better

                    if is_better(key, results[key], prog.best_metric):
                        prog.best_metric, is_best = results[key], True
                del g_ema
            if main:
                stats_out.write(stats)
                say("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items()))
                if snapshot:
                    stats_out.plot()
            tick_start_nimg, tick_start_time = prog.cur_nimg, time.time()
            prog.tick_start_nimg = prog.cur_nimg
            if snapshot:
                paths = [latest]
                if is_best or not cfg.metrics:  # without metrics, the latest snapshot is also the best
                    paths.append(out / "best.safetensors")
                save_checkpoint(paths, be, st, prog, cfg, device)
                saved_kimg = prog.cur_nimg / 1000
            if stopping:  # the stop fell on this tick's last iteration: the tick is complete, save it
                if not snapshot:
                    save_checkpoint([latest], be, st, prog, cfg, device)
                break
    if stop.requested and world > 1:  # rank 0 may still be writing latest: no rank exits before it is done
        tdist.barrier()  # (the DeepSpeed launcher kills every rank once one exits non-zero)
    if main:
        stats_out.close()
    status.close()
    st.loader.close()
    be.close()
    if diverged is not None:
        raise diverged
    if stop.requested and not done:  # (a stop on the very last iteration is a finished run)
        raise Stopped(f"stopped by {stop.requested} at {prog.cur_nimg / 1000:g} kimg; saved {latest}; "
                      f"re-run the same command to resume")
    if main and ran:
        say(summary(out, stats))
    return prog


METRIC_MEANINGS = {
    "shapes_acc": "fraction of class-conditional samples the shapes judge assigns to their class (chance 0.10, "
                  "real images 0.99)",
    "shapes_fid": "Frechet distance of the judge's features, generated vs real (lower is better; about 30-50 "
                  "for an untrained G)",
}


def summary(out: Path, stats: dict) -> str:
    """The closing lines of a run: where its outputs are and what its last numbers mean."""
    grids = sorted(out.glob("samples_*.png"))
    lines = [f"done: stage trained to {stats['kimg']:g} kimg in {stats['total_sec'] / 60:.1f} min; outputs in {out}/",
             f"  {grids[-1].name if grids else 'samples_*.png'}: samples of G_ema (fixed latents; with up to 16 "
             f"classes one column per class), one grid per snapshot",
             "  losses.png: loss and metric curves; stats.jsonl: one line per tick; latest/best.safetensors: "
             "checkpoints (re-run the command with a larger --kimg to continue)"]
    for k, v in stats.items():
        if k.startswith("metric_"):
            name = k[len("metric_"):]
            lines.append(f"  {name} = {v:.4g}: {METRIC_MEANINGS.get(name, 'see engine/metrics.py')}")
    return "\n".join(lines)
