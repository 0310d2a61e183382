"""Non-finite steps: skipped, counted, reported; too many in a row stop the run.

A G or D step whose loss or gradient holds a NaN or an inf (on any rank) is not applied: the
backend hands fused Adam a `found_inf` flag decided on the device, so parameters, Adam moments
and step counts stay as they were (engine/distributed.py, "Non-finite steps"). The original
instead replaces NaN by 0 and inf by +-1e5 and applies the step (SPEC 5.1); a single bad batch
then moves every parameter, and a diverging run writes NaN weights into its snapshots.

Counted: `skipped_G` / `skipped_D` in the status line and stats.jsonl (steps skipped since the
stage began, carried across resumes in the checkpoint's progress). When `--max-bad-steps`
(default 8) steps of one network in a row are non-finite, the run stops with EXIT_DIVERGED and
a message; nothing is saved, so latest.safetensors still holds the last snapshot's good state.
The loop reads the in-a-row counters on the host every AGREE_EVERY iterations (with the stop
flag, engine/interrupt.py), so it stops at most that many iterations late; the skipped steps
between change nothing.
"""

from __future__ import annotations

import torch

EXIT_DIVERGED = 4  # stopped: too many non-finite steps in a row; latest.safetensors is the last good state


class Diverged(Exception):
    """Too many non-finite steps in a row (engine/train.py exits EXIT_DIVERGED)."""


def read_counters(be) -> dict[str, int]:
    """{"skipped_G", "skipped_D", "bad_run_G", "bad_run_D"} of backend `be`, one device-to-host copy."""
    keys = [(f"skipped_{n}", be.skipped[n]) for n in ("G", "D")] + [(f"bad_run_{n}", be.bad_run[n]) for n in ("G", "D")]
    values = torch.stack([v for _, v in keys]).tolist()
    return {k: int(v) for (k, _), v in zip(keys, values)}


def check(counters: dict[str, int], max_bad_steps: int, *, kimg: float, latest, saved_kimg: float | None) -> None:
    """Raise Diverged when a network's in-a-row count reached max_bad_steps (> 0; the loop does not
    call it for 0, never stop)."""
    bad = [n for n in ("G", "D") if counters[f"bad_run_{n}"] >= max_bad_steps]
    if not bad:
        return
    runs = ", ".join(f"{n}: {counters[f'bad_run_{n}']}" for n in bad)
    where = (f"{latest} ({saved_kimg:g} kimg) holds the last good state" if saved_kimg is not None
             else "no checkpoint was written this stage")
    raise Diverged(f"training diverged at {kimg:g} kimg: non-finite loss or gradients in {runs} steps in a row "
                   f"(--max-bad-steps {max_bad_steps}; every one was skipped, nothing saved); {where}. Lower --glr/--dlr, "
                   f"use fp32 (--d-precision fp32), or raise --max-bad-steps, then re-run the same command to resume")
