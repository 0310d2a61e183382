"""Stopping a run on a signal without losing work.

SIGINT (Ctrl-C), SIGTERM (what cluster schedulers send before preemption) and SIGUSR1 (what
SLURM's `--signal=USR1@120` sends ahead of the time limit) ask the run to stop: the current
iteration finishes, `latest.safetensors` is written atomically on every rank's behalf, and the
process exits with EXIT_STOPPED after one line saying where to resume. A second signal aborts at
once (KeyboardInterrupt; engine/train.py exits EXIT_ABORTED): the checkpoint on disk is whatever
the last completed snapshot wrote, never a half-written file (engine/checkpoint.py).

With several ranks, the ranks' requests are combined every AGREE_EVERY iterations and at every
tick's end (`StopRequest.agreed`, one all-reduce of one number and one host read, which is why
it is not every iteration): every rank stops after the same iteration, so the saved state is
consistent even when the launcher signals the ranks at slightly different times. A stop that
falls on a tick's last iteration completes that tick (status line, stats) before saving, so a
resumed run keeps the same tick boundaries.

Which signals stop a run: `--stop-signals` (default INT,TERM,USR1; an empty value leaves every
handler as Python sets it).
"""

from __future__ import annotations

import signal
import sys
import threading

import torch

EXIT_STOPPED = 3  # stopped on a signal after saving latest: re-run the same command to resume
EXIT_ABORTED = 130  # a second signal: stopped at once, nothing saved since the last snapshot
DEFAULT_SIGNALS = ("INT", "TERM", "USR1")
AGREE_EVERY = 8  # iterations between the ranks' agreements on a stop (and the divergence check)


class Stopped(Exception):
    """Training stopped on a signal after saving latest (engine/train.py exits EXIT_STOPPED)."""


def parse_signals(text: str) -> tuple[str, ...]:
    """'INT,TERM' or 'SIGINT,SIGTERM' -> ('INT', 'TERM'); raises ValueError naming unknown names."""
    names = tuple(s.strip().upper().removeprefix("SIG") for s in text.split(",") if s.strip())
    unknown = [n for n in names if not isinstance(getattr(signal, f"SIG{n}", None), signal.Signals)]
    if unknown:
        raise ValueError(f"unknown signal name(s) {unknown} in --stop-signals {text!r}; e.g. INT,TERM,USR1")
    return names


class StopRequest:
    """Signal handlers that turn the first signal into a stop request and the second into an abort.

    Use as a context manager around the training loop: the previous handlers come back on exit.
    `requested` is the first signal's name (e.g. "SIGTERM") or None.
    """

    def __init__(self, signals: tuple[str, ...] = DEFAULT_SIGNALS):
        self.signals = tuple(getattr(signal, f"SIG{n}") for n in signals)
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            raise KeyboardInterrupt(f"second signal ({name}) while stopping: aborted")
        self.requested = name
        # One line, written directly: the handler may run while tqdm owns the terminal line.
        print(f"\n{name}: finishing this iteration, then saving latest (send it again to abort at once)",
              file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous.clear()

    def agreed(self, be) -> bool:
        """Whether any rank was asked to stop (collective with several ranks: every rank calls it
        at the same iterations)."""
        local = self.requested is not None
        if be.world_size == 1:
            return local
        flag = torch.tensor([1.0 if local else 0.0], device=be.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        stop = bool(flag.item())
        if stop and self.requested is None:
            self.requested = "another rank's signal"
        return stop
