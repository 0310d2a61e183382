"""Invert an image into W (SPEC 8.2), optionally followed by pivotal tuning (PTI).

    python -m engine.project --network G.safetensors --target img.png --outdir proj --steps 1000
    python -m engine.project --network G.safetensors --target img.png --outdir proj --class 207 --pti-steps 350
    python -m engine.project --network G.safetensors --target img.png --outdir proj --features random --mse 1

Writes target.png (center crop, Lanczos resize to G's resolution), proj.png (the reconstruction),
projected_w.safetensors ("w" [1, w_dim] and "ws" [1, num_ws, w_dim], meta JSON under "meta"),
proj.mp4 with --video (target | reconstruction per step), and with --pti-steps also proj_pti.png
and G_pti.safetensors (an exported generator, see engine/export.py).

Loss: LPIPS (VGG16) when the `lpips` package and its weights are available; otherwise an
LPIPS-style distance on tf_efficientnet_lite0 trunk features (the discriminator's feature
network: channel-normalized features at strides 4/8/16/32, squared differences, spatial mean,
summed), with pretrained weights or, as an explicit opt-in (--features random), random ones.
Plus an optional pixel MSE (--mse). Images larger than 256 are area-downsampled to 256 first.

Start: w_avg of the given class (or the global w_avg when unconditional). With an unknown class,
an ImageNet-conditional G (1000 classes) uses the DeiT class sampling of SPEC 8.2 when
pretrained DeiT weights are available; otherwise the mean of the per-class w_avg rows (logged).

Legend: img_NCHW float images in [-1, 1]; w_NW one latent; ws_NLW the latent per layer.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

from engine import errors  # noqa: E402
from engine.compile import maybe_compile  # noqa: E402
from engine.export import load_generator, save_generator  # noqa: E402
from engine.generate import class_index, device_of, write_video  # noqa: E402
from engine.samples import save_png, tile, to_uint8  # noqa: E402

Log = Callable[[str], None]
LPIPS_MAX = 256  # LPIPS inputs larger than this are area-downsampled (SPEC 8.2)
DEIT_SAMPLES, DEIT_SEED = 10_000, 123


def lr_at(t: float, lr: float = 0.1, rampup: float = 0.05, rampdown: float = 0.25) -> float:
    """lr * min(1, t/rampup) * (0.5 - 0.5 cos(pi * min(1, (1 - t)/rampdown))), t = step/steps."""
    return lr * min(1.0, t / rampup) * (0.5 - 0.5 * math.cos(math.pi * min(1.0, (1.0 - t) / rampdown)))


def load_target(path: str | Path, resolution: int) -> np.ndarray:
    """uint8 [res, res, 3]: RGB, center crop to a square, Lanczos resize. Clear errors for a
    missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"target image {path} does not exist")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"cannot read target image {path}: {e}") from e
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return np.asarray(im.resize((resolution, resolution), Image.LANCZOS), dtype=np.uint8)


def to_float(img_HWC: np.ndarray, device) -> torch.Tensor:
    """uint8 [H, W, 3] -> [1, 3, H, W] float32 in [-1, 1] (the inverse of the output quantization)."""
    return torch.tensor(img_HWC, device=device).permute(2, 0, 1)[None].float() / 127.5 - 1


# ----------------------------------------------------------------------------- losses

def _shrink(img_NCHW: torch.Tensor) -> torch.Tensor:
    if img_NCHW.shape[-1] > LPIPS_MAX:
        img_NCHW = F.adaptive_avg_pool2d(img_NCHW, (LPIPS_MAX, LPIPS_MAX))
    return img_NCHW


class LpipsLoss(nn.Module):
    """LPIPS (VGG16) from the `lpips` package; images in [-1, 1]."""

    name = "lpips (vgg16)"

    def __init__(self):
        super().__init__()
        import lpips  # optional dependency

        self.net = lpips.LPIPS(net="vgg", verbose=False).eval().requires_grad_(False)

    def embed(self, img_NCHW: torch.Tensor) -> torch.Tensor:
        return _shrink(img_NCHW.float())

    def distance(self, a, b) -> torch.Tensor:
        return self.net(a, b).flatten()


class FeatureLoss(nn.Module):
    """LPIPS-style distance on the lite0 trunk the discriminator uses (model/feature_networks.py).

    Input handling as D's lite0 branch: (x + 1)/2, mean/std 0.5, bilinear resize to `min_size`
    (224, what D's lite0 sees) when smaller.
    Distance: per level, features unit-normalized over channels, squared difference summed over
    channels, averaged over positions; levels summed. Returns one value per image.
    """

    def __init__(self, weights: str | os.PathLike = "pretrained", min_size: int = 224):
        super().__init__()
        from model.feature_networks import BACKBONES, LITE0, create_timm_model

        self.trunk = create_timm_model(LITE0, weights, features_only=True, out_indices=(1, 2, 3, 4))
        self.trunk.eval().requires_grad_(False)
        self.size = min_size
        self.register_buffer("mean", torch.tensor(BACKBONES[LITE0]["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(BACKBONES[LITE0]["std"]).view(1, 3, 1, 1), persistent=False)
        self.name = f"lite0 features ({'random' if weights == 'random' else weights})"

    def embed(self, img_NCHW: torch.Tensor) -> list[torch.Tensor]:
        x = (_shrink(img_NCHW.float()) + 1) / 2
        x = (x - self.mean) / self.std
        if x.shape[-1] < self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return [f / (f.square().sum(1, keepdim=True) + 1e-10).sqrt() for f in self.trunk(x)]

    def distance(self, a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
        return sum((fa - fb).square().sum(1).mean((1, 2)) for fa, fb in zip(a, b))


def make_loss(kind: str = "auto", features: str = "pretrained", log: Log = print, *, feature_size: int = 224
              ) -> nn.Module:
    """The perceptual loss: 'lpips', 'features', or 'auto' (LPIPS if available, else features).

    Raises RuntimeError with what to do when neither is available.
    """
    if kind not in ("auto", "lpips", "features"):
        raise ValueError(f"loss must be 'auto', 'lpips' or 'features', got {kind!r}")
    if kind in ("auto", "lpips"):
        try:
            return LpipsLoss()
        except Exception as e:  # not installed, or its VGG16 weights cannot be downloaded
            if kind == "lpips":
                raise RuntimeError(f"LPIPS is not available ({type(e).__name__}: {e}); install the `lpips` package "
                                   f"with its VGG16 weights, or use --loss features") from e
            log(f"LPIPS not available ({type(e).__name__}); using lite0 feature distance instead")
    try:
        loss = FeatureLoss(features, feature_size)
    except RuntimeError as e:
        raise RuntimeError(f"{e}\nOn the command line: --features PATH for a local lite0 weights file, or "
                           f"--features random to accept a random-feature distance (explicit opt-in).") from e
    if features == "random":
        log("perceptual loss on RANDOM lite0 features (--features random): a fixed random-feature distance, "
            "not a learned perceptual metric")
    return loss


# ----------------------------------------------------------------------------- start point

@torch.no_grad()
def deit_w_avg(G, target_NCHW: torch.Tensor, classifier: nn.Module, n: int = DEIT_SAMPLES, seed: int = DEIT_SEED,
               chunk: int = 1000) -> torch.Tensor:
    """SPEC 8.2: classifier softmax on the target (224², [-1, 1], not ImageNet-normalized), n
    classes drawn from it, w_avg = mean of mapping(z from RandomState(seed), those classes)[:, 0]."""
    x = F.interpolate(target_NCHW.float(), size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    probs = classifier(x).float().softmax(dim=1)[0, :G.cfg.c_dim]
    gen = torch.Generator(device=probs.device).manual_seed(seed)
    classes = torch.multinomial(probs / probs.sum(), n, replacement=True, generator=gen)
    z = torch.from_numpy(np.random.RandomState(seed).randn(n, G.cfg.z_dim)).float().to(target_NCHW.device)
    ws = [G.mapping(z[i:i + chunk], classes[i:i + chunk].to(z.device))[:, 0] for i in range(0, n, chunk)]
    return torch.cat(ws).mean(0, keepdim=True)


def initial_w(G, target_NCHW: torch.Tensor, cls: int | None, *, deit_weights: str = "pretrained",
              log: Log = print) -> torch.Tensor:
    """[1, w_dim] start of the optimization (see the module docstring for the rules)."""
    w_avg = G.mapping.w_avg
    if not G.cfg.c_dim:
        return w_avg[None].clone()
    if cls is not None:
        log(f"starting from the w_avg of class {cls}")
        return w_avg[cls][None].clone()
    if G.cfg.c_dim == 1000 and deit_weights != "none":
        from model.feature_networks import DEIT_B, create_timm_model

        try:
            deit = create_timm_model(DEIT_B, deit_weights).eval().requires_grad_(False).to(w_avg.device)
        except (RuntimeError, ValueError) as e:
            log(f"DeiT class sampling skipped: {str(e).splitlines()[0]}")
        else:
            log(f"class unknown: w_avg from {DEIT_SAMPLES} classes drawn from DeiT's softmax on the target")
            return deit_w_avg(G, target_NCHW, deit)
    elif G.cfg.c_dim != 1000:
        log(f"DeiT class sampling needs the 1000 ImageNet classes; this generator has {G.cfg.c_dim}")
    log("class unknown: starting from the mean of the per-class w_avg rows (pass --class N to start from a class)")
    return w_avg.mean(0, keepdim=True)


# ----------------------------------------------------------------------------- optimization

@dataclasses.dataclass
class Projection:
    w: torch.Tensor  # [1, w_dim]
    losses: list[float]  # loss before each step, then the final loss (steps + 1 values)
    image: np.ndarray  # uint8 [H, W, 3] reconstruction
    frames: list[np.ndarray]  # progress frames (target | reconstruction), when requested


def _broadcast(G, w_NW: torch.Tensor) -> torch.Tensor:
    return w_NW.unsqueeze(1).expand(-1, G.synthesis.num_ws, -1)


def project(G, target_NCHW: torch.Tensor, w_init: torch.Tensor, *, steps: int = 1000, loss_fn: nn.Module,
            lr: float = 0.1, mse: float = 0.0, synthesis: nn.Module | None = None, frame_every: int = 0,
            progress: bool = True) -> Projection:
    """Optimize one w [1, w_dim], broadcast to all ws, toward the target (SPEC 8.2)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    synthesis = synthesis or G.synthesis
    target_emb = loss_fn.embed(target_NCHW)
    target_u8 = to_uint8(target_NCHW)[0]
    w = w_init.detach().clone().float().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr, betas=(0.9, 0.999))

    def loss_of(img):
        loss = loss_fn.distance(loss_fn.embed(img), target_emb).sum()
        return loss + mse * F.mse_loss(img, target_NCHW) if mse else loss

    losses, frames = [], []
    bar = tqdm(range(steps), desc="project", unit="step", disable=not progress, dynamic_ncols=True)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step / steps, lr)
        img = synthesis(_broadcast(G, w))
        loss = loss_of(img)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
        if frame_every and step % frame_every == 0:
            frames.append(np.concatenate([target_u8, to_uint8(img)[0]], axis=1))
    with torch.no_grad():
        img = synthesis(_broadcast(G, w))
        losses.append(loss_of(img).item())
    image = to_uint8(img)[0]
    if frame_every:
        frames.append(np.concatenate([target_u8, image], axis=1))
    return Projection(w=w.detach(), losses=losses, image=image, frames=frames)


def pivotal_tuning(G, target_NCHW: torch.Tensor, w_pivot: torch.Tensor, *, steps: int = 350, loss_fn: nn.Module,
                   lr: float = 3e-4, locality: float = 0.0, cls: int | None = None, seed: int = 0,
                   compile: bool = False, device: torch.device | None = None,
                   progress: bool = True) -> tuple[nn.Module, list[float]]:
    """PTI: fine-tune a copy of G's synthesis at the fixed pivot (Adam lr 3e-4, MSE + perceptual).

    locality > 0 adds locality x perceptual(tuned, original) at a w drawn with psi 0.5 and moved
    to distance 30 from the pivot along w - pivot (SPEC 8.2 uses locality 10).
    Returns (tuned generator, reconstruction losses at the pivot: before each step, then final).
    """
    tuned = copy.deepcopy(G)
    tuned.synthesis.requires_grad_(True)
    device = device or target_NCHW.device
    synth = maybe_compile(tuned.synthesis, enabled=compile, device=device)
    orig = maybe_compile(G.synthesis, enabled=compile and locality > 0, device=device)
    opt = torch.optim.Adam(tuned.synthesis.parameters(), lr=lr)
    target_emb = loss_fn.embed(target_NCHW)
    ws_pivot = _broadcast(G, w_pivot.detach())
    rs = np.random.RandomState(seed)
    losses = []

    def recon_loss(img):
        return F.mse_loss(img, target_NCHW) + loss_fn.distance(loss_fn.embed(img), target_emb).sum()

    bar = tqdm(range(steps), desc="pti", unit="step", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        loss = recon_loss(synth(ws_pivot))
        losses.append(loss.item())
        if locality:
            with torch.no_grad():
                z = torch.from_numpy(rs.randn(1, G.cfg.z_dim)).float().to(device)
                c = None if not G.cfg.c_dim else torch.tensor([cls if cls is not None else rs.randint(G.cfg.c_dim)],
                                                                device=device)
                direction = G.mapping(z, c, psi=0.5)[:, 0] - w_pivot
                ws_loc = _broadcast(G, w_pivot + 30 * direction / direction.norm())
                ref = orig(ws_loc)
            new = synth(ws_loc)
            loss = loss + locality * loss_fn.distance(loss_fn.embed(new), loss_fn.embed(ref)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    with torch.no_grad():
        losses.append(recon_loss(synth(ws_pivot)).item())
    return tuned.eval().requires_grad_(False), losses


# ----------------------------------------------------------------------------- command line

def save_w(path: Path, w_NW: torch.Tensor, ws_NLW: torch.Tensor, meta: dict) -> Path:
    """Atomic safetensors write of the projected latent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tensors = {"w": w_NW.detach().float().cpu().contiguous(), "ws": ws_NLW.detach().float().cpu().contiguous()}
    save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)})
    os.replace(tmp, path)
    return path


def parser() -> argparse.ArgumentParser:
    p = errors.ArgumentParser(prog="python -m engine.project",
                              description="Project an image into W of a trained generator (optionally + PTI).")
    p.add_argument("--network", required=True, help="training checkpoint or exported generator (.safetensors)")
    p.add_argument("--target", required=True, help="target image (any size; center-cropped and resized)")
    p.add_argument("--outdir", default="proj", help="output folder (default proj)")
    p.add_argument("--steps", type=int, default=1000, help="optimization steps (default 1000)")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (default 0.1)")
    p.add_argument("--class", dest="cls", default=None, help="class index or name of the target (conditional G)")
    p.add_argument("--loss", default="auto", choices=("auto", "lpips", "features"),
                   help="perceptual loss: LPIPS, lite0 features, or auto (LPIPS when available)")
    p.add_argument("--features", default="pretrained",
                   help="lite0 weights for --loss features: pretrained, random (explicit opt-in) or a file path")
    p.add_argument("--feature-size", type=int, default=224,
                   help="--loss features: smaller images are upsampled to this side first (default 224, as D sees them)")
    p.add_argument("--mse", type=float, default=0.0, help="weight of an extra pixel MSE term (default 0)")
    p.add_argument("--deit-weights", default="pretrained",
                   help="DeiT-B weights for class sampling of a 1000-class G without --class: pretrained, a file "
                        "path, or none")
    p.add_argument("--pti-steps", type=int, default=0, help="pivotal tuning steps after the projection (0 = off)")
    p.add_argument("--pti-lr", type=float, default=3e-4, help="PTI learning rate (default 3e-4)")
    p.add_argument("--pti-locality", type=float, default=0.0,
                   help="PTI locality regularizer weight (SPEC 8.2: 10; default 0 = off)")
    p.add_argument("--video", action="store_true", help="write proj.mp4 (target | reconstruction over the steps)")
    p.add_argument("--video-every", type=int, default=0, help="steps per video frame (default: steps/200)")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"),
                   help="synthesis compute dtype (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--compile", type=int, default=1, choices=(0, 1), help="torch.compile the synthesis on GPU")
    return p


def run(args: argparse.Namespace, log: Log = print, progress: bool = True) -> dict:
    """Everything main() does; returns a summary (paths, losses)."""
    device = device_of(args.device)
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    G, meta = load_generator(args.network, device, dtype=dtype)
    cls = class_index(args.cls, G.cfg.c_dim, meta.get("class_names"))
    target_u8 = load_target(args.target, G.cfg.resolution)
    target = to_float(target_u8, device)
    with errors.needs_weights():  # LPIPS or lite0 weights not found: a one-line error naming the options
        loss_fn = make_loss(args.loss, args.features, log, feature_size=args.feature_size)
    loss_fn = loss_fn.to(device)
    log(f"loss: {loss_fn.name}" + (f" + {args.mse:g} x pixel MSE" if args.mse else ""))
    w0 = initial_w(G, target, cls, deit_weights=args.deit_weights, log=log)
    every = args.video_every or max(1, args.steps // 200)
    synthesis = maybe_compile(G.synthesis, enabled=bool(args.compile), device=device)
    res = project(G, target, w0, steps=args.steps, loss_fn=loss_fn, lr=args.lr, mse=args.mse, synthesis=synthesis,
                  frame_every=every if args.video else 0, progress=progress)
    out = Path(args.outdir)
    summary = {"network": str(args.network), "target": str(args.target), "class": cls, "steps": args.steps,
               "loss": loss_fn.name, "mse": args.mse, "initial_loss": res.losses[0], "final_loss": res.losses[-1]}
    files = [save_png(target_u8, out / "target.png"), save_png(res.image, out / "proj.png"),
             save_w(out / "projected_w.safetensors", res.w, _broadcast(G, res.w), summary)]
    log(f"projection: loss {res.losses[0]:.4f} -> {res.losses[-1]:.4f}")
    if args.video:
        files.append(write_video(out / "proj.mp4", res.frames, fps=30, log=log))
    if args.pti_steps:
        tuned, pti_losses = pivotal_tuning(G, target, res.w, steps=args.pti_steps, loss_fn=loss_fn, lr=args.pti_lr,
                                           locality=args.pti_locality, cls=cls, compile=bool(args.compile),
                                           device=device, progress=progress)
        with torch.no_grad():
            img = to_uint8(tuned.synthesis(_broadcast(G, res.w)))[0]
        pti = {"steps": args.pti_steps, "lr": args.pti_lr, "locality": args.pti_locality, "w": res.w[0].tolist(),
               "final_loss": pti_losses[-1]}
        files += [save_png(img, out / "proj_pti.png"), save_png(tile(np.stack([[target_u8, res.image, img]])),
                                                                out / "compare.png"),
                  save_generator(tuned, out / "G_pti.safetensors", meta, pti=pti, source=str(args.network))]
        summary["pti_losses"] = pti_losses
        log(f"PTI: loss {pti_losses[0]:.4f} -> {pti_losses[-1]:.4f}")
    summary["losses"], summary["files"] = res.losses, files
    for f in files:
        log(f"wrote {f}")
    return summary


@errors.cli
def main(argv=None) -> int:
    """The command line; expected errors: one `error:` line, exit status 2 (engine/errors.py)."""
    run(parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
