"""The paper's published inference times (StyleGAN-XL, Table 3) and a table of ours beside them.

Table 3 gives seconds per sample at 128² / 256² / 512² for ADM (250 sampling steps) and
StyleGAN-XL. The GPU and batch are not confirmed by the text (SPEC 9): compare with per-sample
latency at batch 1 and say which GPU, dtype and timing scope our number has.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# Seconds per sample, from the paper's Table 3 (SPEC 9).
TABLE3_SECONDS = {
    "ADM": {128: 27.07, 256: 40.26, 512: 91.54},
    "StyleGAN-XL": {128: 0.05, 256: 0.07, 512: 0.10},
}
TABLE3_RESOLUTIONS = (128, 256, 512)


def speedups(ours_seconds: Mapping[int, float]) -> list[dict]:
    """One record per Table-3 resolution we have a time for: ours, the paper's and the speed-ups.

    speedup_vs_X = paper's seconds for X / our seconds (> 1: we are faster).
    """
    rows = []
    for res in TABLE3_RESOLUTIONS:
        ours = ours_seconds.get(res)
        if ours is None or not math.isfinite(ours) or ours <= 0:
            continue
        row = {"resolution": res, "ours_s": ours}
        for name, table in TABLE3_SECONDS.items():
            row[f"{name}_s"] = table[res]
            row[f"speedup_vs_{name}"] = table[res] / ours
        rows.append(row)
    return rows


def table3_markdown(ours_seconds: Mapping[int, float], label: str = "ours") -> str:
    """Markdown table of our per-sample seconds beside Table 3, with the speed-ups.

    label describes our numbers (GPU, batch, dtype, eager/compiled, timing scope).
    """
    rows = speedups(ours_seconds)
    lines = [f"| res | {label} (s/sample) | StyleGAN-XL paper (s) | speed-up vs paper StyleGAN-XL | ADM paper (s) "
             "| speed-up vs ADM |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['resolution']}² | {r['ours_s']:.4g} | {r['StyleGAN-XL_s']:.2f} | {r['speedup_vs_StyleGAN-XL']:.1f}x "
                     f"| {r['ADM_s']:.2f} | {r['speedup_vs_ADM']:.0f}x |")
    if not rows:
        lines.append("| - | no measurement at 128², 256² or 512² | | | | |")
    return "\n".join(lines) + "\n"
