"""Train one StyleGAN-XL stage.

    python engine/train.py --stage 16                    # the tiny preset on the built-in data
    deepspeed engine/train.py --stage 1024 --preset paper --data imagenet.zip ...

Re-running the same command resumes from the stage's latest checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine import errors  # noqa: E402
from engine.cli import config_from_args, parser  # noqa: E402
from engine.config import to_dict  # noqa: E402


def training_device() -> torch.device:
    """This rank's device: cuda:LOCAL_RANK (set by the launcher; 0 for one process), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_rank >= torch.cuda.device_count():
        raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices are visible")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


@errors.cli  # expected errors (bad data, damaged checkpoints, missing weights): one line, exit 2
def main(argv=None) -> int:
    args = parser().parse_args(argv)
    # DeepSpeed's ZeRO internals call the old collective names; the warning is not ours to fix.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        parser().error(str(e))
    if args.dry_run:
        from model.generator import build_generator

        with torch.device("meta"):
            g = build_generator(cfg.preset, cfg.stage, 1000 if cfg.cond else 0)
        print(json.dumps({"train": to_dict(cfg), "generator": g.layer_specs()}, indent=2))
        return 0
    from engine.divergence import EXIT_DIVERGED, Diverged
    from engine.interrupt import EXIT_ABORTED, EXIT_STOPPED, Stopped
    from engine.loop import train_stage

    device = training_device()
    try:
        train_stage(cfg, device)
    except Stopped as e:
        print(str(e), file=sys.stderr)
        return EXIT_STOPPED
    except Diverged as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt:
        print("aborted: nothing saved since the last snapshot (latest.safetensors on disk is intact); re-run the "
              "same command to resume from it", file=sys.stderr)
        return EXIT_ABORTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
