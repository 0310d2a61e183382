"""Inference-only generator files: export G_ema from a training checkpoint, load either kind.

    python -m engine.export --network runs/stage16/best.safetensors --out G16.safetensors

An exported file has the layout of engine/checkpoint.py (safetensors, tensors keyed
"G_ema/<name>", one JSON document under "meta", a readable .json copy beside it, written
atomically) but holds only the G_ema weights. Its meta keeps "arch" (meta["arch"]["G"] is the
GeneratorConfig dict), "class_names" when the source had them, the decisions and the progress
of the source, so engine/stages.py can also grow a stage from it.

Loading reads only the "G_ema/" tensors of a file: the discriminator, its feature networks and
the optimizer state of a training checkpoint are never read or built.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

from engine import checkpoint, errors  # noqa: E402
from model.config import GeneratorConfig  # noqa: E402
from model.generator import Generator  # noqa: E402

EXPORT_FORMAT = "stylegan-xl-engine/G-1"
PART = "G_ema"
KEPT_META = ("class_names", "decisions", "progress", "source", "pti")  # copied from the source meta


def read_generator_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(G_ema state dict on CPU, meta) of a training checkpoint or an exported file.

    Raises:
        FileNotFoundError: no such file. IsADirectoryError: a directory.
        ValueError: not a safetensors file of this engine (a pickle: the message gives the
            engine.import_official command that converts it), or it holds no G_ema weights.
    """
    path = Path(path)
    if not path.is_file():
        raise errors.not_a_checkpoint(path, what="generator file")
    state: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "null"))
            for key in f.keys():
                if key.startswith(PART + "/"):
                    state[key[len(PART) + 1:]] = f.get_tensor(key)
    except Exception as e:  # a truncated or foreign file (e.g. an official pickle): say which
        raise errors.not_a_checkpoint(path, e) from e
    if not isinstance(meta, dict) or "G" not in (meta.get("arch") or {}):
        raise ValueError(f"{path} has no engine metadata with meta['arch']['G']: not a checkpoint of this engine")
    if not state:
        raise ValueError(f"{path} holds no {PART} weights")
    return state, meta


def load_generator(path: str | Path, device: str | torch.device = "cpu", *, dtype: str | None = None,
                   impl: str | None = None) -> tuple[Generator, dict]:
    """The G_ema generator of a training checkpoint or exported file, eval mode, frozen.

    Args:
        path: a checkpoint of engine/loop.py or a file written by export_generator/save_generator.
        device: where to put the generator.
        dtype: override of the synthesis compute dtype ("bfloat16" or "float32"); the weights
            stay float32 either way, so the same file loads with both. None keeps the file's.
        impl: kernel implementation (None = best for the device).

    Returns:
        (generator, meta). meta["class_names"] is present when the file carries class names.
    """
    state, meta = read_generator_file(path)
    fields = dict(meta["arch"]["G"])
    known = {f.name for f in dataclasses.fields(GeneratorConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{path}: generator config has fields this version does not know: {unknown}")
    if dtype is not None:
        fields["dtype"] = dtype
    g = Generator(GeneratorConfig(**fields), impl=impl)
    missing, unexpected = g.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: {PART} weights do not match the architecture in its meta "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return g.to(device).eval().requires_grad_(False), meta


def save_generator(g: Generator, out_path: str | Path, meta: dict | None = None, **extra) -> Path:
    """Write g as an inference-only file (atomic). meta: the source's meta (its arch, class
    names, decisions, progress are kept); extra: more JSON-able meta entries (e.g. pti=...)."""
    src = meta or {}
    arch = dict(src.get("arch") or {})
    arch["G"] = dataclasses.asdict(g.cfg)
    if "dtype" in (src.get("arch") or {}).get("G", {}):  # a load-time dtype override is not the model's
        arch["G"]["dtype"] = src["arch"]["G"]["dtype"]
    out = {k: src[k] for k in KEPT_META if k in src}
    out |= {"format": EXPORT_FORMAT, "arch": arch, **extra}
    if src.get("format", EXPORT_FORMAT) != EXPORT_FORMAT:
        out["source_format"] = src["format"]
    return checkpoint.save(out_path, {PART: g.state_dict()}, out)


def export_generator(ckpt_path: str | Path, out_path: str | Path) -> Path:
    """Write the G_ema weights + arch meta of `ckpt_path` to `out_path` (inference only)."""
    ckpt_path, out_path = Path(ckpt_path), Path(out_path)
    if ckpt_path.resolve() == out_path.resolve():
        raise ValueError("export_generator: the output would overwrite the checkpoint it reads")
    g, meta = load_generator(ckpt_path, "cpu")
    return save_generator(g, out_path, meta, source=str(ckpt_path))


@errors.cli
def main(argv=None) -> int:
    p = errors.ArgumentParser(prog="python -m engine.export",
                              description="Export the G_ema generator of a checkpoint as an inference-only file.")
    p.add_argument("--network", required=True, help="training checkpoint (.safetensors)")
    p.add_argument("--out", required=True, help="output file (.safetensors; a .json copy of the meta goes beside it)")
    args = p.parse_args(argv)
    print(f"wrote {export_generator(args.network, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
