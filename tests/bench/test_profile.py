"""bench/profile_layers.py on CPU (tiny preset, 16² and 32²) and bench/paper.py's Table-3 formatter.

The profiles run once per module with one timed repeat: the assertions are about structure, the
FLOP counts against model/specs.py, and the files written, not about speed.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from bench.layers import BenchLayer, flrelu_flops
from bench.paper import TABLE3_SECONDS, speedups, table3_markdown
from bench.profile_layers import markdown, run_profile, write_outputs
from model.config import D_INPUT_SIZE
from model.feature_networks import LITE0
from model.generator import build_generator

BATCH = 2


@pytest.fixture(scope="module")
def both16():
    torch.manual_seed(0)
    return run_profile(16, device="cpu", net="both", repeats=1, warmup=1)


@pytest.fixture(scope="module")
def g32():
    torch.manual_seed(0)
    return run_profile(32, device="cpu", net="G", repeats=1, warmup=1)


def _rows(result, net):
    return [r for r in result["rows"] if r["net"] == net]


@pytest.mark.parametrize("res", [16, 32])
def test_one_row_per_synthesis_layer_with_spec_flops(res, both16, g32):
    result = both16 if res == 16 else g32
    G = build_generator("tiny", res, 1000)
    rows = _rows(result, "G")
    assert [r["name"] for r in rows[:2]] == ["mapping", "input"]
    layers = rows[2:]
    assert [r["name"] for r in layers] == [s.name for s in G.specs]
    assert [r["kind"] for r in layers] == ["synthesis"] * (len(G.specs) - 1) + ["torgb"]
    for r, s in zip(layers, G.specs):
        hc = s.inp.size + s.kernel_size - 1
        assert r["conv_flops"] == s.conv_flops(BATCH) == 2 * s.inp.channels * s.out.channels * s.kernel_size**2 * hc * hc * BATCH
        fir = 0.0 if s.torgb else flrelu_flops(BenchLayer(id=s.name, spec=s, batch=BATCH))
        assert r["fir_flops"] == pytest.approx(fir)
        assert r["affine_flops"] == 2 * G.cfg.w_dim * s.inp.channels * BATCH
        assert r["fwd_flops"] == pytest.approx(r["conv_flops"] + r["fir_flops"] + r["affine_flops"])
        assert r["flops_source"] == "specs"
        assert r["in_shape"] == [BATCH, s.inp.channels, s.inp.size, s.inp.size]
        assert r["out_shape"] == [BATCH, s.out.channels, s.out.size, s.out.size]


def test_backward_follows_what_trains(both16, g32):
    """Stem: everything trains (input + weight grads). 32²: mapping and kept stem layers frozen,
    the Fourier input still trains (D1), so kept layers need only the input gradient."""
    for r in _rows(both16, "G")[2:]:
        assert r["bwd_flops"] == pytest.approx(2 * r["fwd_flops"])
    G32 = build_generator("tiny", 32, 1000)
    kept = set(G32.frozen_prefix())
    rows = {r["name"]: r for r in _rows(g32, "G")}
    assert rows["mapping"]["bwd_ms"] is None and rows["mapping"]["bwd_flops"] is None
    for s in G32.specs:
        assert rows[s.name]["bwd_flops"] == pytest.approx((1 if s.name in kept else 2) * rows[s.name]["fwd_flops"])


def test_times_shares_and_discriminator_rows(both16, g32):
    for result in (both16, g32):
        for net in {r["net"] for r in result["rows"]}:
            rows = _rows(result, net)
            assert all(r["fwd_ms"] > 0 for r in rows)
            assert all(r["bwd_ms"] is None or r["bwd_ms"] > 0 for r in rows)
            assert math.isclose(sum(r["share"] for r in rows), 1.0, rel_tol=1e-9)
            assert all(r["peak_mem_gb"] is None for r in rows)  # CPU: no CUDA memory statistics
    d = _rows(both16, "D")
    assert [r["name"] for r in d] == ["blur"] + [f"{LITE0}/{p}" for p in ("augment", "features", "projection")] + [
        f"{LITE0}/head{k}" for k in range(4)]
    by = {r["name"]: r for r in d}
    # The tiny preset's D feeds lite0 at 128² (model/config.py D_INPUT_SIZE): about 0.13 GMAC per image.
    assert D_INPUT_SIZE["tiny"] == 128 and by[f"{LITE0}/features"]["fwd_flops"] > 1e8
    for k in range(4):  # trainable heads: counted forward, and a backward with weight grads
        head = by[f"{LITE0}/head{k}"]
        assert head["flops_source"] == "flop_counter" and head["fwd_flops"] > 0 and head["bwd_flops"] > head["fwd_flops"]
        assert head["out_shape"] == [BATCH, 1]  # 128 input: one logit per head (224 gives a 4x4 map)


def test_outputs_written_and_parse(both16, tmp_path):
    paths = write_outputs(both16, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["rows"] == json.loads(json.dumps(both16["rows"]))
    assert data["meta"]["preset"] == "tiny" and data["meta"]["stage"] == 16
    text = paths["md"].read_text()
    assert text == markdown(both16)
    table_lines = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| part")]
    assert len(table_lines) == len(both16["rows"])
    for r in both16["rows"]:
        assert f"| {r['name']} |" in text
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(paths["png"]).ndim == 3


def test_table3_speedups():
    ours = {128: 0.01, 256: 0.035, 512: 0.2, 1024: 0.5}  # made-up inputs; 1024² is not in Table 3
    rows = speedups(ours)
    assert [r["resolution"] for r in rows] == [128, 256, 512]
    expect = {128: (5.0, 2707.0), 256: (2.0, 40.26 / 0.035), 512: (0.5, 457.7)}
    for r in rows:
        sg, adm = expect[r["resolution"]]
        assert r["speedup_vs_StyleGAN-XL"] == pytest.approx(sg)
        assert r["speedup_vs_ADM"] == pytest.approx(adm)
        assert r["StyleGAN-XL_s"] == TABLE3_SECONDS["StyleGAN-XL"][r["resolution"]]
    text = table3_markdown(ours, "ours")
    assert "| 128² | 0.01 | 0.05 | 5.0x | 27.07 | 2707x |" in text
    assert "| 512² | 0.2 | 0.10 | 0.5x | 91.54 | 458x |" in text
    assert speedups({128: 0.0, 256: float("nan")}) == []


def test_report_puts_inference_beside_table3():
    """bench/report.py on a hand-made pytest-benchmark document (made-up numbers)."""
    from bench.report import render

    def bench(res, batch, compiled, ms):
        return {"name": f"bench_generator_inference[paper{res}_b{batch}]", "stats": {"median": ms / 1e3},
                "fullname": f"bench/bench_inference.py::bench_generator_inference[paper{res}_b{batch}]",
                "extra_info": {"device": "GPU X", "preset": "paper", "dtype": "bfloat16", "resolution": res, "batch": batch, "compiled": compiled,
                               "compile_mode": "reduce-overhead" if compiled else None, "median_ms": ms,
                               "ms_per_image": ms / batch, "images_per_s": 1e3 * batch / ms, "timed": "G only"}}

    doc = {"machine_info": {}, "benchmarks": [bench(128, 1, False, 25.0), bench(128, 1, True, 10.0),
                                              bench(256, 64, False, 640.0)]}
    text = render(doc)
    assert "| 128² | 0.025 | 0.05 | 2.0x | 27.07 | 1083x |" in text  # eager
    assert "| 128² | 0.01 | 0.05 | 5.0x | 27.07 | 2707x |" in text  # compiled
    assert "| 256² | paper | 64 | eager | 640 | 10 | 100 |" in text  # throughput row, not in Table 3
