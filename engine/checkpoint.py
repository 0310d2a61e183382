"""Checkpoints: one safetensors file holding every tensor plus the JSON metadata, written atomically.

Layout: tensors are keyed "<part>/<name>" (parts: G, G_ema, D, opt_G, opt_D, rng); the
safetensors header's metadata holds one JSON document under "meta" (config, architecture,
progress, optimizer hyperparameters). A human-readable copy of that JSON is written beside the
file. No pickles: loading never runs code.

Atomicity: write to a temporary file in the same folder, fsync it, os.replace it over the
target, fsync the folder. A killed run leaves either the old or the new checkpoint, and maybe
the temporary file of the write it interrupted (`.<name>.tmp-<pid>`), which the next run removes
(`remove_stale_temporaries`). Files get the usual permissions (0666 less the umask), like every
other output, not safetensors' 0600.

Before a run builds anything, `resume_source` picks what it resumes from (latest, else best) and
`verify` checks that file's header and length, so a damaged checkpoint is reported at once with
the intact alternatives named.
"""

from __future__ import annotations

import json
import os
import re
import shutil
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    os.chmod(tmp, 0o666 & ~_umask())
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


MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header


def verify(path: str | Path) -> dict:
    """A checkpoint's meta after checking, without reading any tensor, that its header parses and
    that the file is exactly as long as the header says (a truncated copy, a file cut short by a
    full disk or a foreign file fail). Raises ValueError naming the file and the problem."""
    path = Path(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ValueError(f"{size} bytes, shorter than a safetensors header")
            n = int.from_bytes(prefix, "little")
            if n > min(MAX_HEADER, size - 8):
                raise ValueError(f"its header claims {n} bytes in a {size}-byte file")
            header = json.loads(f.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        expected = 8 + n + max(ends, default=0)
        if size != expected:
            raise ValueError(f"{size} bytes where its header describes {expected} (truncated or overwritten)")
        meta = json.loads((header.get("__metadata__") or {}).get("meta", "null"))
    except ValueError as e:
        raise ValueError(f"{path} is damaged: {e}") from e
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"{path} is damaged: malformed header ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is not a checkpoint of this engine (no engine metadata)")
    return meta


def _problem(path: Path) -> str | None:
    try:
        verify(path)
    except (ValueError, OSError) as e:
        return str(e)
    return None


def resume_source(stage_dir: str | Path, log=print) -> Path | None:
    """The checkpoint a run in `stage_dir` resumes from: latest.safetensors, else best.safetensors
    (said in the log), else None (a fresh start). Raises ValueError, before anything is built or
    written, when the file to resume from is damaged, naming the intact alternatives and how to
    use them: a run never starts over on top of existing checkpoints."""
    out = Path(stage_dir)
    latest, best = out / "latest.safetensors", out / "best.safetensors"
    if latest.exists():
        problem = _problem(latest)
        if problem is None:
            return latest
        if best.exists() and _problem(best) is None:
            kimg = verify(best).get("progress", {}).get("cur_nimg", 0) / 1000
            hint = (f"the intact {best} ({kimg:g} kimg) is there: move the damaged file away "
                    f"(mv {latest} {latest}.damaged) and re-run the command to resume from it")
        else:
            hint = (f"no intact checkpoint is left in {out}: move the damaged file away "
                    f"(mv {latest} {latest}.damaged) to train the stage from the start")
        raise ValueError(f"cannot resume: {problem}; {hint}")
    if best.exists():
        problem = _problem(best)
        if problem is not None:
            raise ValueError(f"cannot resume: {out} has no latest.safetensors and {problem}; move it away "
                             f"(mv {best} {best}.damaged) to train the stage from the start")
        kimg = verify(best).get("progress", {}).get("cur_nimg", 0) / 1000
        log(f"no latest.safetensors in {out}: resuming from best.safetensors ({kimg:g} kimg)")
        return best
    return None


_TMP = re.compile(r"^\..+\.tmp-(\d+)$")


def remove_stale_temporaries(folder: str | Path) -> list[str]:
    """Remove the `.<name>.tmp-<pid>` files of writers that are no longer running (a run killed
    mid-write); returns their names. Files of live processes are left alone."""
    removed = []
    for p in sorted(Path(folder).iterdir()):
        m = _TMP.match(p.name)
        if m is None or not p.is_file() or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # that writer is alive
        except ProcessLookupError:
            pass
        except PermissionError:  # alive, another user's
            continue
        p.unlink(missing_ok=True)
        removed.append(p.name)
    return removed


def check_free_space(folder: str | Path, nbytes: int, copies: int = 2) -> None:
    """Raise ValueError when `folder`'s file system cannot hold `copies` more checkpoints of about
    `nbytes` each (a write needs room for the new file next to the old one): before the first
    tick, not at the first snapshot."""
    free = shutil.disk_usage(folder).free
    if free < copies * nbytes:
        raise ValueError(f"not enough free disk space in {folder}: {free / 2**20:.0f} MiB free, but {copies} "
                         f"checkpoint cop{'ies' if copies > 1 else 'y'} of about {nbytes / 2**20:.0f} MiB "
                         f"{'are' if copies > 1 else 'is'} needed; free some space or choose another --outdir")
