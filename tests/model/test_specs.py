"""Layer specs against the numbers worked out in SPEC 2.9 and 9 (computed there by hand)."""

from __future__ import annotations

import pytest

from model.specs import generator_specs

# SPEC 2.9: (out size, cutoff, stopband, half width, up, down, taps, pad lo, pad hi, critical)
STEM_TABLE = [
    (36, 2.000, 4.287, 6.000, 2, 2, 12, 9, 8, False),
    (36, 2.378, 4.757, 5.622, 2, 2, 12, 9, 8, False),
    (36, 2.828, 5.278, 5.172, 2, 2, 12, 9, 8, False),
    (36, 3.364, 5.856, 4.636, 2, 2, 12, 9, 8, False),
    (36, 4.000, 6.498, 4.000, 2, 2, 12, 9, 8, False),
    (36, 4.757, 7.210, 3.243, 2, 2, 12, 9, 8, False),
    (36, 5.657, 8.000, 2.343, 2, 2, 12, 9, 8, False),
    (36, 6.727, 8.877, 2.149, 2, 2, 12, 9, 8, False),
    (36, 8.000, 9.849, 1.849, 2, 2, 12, 9, 8, True),
    (16, 8.000, 9.849, 1.849, 2, 2, 12, -11, -12, True),
    (16, 8.000, 9.849, 1.849, 1, 1, 1, 0, 0, True),
]


def test_stem_matches_spec_table():
    layers = generator_specs(16)
    assert len(layers) == 11
    for layer, (size, cutoff, stop, hw, up, down, taps, lo, hi, crit) in zip(layers, STEM_TABLE):
        assert layer.out.size == size
        assert layer.out.cutoff == pytest.approx(cutoff, abs=5e-4)
        assert layer.out.stopband == pytest.approx(stop, abs=5e-4)
        assert layer.out.half_width == pytest.approx(hw, abs=5e-4)
        assert (layer.up, layer.down, layer.up_taps, layer.down_taps) == (up, down, taps, taps)
        assert layer.padding == (lo, hi, lo, hi)
        assert layer.critical == crit
    assert [layer.params for layer in layers] == [9_963_520] * 10 + [528_387]
    assert layers[0].name == "L0_36_1024" and layers[-1].name == "L10_16_3" and layers[-1].torgb


def test_layer_counts_per_stage():
    counts = [len(generator_specs(r)) for r in (16, 32, 64, 128, 256, 512, 1024)]
    assert counts == [11, 16, 21, 26, 31, 36, 41]


def test_head_numbering_skips_one_index_and_has_one_4x_layer():
    layers = generator_specs(32)
    assert [layer.index for layer in layers] == list(range(8)) + list(range(9, 17))
    ups = [(layer.up, layer.down, layer.up_taps, layer.down_taps) for layer in layers[8:]]
    assert ups.count((4, 2, 24, 12)) == 1


@pytest.mark.parametrize("res,tflop", [(16, 0.27), (32, 0.55), (64, 1.25), (128, 2.27), (256, 3.19), (512, 4.03), (1024, 4.85)])
def test_modconv_flops_match_spec(res, tflop):
    """SPEC 9: 3x3 modconv TFLOP per image at each stage."""
    total = sum(layer.conv_flops() for layer in generator_specs(res) if not layer.torgb)
    assert total / 1e12 == pytest.approx(tflop, abs=0.006)


def test_bad_resolution():
    with pytest.raises(ValueError, match="resolution"):
        generator_specs(48)
