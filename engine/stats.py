"""Training statistics: one JSON line per tick, TensorBoard scalars, and a PNG of the loss curves.

stats.jsonl is the record (a person or a script reads it); the TensorBoard events and the plot
are views of the same numbers. TensorBoard and matplotlib are optional: without them the
JSONL still gets written.
"""

from __future__ import annotations

import json
from pathlib import Path


class StatsWriter:
    """Appends to out_dir/stats.jsonl and the TensorBoard events, continuing a resumed run.

    resume_tick: the tick the run resumes after (0 for a fresh start). Rows of later ticks, written
    before a crash or an interrupt by a run whose checkpoint did not get that far, are dropped
    from stats.jsonl (rewritten atomically) and TensorBoard purges its events past that point, so
    a re-run writes no duplicate rows.
    """

    def __init__(self, out_dir: Path, resume_tick: int = 0):
        self.out_dir = Path(out_dir)
        path = self.out_dir / "stats.jsonl"
        purge_step = None
        if path.exists():
            rows = [line for line in path.read_text().splitlines() if line.strip()]
            keep = []
            for line in rows:
                try:
                    row = json.loads(line)
                except ValueError:  # a line cut short by a kill
                    continue
                if row.get("tick", 0) <= resume_tick:
                    keep.append(line)
                    purge_step = int(round(row["kimg"] * 1000)) + 1
            if len(keep) != len(rows):
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_text("".join(line + "\n" for line in keep))
                tmp.replace(path)
            purge_step = purge_step or 0
        self.jsonl = open(path, "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=purge_step)
        except ImportError:  # tensorboard not installed: JSONL only
            self.tb = None

    def write(self, stats: dict) -> None:
        self.jsonl.write(json.dumps(stats) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            step = int(round(stats["kimg"] * 1000))
            for key, value in stats.items():
                if isinstance(value, (int, float)) and key not in ("tick", "kimg"):
                    self.tb.add_scalar(key, value, step)
            self.tb.flush()

    def plot(self, path: Path | None = None) -> Path | None:
        """Loss curves (every loss_* column of stats.jsonl against kimg) as a PNG, with one more
        panel per metric_* column when metrics ran (their scales differ: FID vs accuracy)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        rows = [json.loads(line) for line in (self.out_dir / "stats.jsonl").read_text().splitlines() if line.strip()]
        keys_of = lambda prefix: sorted({k for r in rows for k in r if k.startswith(prefix)})  # noqa: E731
        groups = [("loss_", keys_of("loss_"))] + [("metric_", [k]) for k in keys_of("metric_")]
        path = Path(path or self.out_dir / "losses.png")
        fig, axes = plt.subplots(len(groups), 1, figsize=(7, 4 * len(groups)), dpi=100, squeeze=False)
        for ax, (prefix, keys) in zip(axes[:, 0], groups):
            for key in keys:
                pts = [(r["kimg"], r[key]) for r in rows if key in r]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key[len(prefix):],
                        marker="o" if len(pts) < 20 else None)
            ax.set_xlabel("kimg")
            ax.set_ylabel(prefix.rstrip("_"))
            ax.set_title(f"{'training losses' if prefix == 'loss_' else 'metrics'} ({self.out_dir.name})")
            ax.grid(alpha=0.3)
            if keys:
                ax.legend()
        fig.tight_layout()
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format="png")
        plt.close(fig)
        tmp.replace(path)
        return path

    def close(self) -> None:
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
