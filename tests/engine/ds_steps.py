"""A few G/D iterations of the tiny 16² preset through engine/distributed.py, one JSON per rank.

Run under a launcher by tests/engine/test_distributed.py, e.g. on CPU:

    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 tests/engine/ds_steps.py --out DIR --backends plain,zero2,zero3

For each backend in turn (one process group shared by all): build G and D from the same seed, run
two iterations of engine/step.py's train_iteration (G-main with D frozen, D-main with one combined
fake+real loss per micro-batch),
then reload the state after iteration 1 and run iteration 2 again (a resume must reproduce it),
and write DIR/<backend>_rank<r>.json with a digest of every parameter, EMA parameter and Adam
moment (buffers such as BatchNorm statistics and w_avg are rank-local and left out), per-tensor
statistics, which fraction of the trained (and frozen) tensors changed, and the reload/resume
errors.

The global batch (4 images, micro-batches of 2) is drawn from a seeded generator on every rank;
rank r takes micro-batches r, r + world, ... and scales its loss by 1 / (its micro-batch count),
so 1 rank and 2 ranks compute the same averaged gradient (up to rounding). D runs in eval mode
(its running BatchNorm statistics, spectral norm without power iterations): in train mode the
power iteration advances once per D call, and 1 rank makes twice the D calls of each of 2 ranks,
so the two runs would train different functions. Adam eps is 1e-3 so that rounding-level
gradient differences stay rounding-level in the weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as tdist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.config import OptimConfig  # noqa: E402
from engine.distributed import DeepSpeedBackend, PlainBackend, init_distributed, launch_env  # noqa: E402
from engine.step import train_iteration  # noqa: E402
from model.discriminator import ProjectedDiscriminator  # noqa: E402
from model.generator import build_generator  # noqa: E402

C_DIM = 4
RES = 16
BATCH = 4
BATCH_GPU = 2
OPTIM = OptimConfig(eps=1e-3)


def build_models(seed: int = 0, c_dim: int = C_DIM):
    """Tiny G at 16², D with the lite0 backbone only, random weights, no augmentation."""
    torch.manual_seed(seed)
    G = build_generator("tiny", RES, c_dim)
    D = ProjectedDiscriminator(("tf_efficientnet_lite0",), c_dim, weights="random", augment=False)
    return G, D


def make_batch(seed: int, n: int, z_dim: int, c_dim: int = C_DIM) -> dict[str, torch.Tensor]:
    """One iteration's data: latents and one-hot labels ([n, 0] if unconditional) for both
    phases, and reals in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)

    def labels():
        return torch.eye(c_dim)[torch.randint(0, c_dim, (n,), generator=g)] if c_dim else torch.zeros(n, 0)

    return {"z_g": torch.randn(n, z_dim, generator=g), "c_g": labels(), "z_d": torch.randn(n, z_dim, generator=g),
            "c_d": labels(), "real": torch.rand(n, 3, RES, RES, generator=g) * 2 - 1, "c_real": labels()}


def iteration(be, batch: dict[str, torch.Tensor], chunks: list[slice], split, loss_scale: float = 1.0,
              ema_beta: float = 0.9) -> None:
    """engine/step.py's train_iteration on this rank's `chunks` of the fixed `batch`: summed hinge
    losses scaled by loss_scale, no blur, no path length, no guidance."""
    def c(key, s):  # None for an unconditional pair
        return batch[key][s] if batch[key].shape[1] else None

    def draw(phase: str, r: int, n: int):
        s = chunks[r]
        return batch[f"z_{phase.lower()}"][s], c(f"c_{phase.lower()}", s)

    reals = [(batch["real"][s], c("c_real", s)) for s in chunks]
    train_iteration(be, reals, draw, split=split, c_dim=batch["c_g"].shape[1], reduction="sum", ema_beta=ema_beta,
                    loss_scale=loss_scale)


def shared_keys(be) -> dict[str, list[str]]:
    """Per part, the keys that must agree across ranks: parameters and optimizer moments."""
    names = be.param_names  # ZeRO-3 turns frozen parameters into buffers; these are the names before
    return {"G": names["G"], "D": names["D"], "G_ema": names["G"], "opt_G": None, "opt_D": None}


def digest(parts: dict, keys: dict) -> tuple[str, dict[str, list[float]]]:
    """sha256 over the shared tensors' bytes, and [numel, sum, abs sum, first 8 values] per tensor."""
    h, stats = hashlib.sha256(), {}
    for part in sorted(parts):
        for k in keys[part] if keys[part] is not None else sorted(parts[part]):
            t = parts[part][k].detach().float().cpu().contiguous()
            h.update(f"{part}/{k}".encode())
            h.update(t.numpy().tobytes())
            flat = t.double().flatten()
            stats[f"{part}/{k}"] = [flat.numel(), flat.sum().item(), flat.abs().sum().item(), *flat[:8].tolist()]
    return h.hexdigest(), stats


def max_diff(a: dict, b: dict) -> float:
    return max(((a[p][k].double() - b[p][k].double()).abs().max().item() if a[p][k].numel() else 0.0)
               for p in a for k in a[p])


def changed(before: dict, after: dict, names: list[str]) -> float:
    """Fraction of the named tensors that differ."""
    return sum(not torch.equal(before[k], after[k]) for k in names) / max(len(names), 1)


def run_backend(name: str, rank: int, world: int) -> dict:
    t0 = time.time()
    G, D = build_models()
    D.eval()  # see the module docstring
    split = D.num_logits(RES)
    trained = {m: [n for n, p in net.named_parameters() if p.requires_grad] for m, net in (("G", G), ("D", D))}
    frozen = [n for n, p in D.named_parameters() if not p.requires_grad]
    be = PlainBackend() if name == "plain" else DeepSpeedBackend(zero_stage=int(name[-1]), batch_gpu=BATCH_GPU)
    be.setup(G, D, OPTIM)
    keys = shared_keys(be)
    initial = be.state_dicts()
    initial_sha, _ = digest(initial, keys)
    mine = list(range(rank, BATCH // BATCH_GPU, world))
    chunks = [slice(m * BATCH_GPU, (m + 1) * BATCH_GPU) for m in mine]
    batches = [make_batch(100 + it, BATCH, G.cfg.z_dim) for it in range(2)]
    iteration(be, batches[0], chunks, split, 1 / len(chunks))
    after_1 = be.state_dicts()
    iteration(be, batches[1], chunks, split, 1 / len(chunks))
    after_2 = be.state_dicts()
    be.load_state_dicts(after_1)  # resume from iteration 1 and redo iteration 2
    load_err = max_diff(be.state_dicts(), after_1)
    iteration(be, batches[1], chunks, split, 1 / len(chunks))
    redo = be.state_dicts()
    resume_err = max_diff(redo, after_2)
    with torch.no_grad():
        sample = be.ema_module()(batches[0]["z_g"][:2], batches[0]["c_g"][:2])
    sha, stats = digest(after_2, keys)
    be.close()
    return {"backend": name, "rank": rank, "world": world, "sha": sha, "initial_sha": initial_sha, "stats": stats,
            "changed": {"G": changed(initial["G"], after_2["G"], trained["G"]),
                        "D": changed(initial["D"], after_2["D"], trained["D"]),
                        "G_ema": changed(initial["G_ema"], after_2["G_ema"], trained["G"]),
                        "D_frozen": changed(initial["D"], after_2["D"], frozen)},
            "load_err": load_err, "resume_err": resume_err, "ema_sample_finite": bool(torch.isfinite(sample).all()),
            "seconds": time.time() - t0}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory for <backend>_rank<r>.json")
    ap.add_argument("--backends", default="zero2,zero3", help="comma list of plain, zero0..zero3")
    ap.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher (unused)")
    args = ap.parse_args(argv)
    launch_env()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rank, world = init_distributed("cpu")
    torch.set_num_threads(1)  # results depend on the thread count (D's input gradient at ~1e-3)
    for name in args.backends.split(","):
        result = run_backend(name, rank, world)
        (out / f"{name}_rank{rank}.json").write_text(json.dumps(result))
        print(f"[rank {rank}/{world}] {name}: {result['seconds']:.1f} s", flush=True)
    if tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()


if __name__ == "__main__":
    main()
