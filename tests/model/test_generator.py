"""Generator: the paper preset's structure, every stage, growing, w_avg and truncation, precision."""

from __future__ import annotations

import pytest
import torch

from model.generator import build_generator, grow
from model.specs import generator_specs
from tests.conftest import assert_close

STAGES = (16, 32, 64, 128, 256, 512, 1024)


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_16_matches_spec_worked_example():
    g = build_generator("paper", 16, 1000, dtype="float32")
    assert _params(g) == 101_883_463
    assert _params(g.mapping) == 669_248
    assert _params(g.synthesis.input) == 1_050_628
    rows = g.layer_specs()
    assert [r["name"] for r in rows] == [f"L{i}_36_1024" for i in range(9)] + ["L9_16_1024", "L10_16_3"]
    assert all(r["padding"] == [9, 8, 9, 8] for r in rows[:9]) and rows[9]["padding"] == [-11, -12, -11, -12]
    assert [r["critically_sampled"] for r in rows] == [False] * 8 + [True] * 3
    layer = g.synthesis.layers["L0_36_1024"]
    assert tuple(layer.weight.shape) == (1024, 1024, 3, 3) and layer.up_filter.shape == (12,)
    assert g.synthesis.num_ws == g.mapping.num_ws == 12


@pytest.mark.parametrize("res", STAGES)
def test_paper_every_stage_builds_with_spec_structure(res):
    with torch.device("meta"):
        g = build_generator("paper", res, 1000)
    specs = generator_specs(res)
    assert list(g.synthesis.layers) == [s.name for s in specs]
    assert len(specs) == {16: 11, 32: 16, 64: 21, 128: 26, 256: 31, 512: 36, 1024: 41}[res]
    for s in specs:
        layer = g.synthesis.layers[s.name]
        assert tuple(layer.weight.shape) == (s.out.channels, s.inp.channels, s.kernel_size, s.kernel_size)
        assert (layer.up_filter is None) == (s.up_taps == 1)
    assert g.mapping.num_ws == len(specs) + 1


@pytest.mark.parametrize("res", STAGES)
def test_tiny_every_stage_runs_forward(res):
    g = build_generator("tiny", res, 5)
    img = g(torch.randn(1, 64), torch.tensor([3]))
    assert img.shape == (1, 3, res, res) and img.dtype == torch.float32
    assert torch.isfinite(img).all() and img.abs().max() > 0


def test_growing_keeps_frozen_activations_and_freezes_parameters():
    g16 = build_generator("tiny", 16, 5)
    g16.mapping.w_avg.normal_()
    g32 = grow(g16)
    z, c = torch.randn(2, 64), torch.tensor([1, 4])
    kept = g32.frozen_prefix()
    assert kept == [s.name for s in g16.specs if not s.critical]
    a = g16.synthesis(g16.mapping(z, c), stop_after=kept[-1])
    b = g32.synthesis(g32.mapping(z, c), stop_after=kept[-1])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(g32.mapping.w_avg, g16.mapping.w_avg)
    g32(z, c).square().mean().backward()
    for name, p in g32.named_parameters():
        frozen = name.startswith("mapping.") or any(name.startswith(f"synthesis.layers.{k}.") for k in kept)
        assert (p.grad is None) == frozen, name
        assert p.requires_grad != frozen, name
    assert g32.synthesis.input.weight.grad is not None  # D1 default: the input keeps training
    g32b = grow(g16, train_input=False)
    assert not any(p.requires_grad for p in g32b.synthesis.input.parameters())


def test_truncation_psi_zero_returns_class_w_avg():
    g = build_generator("tiny", 16, 5)
    g.mapping.w_avg.normal_()
    c = torch.tensor([2, 0, 2])
    ws = g.mapping(torch.randn(3, 64), c, psi=0.0)
    assert_close(ws, g.mapping.w_avg[c].unsqueeze(1).expand_as(ws))
    ws_t = g.mapping(torch.randn(3, 64), c, psi=torch.tensor(0.0), truncation_cutoff=2)
    assert_close(ws_t[:, :2], g.mapping.w_avg[c].unsqueeze(1).expand(3, 2, -1))
    assert not torch.allclose(ws_t[:, 2:], g.mapping.w_avg[c].unsqueeze(1).expand(3, ws_t.shape[1] - 2, -1))


def test_w_avg_update_matches_sequential_loop():
    g = build_generator("tiny", 16, 6).double()
    g.mapping.w_avg.normal_()
    start = g.mapping.w_avg.clone()
    z = torch.randn(9, 64, dtype=torch.float64)
    c = torch.tensor([1, 3, 1, 1, 5, 3, 0, 1, 5])
    with torch.no_grad():
        w = g.mapping(z, c)[:, 0]
        g.mapping(z, c, update_w_avg=True)
    want = start.clone()
    for i in range(9):  # the original's loop: w_avg[label] = lerp(w_i, w_avg[label], beta)
        want[c[i]] = w[i] + 0.998 * (want[c[i]] - w[i])
    assert_close(g.mapping.w_avg, want)
    gu = build_generator("tiny", 16, 0).double()
    with torch.no_grad():
        w = gu.mapping(z)[:, 0]
        gu.mapping(z, update_w_avg=True)
    assert_close(gu.mapping.w_avg, w.mean(0) * 0.002)


def test_bad_inputs_raise_clear_errors():
    g = build_generator("tiny", 16, 5)
    with pytest.raises(ValueError, match="class indices must be in \\[0, 5\\)"):
        g(torch.randn(2, 64), torch.tensor([1, 5]))
    with pytest.raises(ValueError, match="one-hot c must have shape"):
        g(torch.randn(2, 64), torch.zeros(2, 7))
    with pytest.raises(ValueError, match="z must have shape"):
        g(torch.randn(2, 32), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="conditional"):
        g(torch.randn(2, 64))
    with pytest.raises(ValueError, match="resolution"):
        build_generator("tiny", 48)
    with pytest.raises(ValueError, match="preset"):
        build_generator("huge", 16)


def test_one_hot_and_integer_labels_agree():
    g = build_generator("tiny", 16, 5)
    z = torch.randn(2, 64)
    c = torch.tensor([4, 1])
    assert_close(g(z, c), g(z, torch.nn.functional.one_hot(c, 5).float()))


def test_bfloat16_compute_close_to_float32():
    g32 = build_generator("tiny", 32, 5)
    gbf = build_generator("tiny", 32, 5, dtype="bfloat16")
    gbf.load_state_dict(g32.state_dict())
    z, c = torch.randn(2, 64), torch.tensor([0, 3])
    a, b = g32(z, c), gbf(z, c)
    assert b.dtype == torch.float32
    torch.testing.assert_close(b, a, atol=0.05 * float(a.detach().abs().max()), rtol=0.05)
    assert all(p.dtype == torch.float32 for p in gbf.parameters())  # fp32 master weights


def test_path_length_double_backward_eager():
    """grad of sum(img * noise) w.r.t. ws with create_graph, then backward: what Greg needs."""
    g = build_generator("tiny", 16, 5)
    ws = g.mapping(torch.randn(2, 64), torch.tensor([0, 1])).detach().requires_grad_()
    img = g.synthesis(ws)
    (grad,) = torch.autograd.grad((img * torch.randn_like(img)).sum(), ws, create_graph=True)
    grad.square().sum().backward()
    layer = g.synthesis.layers[g.specs[0].name]
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
    assert layer.weight.grad.abs().sum() > 0


def test_triton_path_matches_reference_through_the_generator():
    """The whole 16² tiny generator through the Triton kernels (interpreter on CPU) vs reference."""
    g_ref = build_generator("tiny", 16, 5, impl="ref")
    g_tri = build_generator("tiny", 16, 5, impl="triton")
    g_tri.load_state_dict(g_ref.state_dict())
    ws = g_ref.mapping(torch.randn(1, 64), torch.tensor([2])).detach()
    ws_a, ws_b = ws.clone().requires_grad_(), ws.clone().requires_grad_()
    a, b = g_ref.synthesis(ws_a), g_tri.synthesis(ws_b)
    assert_close(b, a, scale=4)
    dy = torch.randn_like(a)
    assert_close(torch.autograd.grad(b, ws_b, dy)[0], torch.autograd.grad(a, ws_a, dy)[0], scale=40)


def test_class_embeddings_from_features():
    from model.mapping import class_embeddings_from_features

    feats = torch.randn(7, 320)
    labels = torch.tensor([0, 2, 0, 2, 2, 0, 3])
    table = class_embeddings_from_features(feats, labels, c_dim=5)
    assert table.shape == (1000, 320)
    for k in (0, 2, 3):
        assert_close(table[k], feats[labels == k].mean(0))
    g = build_generator("tiny", 16, 5, class_embeddings=table)
    assert torch.equal(g.mapping.embed.weight, table)
