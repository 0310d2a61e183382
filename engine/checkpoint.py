"""Checkpoints: one safetensors file holding every tensor plus the JSON metadata, written atomically.

Layout: tensors are keyed "<part>/<name>" (parts: G, G_ema, D, opt_G, opt_D, rng); the
safetensors header's metadata holds one JSON document under "meta" (config, architecture,
progress, optimizer hyperparameters). A human-readable copy of that JSON is written beside the
file. No pickles: loading never runs code.

Atomicity: write to a temporary file in the same folder, fsync it, os.replace it over the
target, fsync the folder. A killed run leaves either the old or the new checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state as flat tensors plus JSON-able param_groups."""
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"{idx}.{key}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    return tensors, {"param_groups": sd["param_groups"]}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save(path: str | Path, parts: dict[str, dict[str, torch.Tensor]], meta: dict) -> Path:
    """Write parts ({"G": state_dict, ...}) and meta (JSON-able) to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {}
    for part, sd in parts.items():
        for name, t in sd.items():
            # safetensors needs contiguous, unshared storage; clone keeps views from aliasing.
            flat[f"{part}/{name}"] = t.detach().to("cpu").contiguous().clone()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(flat, str(tmp), metadata={"meta": json.dumps(meta)})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    side = path.with_suffix(".json")
    tmp_json = side.with_name(f".{side.name}.tmp-{os.getpid()}")
    tmp_json.write_text(json.dumps(meta, indent=2))
    os.replace(tmp_json, side)
    return path


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """(parts, meta) from a checkpoint written by save(). Raises FileNotFoundError / ValueError."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = json.loads((f.metadata() or {}).get("meta", "null"))
            for key in f.keys():
                part, name = key.split("/", 1)
                parts.setdefault(part, {})[name] = f.get_tensor(key)
    except Exception as e:  # a truncated or foreign file: say which
        raise ValueError(f"{path} is not a readable checkpoint of this engine: {e}") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{path} has no engine metadata: not a checkpoint of this engine")
    return parts, meta


def check_compatible(meta: dict, expected_arch: dict, path: str | Path) -> None:
    """Raise with the differing fields when a checkpoint's architecture is not the expected one."""
    got = meta.get("arch", {})
    diff = {k: (got.get(k), v) for k, v in expected_arch.items() if got.get(k) != v}
    if diff:
        lines = ", ".join(f"{k}: checkpoint {a!r} vs requested {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"checkpoint {path} is incompatible with this run ({lines})")
