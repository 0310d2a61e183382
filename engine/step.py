"""One training iteration (SPEC 5.2), the only copy: engine/loop.py trains with it, bench/ times it
and the parity tests (tests/engine/ds_steps.py) run it.

    G_main  G-main on every chunk with D frozen (hinge g_loss, plus classifier guidance), gradients
            through D's activations into G;
    G_pl    path-length regularization when asked (stem, every g_reg_interval-th iteration), eager:
            its double backward does not compile; then one G step;
    D_main  D-main on every chunk: fakes from G under no_grad with the w_avg update, then that
            chunk's reals, one combined d_loss and one backward per chunk; one D step;
    G_ema   G_ema = lerp(G, G_ema, beta).

Each phase is a `torch.profiler.record_function` range, so profiles show them by name. Everything
goes through the backend of engine/distributed.py (DeepSpeed engines or plain PyTorch). Losses
stay on the device: they are summed into a `PhaseLosses` and read back once per tick.

Labels: integer class indices [n] or already one-hot/float [n, C]; D and guidance get one-hot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch.profiler import record_function

from engine.losses import blur, d_loss, g_loss, path_length_penalty

# draw(phase, r, n) -> (z [n, z_dim], c [n] | [n, C] | None): the latents and labels of chunk r of
# phase "G", "pl" or "D"; called in that order, G's chunks first.
Draw = Callable[[str, int, int], tuple[torch.Tensor, torch.Tensor | None]]


class PhaseLosses:
    """Per-phase losses summed on the device and read back once (no host sync per chunk): the
    mean of each phase's loss since the last read."""

    def __init__(self, device: torch.device):
        self.device, self.sums, self.counts = torch.device(device), {}, {}

    def add(self, key: str, loss: torch.Tensor) -> None:
        value = loss.detach().float().reshape(())
        self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.counts[key] = self.counts.get(key, 0) + 1

    def read(self) -> dict[str, float]:
        """{key: mean} with one device-to-host copy; clears the sums."""
        if not self.sums:
            return {}
        keys = list(self.sums)
        counts = torch.tensor([self.counts[k] for k in keys], device=self.device)
        means = (torch.stack([self.sums[k] for k in keys]) / counts).tolist()
        self.sums, self.counts = {}, {}
        return dict(zip(keys, means))


@dataclasses.dataclass(kw_only=True)
class PathLength:
    """The path-length regularizer's settings and its running mean (a 0-d device tensor)."""

    batch: int  # latents per chunk (batch_gpu // pl_batch_shrink)
    weight: float  # penalty multiplier (pl_weight, times g_reg_interval when asked)
    decay: float
    mean: torch.Tensor


def onehot(c: torch.Tensor | None, c_dim: int) -> torch.Tensor | None:
    """One-hot float labels of integer labels; float labels unchanged; None stays None."""
    if c is None or c.is_floating_point():
        return c
    # Compared with arange rather than F.one_hot, whose range check reads the labels back on the CPU.
    return (c[:, None] == torch.arange(c_dim, device=c.device)).float()


def _blur(img: torch.Tensor, sigma: torch.Tensor | None) -> torch.Tensor:
    return img if sigma is None else blur(img, sigma)


def train_iteration(be, reals: Sequence[tuple[torch.Tensor, torch.Tensor | None]], draw: Draw, *, split, c_dim: int,
                    reduction: str = "mean", sigma: torch.Tensor | None = None, guidance=None,
                    cls_weight: float = 0.0, pl: PathLength | None = None, ema_beta: float,
                    losses: PhaseLosses | None = None, loss_scale: float = 1.0) -> None:
    """One iteration of G and D through backend `be`.

    Args:
        reals: this rank's chunks of real images in [-1, 1] and their labels (None: unconditional).
        draw: latents and labels of each chunk (see `Draw`); its chunk sizes are the reals'.
        split: D's logits per backbone (D.num_logits). c_dim: classes (0: unconditional).
        reduction: of the hinge losses over a chunk ("mean" per chunk as the original, or "sum").
        sigma: blur of D's inputs (0-d tensor; None: no blur).
        guidance: classifier guidance (model/guidance.py) weighted by cls_weight, or None.
        pl: path-length regularization this iteration, or None; its mean is updated.
        ema_beta: this iteration's G_ema decay (TrainConfig.ema_beta).
        losses: where the phase losses go ("G", "pl", "D"), or None.
        loss_scale: multiplies every backward's loss (1 / chunks averages gradients over chunks).
    """
    sizes = [img.shape[0] for img, _ in reals]

    with record_function("G_main"):
        be.begin("G")
        for r, n in enumerate(sizes):
            z, c = draw("G", r, n)
            img = be.forward("G", z, c)
            loss = g_loss(be.forward("D", _blur(img, sigma), onehot(c, c_dim)), split, reduction)
            if guidance is not None:
                with be.autocast("D"):
                    loss = loss + cls_weight * guidance(img, onehot(c, c_dim)).float()
            be.backward("G", loss * loss_scale)
            if losses is not None:
                losses.add("G", loss)
    if pl is not None:
        with record_function("G_pl"), torch.compiler.set_stance("force_eager"):
            G = be.g_module  # the penalty calls G's mapping and synthesis separately
            for r in range(len(sizes)):
                z, c = draw("pl", r, pl.batch)
                penalty, mean = path_length_penalty(G.synthesis, G.mapping(z, c), pl.mean, pl.decay)
                # A non-finite penalty skips the step (engine/divergence.py) and must not poison the mean.
                pl.mean = torch.where(torch.isfinite(mean), mean, pl.mean).detach()
                be.backward("G", penalty.mean() * (pl.weight * loss_scale))
                if losses is not None:
                    losses.add("pl", penalty.mean())
    be.step("G")

    with record_function("D_main"):
        be.begin("D")
        for r, (real, real_c) in enumerate(reals):
            z, c = draw("D", r, real.shape[0])
            with torch.no_grad():
                fake = be.forward("G", z, c, update_w_avg=True)
            loss = d_loss(be.forward("D", _blur(fake, sigma), onehot(c, c_dim)),
                          be.forward("D", _blur(real, sigma), onehot(real_c, c_dim)), split, reduction)
            be.backward("D", loss * loss_scale)
            if losses is not None:
                losses.add("D", loss)
        be.step("D")

    with record_function("G_ema"):
        be.update_ema(ema_beta)
