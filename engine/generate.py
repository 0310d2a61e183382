"""Sample a trained generator (SPEC 8.1): images, grids, class sheets, style mixing, videos.

    python -m engine.generate --network G.safetensors --seeds 0-7 --outdir out          # seed0000.png ...
    python -m engine.generate --network G.safetensors --seeds 0-15 --class 3 --trunc 0.7 --grid only --outdir out
    python -m engine.generate --network G.safetensors --seeds 0 --translate 0.2,-0.1 --rotate 15 --outdir out
    python -m engine.generate --network G.safetensors --seeds 0-7 --classes 0-9 --sheet --outdir out
    python -m engine.generate --network G.safetensors --seeds 0-3 --mix-seeds 10-13 --mix-layers 0-2 --outdir out
    python -m engine.generate --network G.safetensors --seeds 0-3 --video out/interp.mp4 --frames 30 --interp w

--network takes a training checkpoint (its G_ema is used; D is never read) or a file written by
engine/export.py. Each seed's z is RandomState(seed).randn(1, z_dim); when the generator is
conditional and no --class is given, the same RandomState then draws that image's class. The
mapping runs one sample at a time, so a seed's ws never depend on the batch; the synthesis runs
in --batch sized chunks (padded to a static shape when compiled). Its batch-global style RMS
cancels in demodulation up to float rounding (~1e-6), so a seed's uint8 image is in practice,
not provably, the same at every batch size.

Legend: z_NZ latents, ws_NLW per-layer latents, img_NHWC uint8 images, grid_RCHWC tiled images.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from engine import errors  # noqa: E402
from engine.compile import maybe_compile  # noqa: E402
from engine.export import load_generator  # noqa: E402
from engine.samples import grid_of, save_png, tile, to_uint8  # noqa: E402

Log = Callable[[str], None]
MAX_SEED = 2**32 - 1  # numpy RandomState's seed range


# ----------------------------------------------------------------------------- argument parsing

def parse_range(text: str, *, allow_empty: bool = False, what: str = "seeds") -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11] (order kept, duplicates kept)."""
    text = text.strip()
    if not text:
        if allow_empty:
            return []
        raise ValueError(f"{what}: empty list")
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise ValueError(f"{what}: cannot parse {part!r} in {text!r} (use e.g. 0-7,42)")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if hi < lo:
            raise ValueError(f"{what}: range {part.strip()!r} runs backwards")
        out.extend(range(lo, hi + 1))
    return out


def parse_seeds(text: str) -> list[int]:
    seeds = parse_range(text)
    if max(seeds) > MAX_SEED:
        raise ValueError(f"seeds must be in [0, {MAX_SEED}], got {max(seeds)}")
    return seeds


def parse_vec2(text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        x, y = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"expected two comma-separated numbers like 0.1,-0.2, got {text!r}") from None
    return x, y


def class_index(spec: str | int | None, c_dim: int, names: list[str] | None = None) -> int | None:
    """A class given as an index or, when the checkpoint carries class names, a name."""
    if spec is None:
        return None
    if not c_dim:
        raise ValueError(f"the generator is unconditional: no class can be chosen (got {spec!r})")
    text = str(spec).strip()
    if re.fullmatch(r"-?\d+", text):
        idx = int(text)
        if not 0 <= idx < c_dim:
            raise ValueError(f"class {idx} is out of range: the generator has {c_dim} classes (0..{c_dim - 1})")
        return idx
    if not names:
        raise ValueError(f"class {text!r} is not an index and the checkpoint carries no class names")
    if text not in names:
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise ValueError(f"unknown class name {text!r}; the checkpoint's classes are: {shown}")
    return names.index(text)


def parse_classes(text: str, c_dim: int, names: list[str] | None = None) -> list[int]:
    """'0-3,7,tabby' -> class indices (ranges of indices, single indices or names)."""
    out: list[int] = []
    for part in text.split(","):
        if re.fullmatch(r"\s*\d+\s*-\s*\d+\s*", part):
            out.extend(class_index(i, c_dim, names) for i in parse_range(part, what="classes"))
        else:
            out.append(class_index(part, c_dim, names))
    return out


# ----------------------------------------------------------------------------- latents

def seed_latents(seeds: Iterable[int], z_dim: int, c_dim: int, cls: int | None = None
                 ) -> tuple[np.ndarray, list[int] | None]:
    """z [N, z_dim] float64 with z_i = RandomState(seed_i).randn(1, z_dim), and the classes:
    `cls` for every image, a class drawn by the same RandomState after z when cls is None and the
    generator is conditional, or None when it is unconditional."""
    zs, labels = [], []
    for seed in seeds:
        rs = np.random.RandomState(seed)
        zs.append(rs.randn(1, z_dim))
        labels.append(cls if cls is not None else int(rs.randint(c_dim)) if c_dim else None)
    return np.concatenate(zs), (labels if c_dim else None)


def make_transform(translate: tuple[float, float] = (0.0, 0.0), rotate: float = 0.0) -> np.ndarray:
    """inverse(m), m = [[cos a, sin a, tx], [-sin a, cos a, ty], [0, 0, 1]] with a in degrees (SPEC 8.1)."""
    a = math.radians(rotate)
    m = np.array([[math.cos(a), math.sin(a), translate[0]], [-math.sin(a), math.cos(a), translate[1]], [0, 0, 1]])
    return np.linalg.inv(m)


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation of two latents (by angle, magnitudes blended along the arc)."""
    cos = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    omega = math.acos(min(1.0, max(-1.0, cos)))
    if math.sin(omega) < 1e-6:
        return (1 - t) * a + t * b
    return (math.sin((1 - t) * omega) * a + math.sin(t * omega) * b) / math.sin(omega)


# ----------------------------------------------------------------------------- sampling

class Sampler:
    """ws from (z, class) and uint8 images from ws, for one loaded generator.

    Args:
        G: the generator (eval mode); its transform buffer is set from `transform`.
        device: where G lives.
        psi: truncation over all ws toward the class's w_avg row (the global w_avg if unconditional).
        batch: images per synthesis call.
        compile: torch.compile the synthesis on GPU (engine/compile.py); ignored on CPU.
        transform: 3x3 user transform written into G's Fourier input (make_transform); None = identity.
    """

    def __init__(self, G, *, device: torch.device, psi: float = 1.0, batch: int = 8, compile: bool = False,
                 transform: np.ndarray | None = None):
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.G, self.device, self.psi, self.batch = G, device, psi, batch
        transform = np.eye(3) if transform is None else transform  # always set: G may be reused
        G.synthesis.input.transform.copy_(torch.as_tensor(transform, dtype=torch.float32))
        self.synthesis = maybe_compile(G.synthesis, enabled=compile, device=device)
        self.pad = self.synthesis is not G.synthesis  # compiled: keep the batch shape static

    @property
    def c_dim(self) -> int:
        return self.G.cfg.c_dim

    @torch.no_grad()
    def ws(self, z_NZ: np.ndarray, labels: list[int] | None, psi: float | None = None) -> torch.Tensor:
        """ws [N, num_ws, w_dim] float32, one mapping call per sample (batch-independent)."""
        psi = self.psi if psi is None else psi
        z = torch.as_tensor(np.asarray(z_NZ), dtype=torch.float32, device=self.device)
        out = []
        for i in range(z.shape[0]):
            c = None if labels is None else torch.tensor([labels[i]], device=self.device)
            out.append(self.G.mapping(z[i:i + 1], c, psi=psi))
        return torch.cat(out)

    def seed_ws(self, seeds: list[int], cls: int | None = None) -> torch.Tensor:
        z, labels = seed_latents(seeds, self.G.cfg.z_dim, self.c_dim, cls)
        return self.ws(z, labels)

    @torch.no_grad()
    def images(self, ws_NLW: torch.Tensor) -> np.ndarray:
        """uint8 [N, H, W, 3] from ws, `batch` images per synthesis call."""
        return np.concatenate(list(self.iter_images(ws_NLW)))

    @torch.no_grad()
    def iter_images(self, ws_NLW: torch.Tensor) -> Iterator[np.ndarray]:
        for i in range(0, ws_NLW.shape[0], self.batch):
            chunk = ws_NLW[i:i + self.batch]
            n = chunk.shape[0]
            if self.pad and n < self.batch:
                chunk = torch.cat([chunk, chunk[-1:].expand(self.batch - n, -1, -1)])
            yield to_uint8(self.synthesis(chunk)[:n])


def load_ws(path: str | Path, G) -> torch.Tensor:
    """ws [N, num_ws, w_dim] from a safetensors file holding "ws" (or a single "w", broadcast)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"ws file {path} does not exist")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a safetensors file: {e}") from e
    num_ws, w_dim = G.synthesis.num_ws, G.cfg.w_dim
    if "ws" in tensors:
        ws = tensors["ws"].float()
    elif "w" in tensors:
        ws = tensors["w"].float().reshape(-1, 1, w_dim).expand(-1, num_ws, -1)
    else:
        raise ValueError(f"{path} holds neither 'ws' nor 'w' (keys: {sorted(tensors)})")
    if ws.ndim != 3 or tuple(ws.shape[1:]) != (num_ws, w_dim):
        raise ValueError(f"{path}: ws of shape {tuple(ws.shape)} do not fit this generator ([N, {num_ws}, {w_dim}])")
    return ws


# ----------------------------------------------------------------------------- products

def class_sheet(sampler: Sampler, seeds: list[int], classes: list[int]) -> np.ndarray:
    """uint8 [len(classes), len(seeds), H, W, 3]: row r is class classes[r] at every seed."""
    if not sampler.c_dim:
        raise ValueError("a class sheet needs a conditional generator")
    z, _ = seed_latents(seeds, sampler.G.cfg.z_dim, sampler.c_dim)
    ws = torch.cat([sampler.ws(z, [c] * len(seeds)) for c in classes])
    img = sampler.images(ws)
    return img.reshape(len(classes), len(seeds), *img.shape[1:])


def style_mix(sampler: Sampler, row_seeds: list[int], col_seeds: list[int], layers: list[int],
              cls: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row images [R], column images [C], mixes [R, C]): mix (r, c) takes the row seed's ws and
    the column seed's ws at the layer indices `layers` (0 = the Fourier input's w)."""
    num_ws = sampler.G.synthesis.num_ws
    bad = [i for i in layers if not 0 <= i < num_ws]
    if bad:
        raise ValueError(f"mix layers {bad} are out of range: this generator has {num_ws} ws (0..{num_ws - 1})")
    row_ws, col_ws = sampler.seed_ws(row_seeds, cls), sampler.seed_ws(col_seeds, cls)
    mixed = row_ws[:, None].repeat(1, len(col_seeds), 1, 1)  # [R, C, L, W]
    if layers:
        idx = torch.tensor(sorted(set(layers)), device=row_ws.device)
        mixed[:, :, idx] = col_ws[None, :, idx].expand(len(row_seeds), -1, -1, -1)
    img = sampler.images(mixed.flatten(0, 1))
    return sampler.images(row_ws), sampler.images(col_ws), img.reshape(len(row_seeds), len(col_seeds), *img.shape[1:])


def mix_grid(rows: np.ndarray, cols: np.ndarray, mixed: np.ndarray) -> np.ndarray:
    """[R+1, C+1, H, W, 3]: column seeds along the top, row seeds down the left, black corner."""
    r, c = mixed.shape[:2]
    grid = np.zeros((r + 1, c + 1, *mixed.shape[2:]), dtype=np.uint8)
    grid[0, 1:], grid[1:, 0], grid[1:, 1:] = cols, rows, mixed
    return grid


def interpolation_ws(sampler: Sampler, seeds: list[int], classes: list[int] | None, *, interp: str = "w",
                     frames: int = 30, loop: bool = False) -> torch.Tensor:
    """ws of every video frame: keyframe k is (seeds[k % S], classes[k % C]), `frames` frames per
    transition, the last keyframe once at the end.

    interp "w": lerp between the keyframes' (truncated) ws. "slerp"/"lerp": interpolate z; when
    the two keyframes' classes differ, the frame is lerp(ws(z_t, class_a), ws(z_t, class_b), t).
    """
    if interp not in ("w", "slerp", "lerp"):
        raise ValueError(f"interp must be 'w', 'slerp' or 'lerp', got {interp!r}")
    if frames < 1:
        raise ValueError(f"frames per transition must be >= 1, got {frames}")
    g = sampler.G
    z, seed_labels = seed_latents(seeds, g.cfg.z_dim, g.cfg.c_dim)
    k = max(len(seeds), len(classes) if classes else 0)
    keys = [(z[i % len(seeds)], None if not g.cfg.c_dim else
             (classes[i % len(classes)] if classes else seed_labels[i % len(seeds)])) for i in range(k)]
    if loop:
        keys.append(keys[0])
    if len(keys) < 2:
        raise ValueError("a video needs at least two keyframes: give two or more seeds (or classes), or --loop")
    out = []
    key_ws = sampler.ws(np.stack([kz for kz, _ in keys]), None if not g.cfg.c_dim else [kc for _, kc in keys])
    for j in range(len(keys) - 1):
        (za, ca), (zb, cb) = keys[j], keys[j + 1]
        last = j == len(keys) - 2
        for i in range(frames + (1 if last else 0)):
            t = i / frames
            if interp == "w":
                out.append(torch.lerp(key_ws[j], key_ws[j + 1], t)[None])
                continue
            zt = (slerp(za, zb, t) if interp == "slerp" else (1 - t) * za + t * zb)[None]
            wa = sampler.ws(zt, None if ca is None else [ca])
            out.append(wa if ca == cb else torch.lerp(wa, sampler.ws(zt, [cb]), t))
    return torch.cat(out)


def has_ffmpeg() -> bool:
    """Whether imageio can write MP4 (the imageio-ffmpeg package and its ffmpeg binary)."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError, OSError):
        return False
    return True


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float = 30, log: Log = print) -> Path:
    """Write uint8 HWC frames as MP4 (H.264 through imageio's ffmpeg plugin) or, when ffmpeg is
    missing, as an animated GIF next to it (same name, .gif). Atomic; returns the written path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() != ".gif" and has_ffmpeg():
        import imageio.v2 as imageio

        tmp = path.with_name(f".{path.stem}.tmp{path.suffix or '.mp4'}")
        with imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                macro_block_size=1, pixelformat="yuv420p") as writer:
            for frame in frames:
                writer.append_data(frame)
        tmp.replace(path)
        return path
    if path.suffix.lower() != ".gif":
        log(f"ffmpeg is not available (imageio-ffmpeg missing): writing an animated GIF instead of {path.name}")
        path = path.with_suffix(".gif")
    pics = [Image.fromarray(f) for f in frames]
    if not pics:
        raise ValueError("no frames to write")
    tmp = path.with_name(f".{path.name}.tmp")
    pics[0].save(tmp, format="GIF", save_all=True, append_images=pics[1:], duration=max(1, round(1000 / fps)), loop=0)
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------- command line

def parser() -> argparse.ArgumentParser:
    p = errors.ArgumentParser(prog="python -m engine.generate",
                              description="Sample a trained StyleGAN-XL generator (images, grids, class sheets, "
                                          "style mixing, interpolation videos).")
    p.add_argument("--network", required=True, help="training checkpoint or exported generator (.safetensors)")
    p.add_argument("--seeds", default="0-7", help="seeds, e.g. 0-7,42 (default 0-7)")
    p.add_argument("--class", dest="cls", default=None,
                   help="class index or name (names need a checkpoint with class names); default: a random class "
                        "per image, drawn from the image's seed")
    p.add_argument("--classes", default=None, help="classes for --sheet rows or --video keyframes, e.g. 0-9 or names")
    p.add_argument("--trunc", type=float, default=1.0, help="truncation psi toward the class's w_avg (default 1)")
    p.add_argument("--translate", default="0,0", help="tx,ty of the Fourier input (default 0,0)")
    p.add_argument("--rotate", type=float, default=0.0, help="rotation of the Fourier input in degrees")
    p.add_argument("--batch", type=int, default=8, help="images per synthesis call (default 8)")
    p.add_argument("--outdir", default="out", help="output folder (default out)")
    p.add_argument("--grid", nargs="?", const="also", choices=("also", "only"), default=None,
                   help="write grid.png; 'only' skips the per-seed PNGs (bare --grid = also)")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"),
                   help="synthesis compute dtype (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--compile", type=int, default=1, choices=(0, 1), help="torch.compile the synthesis on GPU")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--video", default=None, metavar="PATH",
                      help="interpolation video through the --seeds (and --classes) keyframes; MP4, or GIF without ffmpeg")
    mode.add_argument("--sheet", action="store_true", help="class sheet: rows = --classes, columns = --seeds")
    mode.add_argument("--mix-seeds", default=None, help="style mixing: columns = these seeds, rows = --seeds")
    mode.add_argument("--ws", default=None, metavar="FILE",
                      help="render saved ws instead of seeds (projected_w.safetensors of engine/project.py)")
    p.add_argument("--mix-layers", default=None,
                   help="ws indices taken from the column seed, e.g. 0-3 ('' = none; default: the first half)")
    p.add_argument("--interp", default="w", choices=("w", "slerp", "lerp"),
                   help="video: lerp in W (default), or slerp/lerp in Z")
    p.add_argument("--frames", type=int, default=30, help="video frames per transition (default 30)")
    p.add_argument("--fps", type=float, default=30, help="video frame rate (default 30)")
    p.add_argument("--loop", action="store_true", help="video: return to the first keyframe")
    return p


def device_of(name: str | None) -> torch.device:
    """--device: None = cuda when available, else cpu. ValueError for a name torch or this machine lacks."""
    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:  # torch's "Expected one of cpu, cuda, ... device type": a bad argument
        raise ValueError(f"--device {name!r} is not a device name (use cpu, cuda or cuda:N): {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def run(args: argparse.Namespace, log: Log = print) -> list[Path]:
    """Everything main() does, minus argument parsing and error formatting; returns written files."""
    device = device_of(args.device)
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    seeds = parse_seeds(args.seeds)
    translate = parse_vec2(args.translate)
    G, meta = load_generator(args.network, device, dtype=dtype)
    names = meta.get("class_names")
    c_dim = G.cfg.c_dim
    cls = class_index(args.cls, c_dim, names)
    classes = parse_classes(args.classes, c_dim, names) if args.classes else None
    if classes is not None and not (args.video or args.sheet):
        raise ValueError("--classes sets the rows of --sheet or the keyframes of --video; for images use --class")
    if args.mix_layers is not None and args.mix_seeds is None:
        raise ValueError("--mix-layers needs --mix-seeds (the column seeds of the style-mixing grid)")
    transform = make_transform(translate, args.rotate) if (translate != (0.0, 0.0) or args.rotate) else None
    sampler = Sampler(G, device=device, psi=args.trunc, batch=args.batch, compile=bool(args.compile),
                      transform=transform)
    outdir = Path(args.outdir)
    log(f"{args.network}: {G.cfg.resolution}x{G.cfg.resolution}, {c_dim or 'no'} classes, {device}, {dtype}")
    if args.ws:
        ws = load_ws(args.ws, G).to(device)
        img = sampler.images(ws)
        return [_said(log, save_png(im, outdir / f"ws{i:02d}.png")) for i, im in enumerate(img)]
    if args.video:
        ws = interpolation_ws(sampler, seeds, classes if classes else None if cls is None else [cls],
                              interp=args.interp, frames=args.frames, loop=args.loop)
        frames = (frame for chunk in sampler.iter_images(ws) for frame in chunk)
        path = write_video(args.video, frames, fps=args.fps, log=log)
        return [_said(log, path, f"{ws.shape[0]} frames")]
    if args.sheet:
        if classes is None:
            if not c_dim:
                raise ValueError("--sheet needs a conditional generator")
            classes = list(range(min(c_dim, 32)))
            log(f"--classes not given: rows are classes 0..{classes[-1]}")
        return [_said(log, save_png(tile(class_sheet(sampler, seeds, classes)), outdir / "class_sheet.png"))]
    if args.mix_seeds is not None:
        if args.mix_layers is None:
            layers = list(range(G.synthesis.num_ws // 2))
            log(f"--mix-layers not given: mixing ws {layers} from the column seeds")
        else:
            layers = parse_range(args.mix_layers, allow_empty=True, what="mix layers")
        rows, cols, mixed = style_mix(sampler, seeds, parse_seeds(args.mix_seeds), layers, cls)
        return [_said(log, save_png(tile(mix_grid(rows, cols, mixed)), outdir / "style_mix.png"))]
    z, labels = seed_latents(seeds, G.cfg.z_dim, c_dim, cls)
    img = sampler.images(sampler.ws(z, labels))
    written = []
    if args.grid != "only":
        written += [save_png(im, outdir / f"seed{seed:04d}.png") for seed, im in zip(seeds, img)]
    if args.grid:
        written.append(save_png(grid_of(img), outdir / "grid.png"))
    log(f"wrote {len(written)} file(s) to {outdir}")
    return written


def _said(log: Log, path: Path, what: str = "") -> Path:
    log(f"wrote {path}" + (f" ({what})" if what else ""))
    return path


@errors.cli
def main(argv=None) -> int:
    """The command line; expected errors: one `error:` line, exit status 2 (engine/errors.py)."""
    run(parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
