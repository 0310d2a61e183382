"""The training loop of one stage, top to bottom (single process; see engine/distributed.py).

Per iteration (SPEC 5.2): G-main on every chunk, path-length regularization every 4th
iteration in the stem, G step; D-main (fakes with w_avg update, then reals, one combined loss
per chunk), D step; EMA. Schedules count images. A tick prints a status line and appends to
stats.jsonl; every `snap` ticks (and at the end) the loop writes latest.safetensors
atomically and a sample grid PNG. Re-running the same command resumes from latest.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from engine import checkpoint
from engine.config import TrainConfig, to_dict
from engine.ema import update_ema
from engine.losses import blur, d_loss, g_loss, path_length_penalty
from engine.samples import save_grid
from engine.stages import build_stage, stage_dir
from engine.stats import StatsWriter


@dataclasses.dataclass(kw_only=True, slots=True)
class Progress:
    cur_nimg: int = 0  # images shown to D this stage
    cur_tick: int = 0
    batch_idx: int = 0  # iterations this stage
    pl_mean: float = 0.0  # running path-length mean (stem)
    best_metric: float | None = None


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"].to(torch.uint8).cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].to(torch.uint8).cpu(), device)


def save_checkpoint(path: Path, st, prog: Progress, cfg: TrainConfig, device) -> None:
    opt_g, meta_g = checkpoint.optimizer_tensors(st.opt_g)
    opt_d, meta_d = checkpoint.optimizer_tensors(st.opt_d)
    parts = {"G": st.G.state_dict(), "G_ema": st.G_ema.state_dict(), "D": st.D.state_dict(), "opt_G": opt_g,
             "opt_D": opt_d, "rng": _rng_state(device)}
    meta = {"format": "stylegan-xl-engine/1", "config": to_dict(cfg), "arch": st.arch, "progress": dataclasses.asdict(prog),
            "opt_G": meta_g, "opt_D": meta_d, "data": st.loader.state_dict(), "decisions": st.decisions}
    checkpoint.save(path, parts, meta)


def load_checkpoint(path: Path, st, device) -> Progress:
    parts, meta = checkpoint.load(path)
    checkpoint.check_compatible(meta, st.arch, path)
    st.G.load_state_dict(parts["G"])
    st.G_ema.load_state_dict(parts["G_ema"])
    st.D.load_state_dict(parts["D"])
    checkpoint.load_optimizer(st.opt_g, parts.get("opt_G", {}), meta["opt_G"])
    checkpoint.load_optimizer(st.opt_d, parts.get("opt_D", {}), meta["opt_D"])
    _set_rng_state(parts["rng"], device)
    st.loader.load_state_dict(meta["data"])
    return Progress(**meta["progress"])


def _fake_labels(st, n: int, device) -> torch.Tensor | None:
    """Fake labels follow the dataset's label histogram (SPEC 5.2)."""
    if not st.c_dim:
        return None
    return torch.multinomial(st.label_probs, n, replacement=True).to(device)


def train_stage(cfg: TrainConfig, device: torch.device, log=print) -> Progress:
    """Train one stage to cfg.kimg (or cfg.max_ticks); resumes from the stage's latest checkpoint."""
    out = stage_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    st = build_stage(cfg, device, log=log)
    (out / "config.json").write_text(json.dumps({"train": to_dict(cfg), "arch": st.arch, "decisions": st.decisions}, indent=2))
    latest = out / "latest.safetensors"
    prog = load_checkpoint(latest, st, device) if latest.exists() else Progress()
    if prog.cur_nimg:
        log(f"resuming {latest} at {prog.cur_nimg / 1000:.1f} kimg")
    is_stem = cfg.stage == st.G.cfg.stem_res
    split = st.D.num_logits(cfg.stage)
    rounds = cfg.batch // cfg.batch_gpu
    reduction = cfg.loss.reduction
    total_nimg = int(cfg.kimg * 1000)
    tick_start_nimg, tick_start_time, start_time = prog.cur_nimg, time.time(), time.time()
    stats_out = StatsWriter(out)
    grid_z = torch.randn(64, st.G.cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 1)).to(device)
    grid_c = (torch.arange(64) % st.c_dim).to(device) if st.c_dim else None
    losses = {}
    done = prog.cur_nimg >= total_nimg
    while not done:
        sigma = torch.tensor(cfg.blur_sigma(prog.cur_nimg), device=device)
        reals, real_labels = next(st.iterator)
        reals = reals.to(device).float() / 127.5 - 1
        real_c = real_labels.to(device) if st.c_dim else None

        # G-main: D frozen, gradients flow through its activations into G.
        st.D.requires_grad_(False)
        st.G.requires_grad_(True)
        st.freeze_carried(st.G)
        st.opt_g.zero_grad(set_to_none=True)
        for _ in range(rounds):
            z = torch.randn(cfg.batch_gpu, st.G.cfg.z_dim, device=device)
            c = _fake_labels(st, cfg.batch_gpu, device)
            img = st.G_train(z, c)
            loss = g_loss(st.D_train(blur(img, sigma), c), split, reduction)
            if st.guidance is not None:
                loss = loss + cfg.loss.cls_weight * st.guidance(img, c)
            loss.backward()
            losses["G"] = float(loss.detach())
        if is_stem and cfg.loss.pl_weight > 0 and prog.cur_nimg >= cfg.loss.pl_start_kimg * 1000 \
                and prog.batch_idx % cfg.optim.g_reg_interval == 0:
            n = max(cfg.batch_gpu // cfg.loss.pl_batch_shrink, 1)
            for _ in range(rounds):  # eager: double backward does not compile
                z = torch.randn(n, st.G.cfg.z_dim, device=device)
                ws = st.G.mapping(z, _fake_labels(st, n, device))
                penalty, new_mean = path_length_penalty(st.G.synthesis, ws, torch.tensor(prog.pl_mean, device=device), cfg.loss.pl_decay)
                prog.pl_mean = float(new_mean)
                scale = cfg.loss.pl_weight * (cfg.optim.g_reg_interval if cfg.loss.pl_times_interval else 1)
                (penalty.mean() * scale).backward()
                losses["pl"] = float(penalty.mean().detach())
        st.opt_g.step()

        # D-main: fakes (with the w_avg update, no G gradient), then reals; one backward per chunk.
        st.G.requires_grad_(False)
        st.D.requires_grad_(True)
        st.opt_d.zero_grad(set_to_none=True)
        for r in range(rounds):
            z = torch.randn(cfg.batch_gpu, st.G.cfg.z_dim, device=device)
            c = _fake_labels(st, cfg.batch_gpu, device)
            with torch.no_grad():
                fake = st.G_train(z, c, update_w_avg=True)
            chunk = slice(r * cfg.batch_gpu, (r + 1) * cfg.batch_gpu)
            rc = real_c[chunk] if real_c is not None else None
            loss = d_loss(st.D_train(blur(fake, sigma), c), st.D_train(blur(reals[chunk], sigma), rc), split, reduction)
            loss.backward()
            losses["D"] = float(loss.detach())
        st.opt_d.step()

        update_ema(st.G_ema, st.G, cfg.ema_beta(prog.cur_nimg))
        prog.cur_nimg += cfg.batch
        prog.batch_idx += 1
        st.progress_bar(prog.cur_nimg, losses)
        done = prog.cur_nimg >= total_nimg
        if not done and prog.cur_nimg < tick_start_nimg + cfg.tick * 1000:
            continue

        # Tick: status line, stats, and every `snap` ticks a checkpoint and a sample grid.
        prog.cur_tick += 1
        now = time.time()
        sec_per_kimg = (now - tick_start_time) / max((prog.cur_nimg - tick_start_nimg) / 1000, 1e-8)
        stats = {"tick": prog.cur_tick, "kimg": prog.cur_nimg / 1000, "sec_per_kimg": sec_per_kimg,
                 "img_per_sec": 1000 / sec_per_kimg, "total_sec": now - start_time, "blur_sigma": float(sigma),
                 **{f"loss_{k}": v for k, v in losses.items()}, **st.telemetry()}
        stats_out.write(stats)
        log("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items()))
        tick_start_nimg, tick_start_time = prog.cur_nimg, now
        if cfg.max_ticks is not None and prog.cur_tick >= cfg.max_ticks:
            done = True
        if done or prog.cur_tick % cfg.snap == 0:
            with torch.no_grad():
                grid = torch.cat([st.G_ema(grid_z[i:i + 16], None if grid_c is None else grid_c[i:i + 16])
                                  for i in range(0, 64, 16)])
            save_grid(grid, out / f"samples_{prog.cur_nimg / 1000:09.3f}kimg.png")
            stats_out.plot()
            save_checkpoint(latest, st, prog, cfg, device)
            if prog.best_metric is None:  # no metric yet: the latest snapshot is also the best
                save_checkpoint(out / "best.safetensors", st, prog, cfg, device)
    stats_out.close()
    st.close()
    return prog
