"""The judge: a small classifier of the built-in shapes dataset, for metrics a person can read.

`shapes_acc` (engine/metrics.py) is the fraction of class-conditional samples the judge assigns to
the class they were generated for (chance 0.1); `shapes_fid` the Fréchet distance between its
penultimate features (128) of generated and real images. The judge sees 32² RGB: images of any
stage resolution are resized to it (area when shrinking, bilinear when enlarging).

Weights ship with the package (engine/weights/shapes_judge.safetensors, fp16, no pickle). They are
reproduced by `python -m engine.judge train` (seeded; a few minutes on a 2-core CPU): images of
the synthetic dataset with seeds 1..SEEDS (training runs use seed 0, which stays held out), each
rendered at 16², 32² or 64² and resized to 32², with mild augmentation (blur, noise, brightness)
so that it judges shape, texture and hue rather than exact rendering. `python -m engine.judge
eval` prints the shipped weights' accuracy on held-out seed-0 images per resolution.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from engine import synthetic
from engine.inception import FeatureDetector, resize_images

WEIGHTS = Path(__file__).with_name("weights") / "shapes_judge.safetensors"
SIZE = 32  # input side
WIDTHS = (32, 64, 96, 128)  # conv widths; the last is the feature dimension
TRAIN_RESOLUTIONS = (16, 32, 64)


class ShapesNet(nn.Module):
    """Four 3x3 conv + BatchNorm + ReLU blocks (max-pooled between), global average pooling to the
    features, one linear layer to the 10 classes. Input: 32² normalized to [-1, 1]."""

    def __init__(self, num_classes: int = synthetic.NUM_CLASSES):
        super().__init__()
        layers, c_in = [], 3
        for i, c in enumerate(WIDTHS):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if i < len(WIDTHS) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(WIDTHS[-1], num_classes)

    def features(self, x_NCHW: torch.Tensor) -> torch.Tensor:
        return self.trunk(x_NCHW).mean(dim=(2, 3))

    def forward(self, x_NCHW: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x_NCHW))


class _Features(nn.Module):
    def __init__(self, net: ShapesNet):
        super().__init__()
        self.net = net

    def forward(self, x_NCHW: torch.Tensor) -> torch.Tensor:
        return self.net.features(x_NCHW)


class JudgeDetector(FeatureDetector):
    """uint8 images [N, 3, H, W] of any size -> the judge's features [N, 128]; `logits()` gives
    its class scores [N, 10]. Frozen, eval."""

    def __init__(self, net: ShapesNet):
        super().__init__(_Features(net), name="shapes_judge", feature_dim=WIDTHS[-1], size=SIZE, resize="auto",
                         offset=(127.5,) * 3, scale=(1 / 127.5,) * 3)

    @torch.no_grad()
    def logits(self, images_NCHW: torch.Tensor) -> torch.Tensor:
        return self.classify(self(images_NCHW))

    @torch.no_grad()
    def classify(self, features_NF: torch.Tensor) -> torch.Tensor:
        """Class scores [N, 10] of the judge's features (one pass serves shapes_fid and shapes_acc)."""
        return self.net.net.head(features_NF)


def load_judge(path: str | Path = WEIGHTS) -> JudgeDetector:
    """The judge from a safetensors file (default: the shipped weights)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"judge weights {path} are missing: reinstall the package, or rebuild them with "
                                f"`python -m engine.judge train --out {path}`")
    net = ShapesNet()
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(path).items()})
    return JudgeDetector(net.eval())


# -- training -----------------------------------------------------------------------------------------

def render_batch(seed: int, indices, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N, 3, R, R] images and int64 labels of the synthetic dataset."""
    imgs, labels = zip(*(synthetic.render(seed, int(i), resolution) for i in indices))
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def _to_input(images_NCHW: torch.Tensor) -> torch.Tensor:
    return resize_images(images_NCHW.float(), SIZE, "auto") / 127.5 - 1


def _augment(x_NCHW: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per image: Gaussian blur of sigma in [0, 1] px (at 32²), noise of std up to 0.1, brightness
    and contrast +-10 %, x-flip."""
    n = x_NCHW.shape[0]
    sigma = torch.rand(n, generator=g)
    taps = torch.arange(-2, 3, dtype=torch.float32)
    k = torch.exp(-0.5 * (taps[None] / sigma[:, None].clamp(min=1e-3)) ** 2)
    k = k / k.sum(1, keepdim=True)  # [N, 5]
    xb = x_NCHW.reshape(1, n * 3, SIZE, SIZE)
    kk = k.repeat_interleave(3, 0)
    xb = F.conv2d(F.pad(xb, (2, 2, 0, 0), mode="replicate"), kk[:, None, None, :], groups=n * 3)
    xb = F.conv2d(F.pad(xb, (0, 0, 2, 2), mode="replicate"), kk[:, None, :, None], groups=n * 3)
    x = xb.reshape(n, 3, SIZE, SIZE)
    x = x * (1 + 0.2 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)) + 0.2 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    x = x + torch.randn(x.shape, generator=g) * 0.1 * torch.rand(n, 1, 1, 1, generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    x[flip] = x[flip].flip(-1)
    return x


def held_out_accuracy(judge: JudgeDetector, resolution: int, n: int = 500) -> float:
    """Accuracy on the first n images of seed 0 (the training runs' data, never seen in training)."""
    images, labels = render_batch(0, range(n), resolution)
    return (judge.logits(images).argmax(1) == labels).float().mean().item()


def train(out: Path, *, seed: int = 0, seeds: int = 6, per_seed: int = 2000, epochs: int = 6, batch: int = 128,
          log=print) -> dict:
    """Train the judge from scratch, write its fp16 weights to `out` and a JSON sidecar; returns the
    sidecar's record (settings, held-out accuracies, seconds)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    xs, ys = [], []
    for s in range(1, seeds + 1):  # seed 0 is the training runs' data: held out
        for j, res in enumerate(TRAIN_RESOLUTIONS):
            idx = range(j * per_seed // 3, (j + 1) * per_seed // 3)
            images, labels = render_batch(s, idx, res)
            xs.append(_to_input(images))
            ys.append(labels)
    x_all, y_all = torch.cat(xs), torch.cat(ys)
    log(f"rendered {len(y_all)} images in {time.time() - t0:.0f} s")
    net = ShapesNet()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    steps = epochs * (len(y_all) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    net.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(y_all), generator=g)
        correct = 0
        for i in range(len(y_all) // batch):
            sel = perm[i * batch:(i + 1) * batch]
            logits = net(_augment(x_all[sel], g))
            loss = F.cross_entropy(logits, y_all[sel], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            correct += (logits.argmax(1) == y_all[sel]).sum().item()
        log(f"epoch {epoch + 1}/{epochs}: train accuracy {correct / ((len(y_all) // batch) * batch):.3f}, "
            f"{time.time() - t0:.0f} s")
    net.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}, str(out))
    judge = load_judge(out)  # what ships: fp16 weights
    acc = {str(r): held_out_accuracy(judge, r) for r in (16, 32, 64, 128)}
    record = {"seed": seed, "seeds": list(range(1, seeds + 1)), "per_seed": per_seed, "epochs": epochs,
              "batch": batch, "resolutions": list(TRAIN_RESOLUTIONS), "held_out_accuracy": acc,
              "seconds": round(time.time() - t0, 1), "torch": torch.__version__, "bytes": out.stat().st_size}
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    log(f"held-out accuracy (seed 0, 500 images): {acc}; wrote {out} ({record['bytes']} bytes)")
    return record


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m engine.judge", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the judge from scratch (seeded)")
    t.add_argument("--out", type=Path, default=WEIGHTS)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    e = sub.add_parser("eval", help="held-out accuracy of a judge per resolution")
    e.add_argument("--weights", type=Path, default=WEIGHTS)
    args = p.parse_args(argv)
    if args.cmd == "train":
        torch.set_num_threads(args.threads)
        train(args.out, seed=args.seed)
    else:
        judge = load_judge(args.weights)
        print(json.dumps({str(r): held_out_accuracy(judge, r) for r in (16, 32, 64, 128, 256)}, indent=2))


if __name__ == "__main__":
    main()
