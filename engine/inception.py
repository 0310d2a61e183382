"""Feature networks of the quality metrics (SPEC 7): Inception-v3 pool features and VGG16 fc2.

A `FeatureDetector` takes uint8 images [N, 3, H, W] (any H = W) and returns float32 features: it
resizes inside (Inception needs at least 75 pixels), normalizes, and runs a frozen torchvision
network in eval mode with TF32 convolutions off (full fp32 features on any GPU).

Inception-v3 (FID, KID; 2048-d pool features, 299x299 input), built by `inception_v3(weights)`:
- a path: a local state dict with torchvision `Inception3` key names, as `.safetensors` or as a
  `.pth`/`.pt` file read with `torch.load(weights_only=True)` (no pickled code is ever run).
  1000 classes = torchvision's `inception_v3_google-0cc3c7bd.pth` (IMAGENET1K_V1, TF-slim 2016
  weights); 1008 classes = the TF 2015-12-05 graph of the StyleGAN protocol as converted by
  pytorch-fid (`pt_inception-2015-12-05-6726825d.pth`), run with that graph's blocks (average
  pools that ignore padding, a max pool in the last block) and input scaling (x - 128) / 128.
- None: $SGXL_INCEPTION_WEIGHTS, else one of those two files in the torch hub cache
  (`<torch.hub.get_dir()>/checkpoints/`), else a RuntimeError naming the ways out.
- "random": torchvision's own initialization (`init_weights=True`) drawn from `seed` on the CPU,
  independent of the global RNG: the network of rFID. Its features are large (about 1e10 at 299
  pixels: eval-mode BatchNorm with fresh statistics is the identity), so rFID values are on their
  own scale; only runs with the same seed, input size and torch/torchvision init are comparable.
Resize: "tf1" (default) is TensorFlow 1's legacy bilinear resize (align_corners=False without
half-pixel centres), the one inside the 2015 graph that StyleGAN's detector reproduces; "bilinear"
is torch's half-pixel bilinear without antialiasing (pytorch-fid, torchmetrics antialias=False).
With the converted 2015 weights and "tf1", the computation is the one torch-fidelity uses to
reproduce TF FIDs; it was not checked here against published numbers (no weights offline).

VGG16 (precision/recall; 4096-d fc2 features after its ReLU), built by `vgg16(weights)`: a
torchvision `vgg16` state dict (`vgg16-397923af.pth`) by path, $SGXL_VGG16_WEIGHTS or the hub
cache, or "random". Input: resized to 224 (area when shrinking, bilinear when enlarging) and
ImageNet-normalized. StyleGAN's own VGG16 is a TorchScript pickle that this engine does not load;
precision/recall numbers depend on the VGG weights and preprocessing.

`identity` names the preprocessing and a SHA-256 of every weight and buffer, so statistics cached
for one detector are never reused with another (a different rFID seed changes it).

Legend: images_NCHW uint8 images, x_NCHW float images, feat_NF features.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.inception import InceptionA, InceptionC, InceptionE

from model.feature_networks import FrozenModule

INCEPTION_ENV = "SGXL_INCEPTION_WEIGHTS"
VGG16_ENV = "SGXL_VGG16_WEIGHTS"
# Files looked for in <torch hub dir>/checkpoints/, in this order.
INCEPTION_HUB_FILES = ("pt_inception-2015-12-05-6726825d.pth", "inception_v3_google-0cc3c7bd.pth")
VGG16_HUB_FILES = ("vgg16-397923af.pth",)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureDetector(FrozenModule):
    """uint8 images [N, 3, H, W] -> float32 features [N, feature_dim]; frozen, always eval.

    net: float images at size x size, normalized as (x - offset) * scale (x in [0, 255]) -> [N, F].
    resize: "tf1", "bilinear" or "auto" (area when shrinking, bilinear when enlarging).
    """

    def __init__(self, net: nn.Module, *, name: str, feature_dim: int, size: int, resize: str,
                 offset: tuple[float, ...], scale: tuple[float, ...]):
        super().__init__()
        if resize not in ("tf1", "bilinear", "auto"):
            raise ValueError(f"resize must be 'tf1', 'bilinear' or 'auto', got {resize!r}")
        self.net, self.name, self.feature_dim, self.size, self.resize = net, name, feature_dim, size, resize
        self.register_buffer("offset", torch.tensor(offset, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, -1, 1, 1))
        self.freeze()
        self.identity = f"{name}/{resize}-{size}px/sha256:{state_digest(self)[:16]}"

    def forward(self, images_NCHW: torch.Tensor) -> torch.Tensor:
        if images_NCHW.dtype != torch.uint8 or images_NCHW.ndim != 4 or images_NCHW.shape[1] != 3:
            raise ValueError(f"{self.name} takes uint8 images [N, 3, H, W], got {images_NCHW.dtype} "
                             f"{tuple(images_NCHW.shape)}")
        x_NCHW = resize_images(images_NCHW.float(), self.size, self.resize)
        x_NCHW = (x_NCHW - self.offset) * self.scale
        with _fp32_convolutions(x_NCHW.device):
            return self.net(x_NCHW).float()


def resize_images(x_NCHW: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Resize float images to size x size ("tf1", "bilinear" or "auto"; see the module docstring)."""
    h, w = x_NCHW.shape[-2:]
    if (h, w) == (size, size):
        return x_NCHW
    if mode == "tf1":
        x_NCHW = _tf1_resize_axis(x_NCHW, size, dim=2)
        return _tf1_resize_axis(x_NCHW, size, dim=3)
    if mode == "auto" and h >= size and w >= size:
        return F.interpolate(x_NCHW, size=(size, size), mode="area")
    return F.interpolate(x_NCHW, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


def _tf1_resize_axis(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """TF1 resize_bilinear along one axis: source = i * (in / out) in float32, edge clamped."""
    n = x.shape[dim]
    src = torch.arange(size, dtype=torch.float32, device=x.device) * torch.tensor(n / size, dtype=torch.float32)
    lo = src.floor()
    frac = (src - lo).view([-1 if d == dim else 1 for d in range(x.ndim)])
    lo = lo.long().clamp(max=n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    a, b = x.index_select(dim, lo), x.index_select(dim, hi)
    return a + (b - a) * frac


@contextlib.contextmanager
def _fp32_convolutions(device: torch.device):
    """cuDNN convolutions without TF32 (its default) for the duration: full-precision features."""
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                     allow_tf32=False):
        yield


def state_digest(module: nn.Module) -> str:
    """SHA-256 (hex) over the names, shapes, dtypes and bytes of every tensor of module.state_dict()."""
    h = hashlib.sha256()
    for key, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").reshape(-1).contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy())
    return h.hexdigest()


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from .pth/.pt through torch.load(weights_only=True).

    A {"state_dict": ...} or {"model": ...} wrapper is unwrapped and a "module." prefix dropped.
    Raises ValueError for anything that is not a dict of tensors (pickled modules included).
    """
    path = os.fspath(path)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read weights file {path} as a state dict (.safetensors, or .pth/.pt with "
                         f"torch.load(weights_only=True); pickled modules are not loaded): {e}") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"weights file {path} does not hold a state dict (a dict of tensors)")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _hub_file(names: tuple[str, ...]) -> Path | None:
    for name in names:
        path = Path(torch.hub.get_dir()) / "checkpoints" / name
        if path.is_file():
            return path
    return None


def _missing_weights(net: str, env: str, files: tuple[str, ...], arg: str, cli: str, random_way: str) -> RuntimeError:
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return RuntimeError(
        f"The {net} weights of this metric were not found offline (nothing is downloaded). Provide them in one "
        f"of these ways: (1) pass {arg}=<path> (CLI: {cli} PATH) to a local torchvision-format state dict, "
        f".safetensors or .pth/.pt (read with weights_only=True): {' or '.join(files)}; (2) set the environment "
        f"variable {env}=<path>; (3) copy one of those files into the torch hub cache {hub}/; or (4) {random_way}.")


def _resolve(weights, env: str, hub_files: tuple[str, ...], error: RuntimeError) -> str | Path:
    """'random', or an existing file: the argument, else $env, else the hub cache; else raise error."""
    if weights == "random":
        return "random"
    if weights is None:
        weights = os.environ.get(env) or _hub_file(hub_files)
        if weights is None:
            raise error
    if not os.path.isfile(weights):
        raise ValueError(f"weights must be None, 'random' or a path to an existing file, got {weights!r}")
    return weights


@contextlib.contextmanager
def _seeded(seed: int):
    """Draw a network's initialization from torch.manual_seed(seed) without touching the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# -- Inception-v3 -----------------------------------------------------------------------------------

class _TF2015InceptionA(InceptionA):
    """Mixed_5b-d of the TF 2015 graph: the 3x3 average pool ignores the zero padding."""

    def _forward(self, x):
        pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        return [self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))), self.branch_pool(pool)]


class _TF2015InceptionC(InceptionC):
    """Mixed_6b-e of the TF 2015 graph: the 3x3 average pool ignores the zero padding."""

    def _forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            d7 = layer(d7)
        pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        return [self.branch1x1(x), b7, d7, self.branch_pool(pool)]


class _TF2015InceptionE(InceptionE):
    """Mixed_7b (average pool without padding) and Mixed_7c (max pool) of the TF 2015 graph."""

    def __init__(self, in_channels: int, *, max_pool: bool):
        super().__init__(in_channels)
        self.max_pool = max_pool

    def _forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d3 = torch.cat([self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3)], 1)
        if self.max_pool:
            pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        return [self.branch1x1(x), b3, d3, self.branch_pool(pool)]


def _tf2015_blocks(net: torchvision.models.Inception3) -> None:
    """Swap in the blocks of the TF 2015 graph (same parameters, different pooling), as pytorch-fid."""
    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = (_TF2015InceptionA(c, pool_features=p)
                                                for c, p in ((192, 32), (256, 64), (288, 64)))
    net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e = (_TF2015InceptionC(768, channels_7x7=c)
                                                              for c in (128, 160, 160, 192))
    net.Mixed_7b = _TF2015InceptionE(1280, max_pool=False)
    net.Mixed_7c = _TF2015InceptionE(2048, max_pool=True)


def inception_v3(weights: str | os.PathLike | None = None, *, seed: int = 0, size: int = 299,
                 resize: str = "tf1") -> FeatureDetector:
    """The Inception-v3 pool-feature detector (2048-d) of FID and KID; rFID with weights="random".

    Args:
        weights: a state-dict file, None (environment variable, then hub cache) or "random".
        seed: initialization seed of weights="random" (SPEC decision D5; ignored otherwise).
        size: input side after the resize; 299 is the protocol (>= 75; smaller only for quick tests).
        resize: "tf1" (the protocol) or "bilinear".
    Raises:
        RuntimeError: weights=None and none were found; the message lists the ways to provide them.
    """
    if size < 75:
        raise ValueError(f"Inception-v3 needs an input of at least 75 pixels, got size={size}")
    error = _missing_weights(
        "Inception-v3", INCEPTION_ENV, INCEPTION_HUB_FILES, "inception_weights", "--inception-weights",
        "use rFID instead (rfid50k_full, rfid10k_full, rfid5k_full): the same protocol with a randomly initialized "
        "Inception whose seed is recorded (weights='random'; not comparable with published FIDs)")
    source = _resolve(weights, INCEPTION_ENV, INCEPTION_HUB_FILES, error)
    offset, scale = (127.5,) * 3, (1 / 127.5,) * 3  # torchvision / TF-slim: x / 127.5 - 1
    if source == "random":
        with _seeded(seed):
            net = torchvision.models.Inception3(aux_logits=False, transform_input=False, init_weights=True)
        name = f"inception_v3-random-seed{seed}"
    else:
        sd = {k: v for k, v in load_state_dict_file(source).items() if not k.startswith("AuxLogits.")}
        num_classes = sd["fc.weight"].shape[0] if "fc.weight" in sd else 1000
        net = torchvision.models.Inception3(num_classes=num_classes, aux_logits=False, transform_input=False,
                                            init_weights=False)
        tf2015 = num_classes == 1008
        if tf2015:
            _tf2015_blocks(net)
            offset, scale = (128.0,) * 3, (1 / 128,) * 3  # the 2015 graph: (x - 128) / 128
        if "fc.weight" not in sd:  # a feature-only file
            net.fc = nn.Identity()
        try:
            net.load_state_dict(sd)
        except RuntimeError as e:
            raise ValueError(f"{source} is not a torchvision Inception3 state dict: {e}") from e
        name = "inception_v3-tf2015" if tf2015 else "inception_v3-torchvision"
    net.fc = nn.Identity()  # pool_3 features: avgpool -> (dropout, a no-op in eval) -> flatten
    return FeatureDetector(net, name=name, feature_dim=2048, size=size, resize=resize, offset=offset, scale=scale)


# -- VGG16 ------------------------------------------------------------------------------------------

def vgg16(weights: str | os.PathLike | None = None, *, seed: int = 0, size: int = 224) -> FeatureDetector:
    """The VGG16 fc2 detector (4096-d, after the ReLU) of precision/recall.

    weights: a torchvision vgg16 state-dict file, None (environment variable, then hub cache) or
    "random" (explicit opt-in: torchvision's init drawn from seed). Raises RuntimeError as
    inception_v3 does when weights=None finds nothing.
    """
    error = _missing_weights("VGG16", VGG16_ENV, VGG16_HUB_FILES, "vgg16_weights", "--vgg16-weights",
                             "pass vgg16_weights='random' (CLI: --vgg16-weights random) for a randomly initialized "
                             "VGG16 (precision/recall then not comparable with published numbers)")
    source = _resolve(weights, VGG16_ENV, VGG16_HUB_FILES, error)
    if source == "random":
        with _seeded(seed):
            vgg = torchvision.models.vgg16(weights=None)
        name = f"vgg16-random-seed{seed}"
    else:
        vgg = torchvision.models.vgg16(weights=None)
        try:
            vgg.load_state_dict(load_state_dict_file(source))
        except RuntimeError as e:
            raise ValueError(f"{source} is not a torchvision vgg16 state dict: {e}") from e
        name = "vgg16-torchvision"
    # fc1 -> ReLU -> Dropout (no-op in eval) -> fc2 -> ReLU; the 1000-way classifier is dropped.
    net = nn.Sequential(vgg.features, vgg.avgpool, nn.Flatten(1), *vgg.classifier[:5])
    mean, std = (255 * m for m in IMAGENET_MEAN), (255 * s for s in IMAGENET_STD)
    return FeatureDetector(net, name=name, feature_dim=4096, size=size, resize="auto", offset=tuple(mean),
                           scale=tuple(1 / s for s in std))
