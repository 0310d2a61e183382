"""Projected discriminator, DiffAugment and classifier guidance (SPEC 4, 5.6) on CPU.

Everything runs with weights="random" (no pretrained weights offline), batch 2, mostly with the
lite0 backbone only; one test builds the default DeiT-B + lite0 pair.

Legend: x_NCHW images in [-1, 1]; c_NC one-hot labels; logits_NL per-sample logits.
"""

from __future__ import annotations

import copy
import math
import socket

import pytest
import timm
import torch
import torch.nn.functional as F

import model.discriminator as disc_module
from model import diffaug
from model.discriminator import EMBED_DIM, Head, ProjectedDiscriminator
from model.feature_networks import DEIT_B, LITE0, FeatureNetwork
from model.guidance import ClassifierGuidance
from tests.conftest import assert_close

N = 2


def _lite0_d(c_dim: int = 0, **kwargs) -> ProjectedDiscriminator:
    return ProjectedDiscriminator(backbones=(LITE0,), c_dim=c_dim, weights="random", **kwargs)


def _onehot(labels: list[int], c_dim: int) -> torch.Tensor:
    return F.one_hot(torch.tensor(labels), c_dim).float()


def _trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ---------------------------------------------------------------- discriminator: shapes and sizes


@pytest.mark.parametrize("res, per_head", [(32, 16), (256, 25)])
def test_lite0_output_shape(res, per_head):
    """Below 224 lite0 sees 224 (4x4 per head); at 256 it sees native size (5x5 per head)."""
    D = _lite0_d()
    logits_NL = D(torch.rand(N, 3, res, res) * 2 - 1)
    assert logits_NL.shape == (N, 4 * per_head)
    assert D.num_logits(res) == (4 * per_head,)
    assert torch.isfinite(logits_NL).all()


def test_num_logits_native_resolutions():
    """SPEC 4.7: lite0 gives 64 logits at/below 224, then 100 / 676 / 3364 at 256 / 512 / 1024."""
    D = _lite0_d()
    assert [D.num_logits(r)[0] for r in (16, 128, 224, 256, 512, 1024)] == [64, 64, 64, 100, 676, 3364]


def test_trainable_parameter_counts():
    """SPEC 4.7: 10.33M trainable per backbone unconditional, 13.76M conditional (1.28M tables)."""
    d_uncond, d_cond = _lite0_d(), _lite0_d(c_dim=1000)
    assert round(_trainable(d_uncond) / 1e6, 2) == 10.33
    assert round(_trainable(d_cond) / 1e6, 2) == 13.76
    tables = sum(h.embed.weight.numel() for h in d_cond.discriminators[LITE0].heads)
    assert tables == 4 * 1000 * EMBED_DIM and round(tables / 1e6, 2) == 1.28
    # Not trained: lite0's CCM + CSM (0.38M) and its trunk; nothing trainable outside the heads.
    feat = d_uncond.feature_networks[LITE0]
    assert round(sum(p.numel() for p in feat.proj.parameters()) / 1e6, 2) == 0.38
    assert _trainable(d_uncond.feature_networks) == 0
    assert _trainable(d_uncond.discriminators) == _trainable(d_uncond)
    # Head DownBlock counts fixed by the nominal starts 128/64/32/16: 4, 3, 2, 1.
    assert [len(h.main) for h in d_uncond.discriminators[LITE0].heads] == [4, 3, 2, 1]


def test_head_width_scales_downblock_channels():
    """The tiny preset's quarter-width heads: every DownBlock output channel count times 0.25 (at
    least 8), the projected levels' input channels and the logit layout unchanged."""
    full, quarter = _lite0_d(c_dim=10), _lite0_d(c_dim=10, head_width=0.25)
    for hf, hq in zip(full.discriminators[LITE0].heads, quarter.discriminators[LITE0].heads):
        convs_f = [b[0].out_channels for b in hf.main]
        convs_q = [b[0].out_channels for b in hq.main]
        assert convs_q == [max(8, round(c / 4)) for c in convs_f]
        assert hq.main[0][0].in_channels == hf.main[0][0].in_channels
    assert quarter.num_logits(16) == full.num_logits(16)
    x_NCHW, c_NC = torch.rand(N, 3, 16, 16) * 2 - 1, _onehot([1, 7], 10)
    assert quarter(x_NCHW, c_NC).shape == full(x_NCHW, c_NC).shape
    assert _trainable(quarter) < 0.25 * _trainable(full)
    with pytest.raises(ValueError, match="head width"):
        _lite0_d(head_width=0.0)


def test_full_default_pair(monkeypatch):
    """DeiT-B + lite0: 64 logits each at a 32² input, SPEC 4.4/4.5 sizes, fresh augment per backbone."""
    D = ProjectedDiscriminator(weights="random")
    assert D.backbones == (DEIT_B, LITE0)
    deit = D.feature_networks[DEIT_B]
    assert round(sum(p.numel() for p in deit.reassemble.parameters()) / 1e6, 1) == 6.7
    assert round(sum(p.numel() for p in deit.proj.parameters()) / 1e6, 2) == 0.70
    assert round(_trainable(D.discriminators[DEIT_B]) / 1e6, 2) == 10.33
    assert _trainable(D) == 2 * _trainable(D.discriminators[LITE0])

    augmented, maps = [], {}
    real_augment = disc_module.diff_augment

    def recording_augment(x, **kw):
        augmented.append(real_augment(x, **kw))
        return augmented[-1]

    monkeypatch.setattr(disc_module, "diff_augment", recording_augment)
    deit.reassemble.register_forward_hook(lambda m, i, o: maps.setdefault("reassemble", o))
    deit.proj.register_forward_hook(lambda m, i, o: maps.setdefault("proj", o))
    with torch.no_grad():
        logits_NL = D(torch.rand(N, 3, 32, 32) * 2 - 1)
    assert logits_NL.shape == (N, 128) and D.num_logits(32) == (64, 64)
    assert torch.isfinite(logits_NL).all()
    assert [tuple(f.shape[1:]) for f in maps["reassemble"]] == [(96, 56, 56), (192, 28, 28), (384, 14, 14), (768, 7, 7)]
    assert [tuple(f.shape[1:]) for f in maps["proj"]] == [(64, 112, 112), (64, 56, 56), (128, 28, 28), (256, 14, 14)]
    assert len(augmented) == 2 and not torch.equal(augmented[0], augmented[1])


# ---------------------------------------------------------------- frozen parts, modes, gradients


def test_gradients_reach_image_not_frozen_parts():
    D = _lite0_d(c_dim=10)
    x_NCHW = (torch.rand(N, 3, 32, 32) * 2 - 1).requires_grad_(True)
    D(x_NCHW, _onehot([1, 7], 10)).sum().backward()
    assert x_NCHW.grad is not None and torch.isfinite(x_NCHW.grad).all() and x_NCHW.grad.abs().sum() > 0
    frozen = list(D.feature_networks.parameters())
    assert frozen and all(p.grad is None and not p.requires_grad for p in frozen)
    heads = list(D.discriminators.named_parameters())
    assert all(p.grad is not None for _, p in heads), [n for n, p in heads if p.grad is None]


def test_requires_grad_toggles_heads_only():
    """The G step freezes D: no weight grads, but the image still gets its gradient."""
    D = _lite0_d()
    D.requires_grad_(True)
    assert _trainable(D.feature_networks) == 0 and _trainable(D) == _trainable(D.discriminators) > 0
    D.requires_grad_(False)
    assert _trainable(D) == 0
    x_NCHW = torch.zeros(N, 3, 32, 32, requires_grad=True)
    D(x_NCHW).sum().backward()
    assert x_NCHW.grad.abs().sum() > 0
    assert all(p.grad is None for p in D.parameters())
    with pytest.raises(ValueError, match="frozen"):
        D.feature_networks[LITE0].requires_grad_(True)


def test_feature_networks_stay_in_eval_mode():
    D = _lite0_d()
    D.train()
    feat = D.feature_networks[LITE0]
    assert not any(m.training for m in feat.modules())
    assert all(m.training for m in D.discriminators.modules())
    bn = next(m for m in feat.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d))
    stats = bn.running_mean.clone()
    D(torch.rand(N, 3, 32, 32) * 2 - 1)
    assert torch.equal(bn.running_mean, stats)  # eval BatchNorm: running statistics untouched
    D.eval()
    assert not any(m.training for m in D.modules())


# ---------------------------------------------------------------- conditioning


def test_conditional_projection_math():
    """logit = sum_k out_k * cmap_k / sqrt(64) at every position, cmap from the head's own table."""
    table = torch.randn(1000, EMBED_DIM)
    head = Head(64, 16, c_dim=10, class_table=table).eval()
    other = Head(64, 16, c_dim=10, class_table=table)
    assert torch.equal(head.embed.weight, table) and head.embed.weight.data_ptr() != other.embed.weight.data_ptr()
    f_NCHW, c_NC = torch.randn(N, 64, 14, 14), _onehot([3, 9], 10)
    logits = head(f_NCHW, c_NC)
    out_NKHW = head.out(head.main(f_NCHW))
    cmap_NK = head.embed_proj(table[torch.tensor([3, 9])])
    expected = (out_NKHW * cmap_NK[:, :, None, None]).sum(1).flatten(1) / math.sqrt(64)
    assert logits.shape == (N, 16) and out_NKHW.shape[1] == 64
    assert_close(logits, expected)
    assert not torch.allclose(head(f_NCHW, _onehot([4, 9], 10))[0], logits[0])


def test_bad_inputs_raise():
    d_cond, d_uncond = _lite0_d(c_dim=10), _lite0_d()
    x_NCHW = torch.zeros(N, 3, 32, 32)
    with pytest.raises(ValueError, match="3, H, W"):
        d_uncond(torch.zeros(N, 4, 32, 32))
    with pytest.raises(ValueError, match="square"):
        d_uncond(torch.zeros(N, 3, 32, 16))
    with pytest.raises(ValueError, match="c_dim=10"):
        d_cond(x_NCHW, _onehot([1, 2], 12))
    with pytest.raises(ValueError, match="needs labels"):
        d_cond(x_NCHW, None)
    with pytest.raises(ValueError, match="c must be None"):
        d_uncond(x_NCHW, _onehot([1, 2], 10))
    with pytest.raises(ValueError, match="weights"):
        ProjectedDiscriminator(backbones=(LITE0,), weights="no/such/file.safetensors")
    with pytest.raises(ValueError, match="unknown backbone"):
        ProjectedDiscriminator(backbones=("resnet50",), weights="random")


def test_augment_generator_reproducible():
    """With a seeded generator two copies of D give identical logits; another seed differs."""
    d1 = _lite0_d()
    d2, d3 = copy.deepcopy(d1), copy.deepcopy(d1)
    x_NCHW = torch.rand(N, 3, 32, 32) * 2 - 1
    y1 = d1(x_NCHW, generator=torch.Generator().manual_seed(5))
    y2 = d2(x_NCHW, generator=torch.Generator().manual_seed(5))
    y3 = d3(x_NCHW, generator=torch.Generator().manual_seed(6))
    assert torch.equal(y1, y2) and not torch.allclose(y1, y3)


@pytest.mark.slow
def test_compiled_matches_eager():
    """fullgraph tracing (aot_eager: dynamo + AOTAutograd, no codegen) matches eager, state included."""
    d_eager = _lite0_d(c_dim=10, augment=False)
    d_comp = copy.deepcopy(d_eager)
    x_NCHW, c_NC = torch.rand(N, 3, 32, 32) * 2 - 1, _onehot([1, 7], 10)
    compiled = torch.compile(d_comp, backend="aot_eager", fullgraph=True)
    for _ in range(2):  # the second call reuses the graph with updated spectral-norm/BatchNorm state
        y_eager, y_comp = d_eager(x_NCHW, c_NC), compiled(x_NCHW, c_NC)
        assert_close(y_comp, y_eager, scale=10)
    buffers = list(zip(d_eager.discriminators.buffers(), d_comp.discriminators.buffers()))
    assert len(buffers) == 3 * 10 + 2 * 14  # BatchNorm stats of 10 DownBlocks, u/v of 14 convs
    for a, b in buffers:
        if a.is_floating_point():
            assert_close(b, a, dtype=torch.float32, scale=10)
        else:
            assert torch.equal(a, b)


def test_diff_augment_compiles():
    """DiffAugment traces with fullgraph and still draws fresh, per-sample augmentations."""
    augment = torch.compile(diffaug.diff_augment, backend="aot_eager", fullgraph=True)
    x_NCHW = (torch.rand(1, 3, 16, 16) * 2 - 1).expand(N, 3, 16, 16).requires_grad_(True)
    a, b = augment(x_NCHW), augment(x_NCHW)
    assert a.shape == x_NCHW.shape and not torch.equal(a, b) and not torch.equal(a[0], a[1])
    a.sum().backward()
    assert torch.isfinite(x_NCHW.grad).all()


# ---------------------------------------------------------------- weights: files and missing weights


def _refuse_network(*args, **kwargs):
    raise OSError("network disabled in tests")


def test_missing_pretrained_weights_message(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # read at import time by huggingface_hub
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    monkeypatch.setattr(socket.socket, "connect", _refuse_network)  # cannot hang on a socket
    builders = {
        LITE0: lambda: ProjectedDiscriminator(backbones=(LITE0,), weights="pretrained"),
        "deit_small_distilled_patch16_224": lambda: ClassifierGuidance(weights="pretrained"),
    }
    for name, build in builders.items():
        with pytest.raises(RuntimeError) as info:
            build()
        msg = str(info.value)
        assert name in msg and "offline" in msg
        assert "weights=<path" in msg and "Hugging Face cache" in msg and "weights='random'" in msg


def test_weights_from_local_file(tmp_path):
    full = timm.create_model(LITE0, pretrained=False)
    path = tmp_path / "lite0.pth"
    torch.save(full.state_dict(), path)
    feat = FeatureNetwork(LITE0, weights=str(path))
    assert torch.equal(feat.trunk.conv_stem.weight, full.conv_stem.weight)
    assert torch.equal(feat.trunk.blocks[6][0].conv_pwl.weight, full.blocks[6][0].conv_pwl.weight)


# ---------------------------------------------------------------- DiffAugment


def _params(**overrides) -> diffaug.AugmentParams:
    zeros = torch.zeros(N, dtype=torch.long)
    base = dict(brightness_N=torch.zeros(N), saturation_N=torch.ones(N), contrast_N=torch.ones(N),
                shift_h_N=zeros, shift_w_N=zeros, cutout_h_N=zeros, cutout_w_N=zeros)
    return diffaug.AugmentParams(**{**base, **overrides})


def test_translate_matches_loop_reference():
    x_NCHW = torch.randn(N, 3, 16, 16)
    shift_h, shift_w = torch.tensor([2, -2]), torch.tensor([-1, 2])
    out = diffaug.translate(x_NCHW, shift_h, shift_w)
    assert out.shape == x_NCHW.shape
    expected = torch.zeros_like(x_NCHW)
    for n in range(N):
        for i in range(16):
            for j in range(16):
                si, sj = i + int(shift_h[n]), j + int(shift_w[n])
                if 0 <= si < 16 and 0 <= sj < 16:
                    expected[n, :, i, j] = x_NCHW[n, :, si, sj]
    assert torch.equal(out, expected)
    assert (out[0, :, -2:] == 0).all() and (out[1, :, :2] == 0).all()  # zero fill, not wrap


def test_cutout_matches_loop_reference():
    x_NCHW = torch.randn(N, 3, 16, 16) + 5  # no zeros before the cutout
    side = diffaug.cutout_side(16)
    assert side == 3
    centre_h, centre_w = torch.tensor([0, 7]), torch.tensor([15, 8])  # a corner (clipped), an interior
    out = diffaug.cutout(x_NCHW, centre_h, centre_w, side, side)
    expected = x_NCHW.clone()
    for n in range(N):
        lo_h, lo_w = int(centre_h[n]) - side // 2, int(centre_w[n]) - side // 2
        expected[n, :, max(lo_h, 0):lo_h + side, max(lo_w, 0):lo_w + side] = 0
    assert torch.equal(out, expected)
    assert (out[1] == 0).sum() == 3 * side * side and (out[0] == 0).sum() == 3 * 2 * 2


def test_color_ops():
    x_NCHW = torch.rand(N, 3, 8, 8) * 2 - 1
    out = diffaug.color(x_NCHW, torch.tensor([0.3, -0.4]), torch.ones(N), torch.ones(N))
    assert_close(out - x_NCHW, torch.tensor([0.3, -0.4]).view(N, 1, 1, 1).expand_as(x_NCHW))
    gray = diffaug.color(x_NCHW, torch.zeros(N), torch.zeros(N), torch.ones(N))  # saturation 0
    assert_close(gray, x_NCHW.mean(1, keepdim=True).expand_as(x_NCHW))
    out = diffaug.color(x_NCHW, torch.zeros(N), torch.ones(N), torch.tensor([0.5, 1.5]))
    assert_close(out.mean((1, 2, 3)), x_NCHW.mean((1, 2, 3)))
    assert_close(out - out.mean((1, 2, 3), keepdim=True),
                 (x_NCHW - x_NCHW.mean((1, 2, 3), keepdim=True)) * torch.tensor([0.5, 1.5]).view(N, 1, 1, 1))


def test_draw_ranges():
    g = torch.Generator().manual_seed(0)
    p = diffaug.draw_params(4000, 32, 32, generator=g)
    s = diffaug.shift_limit(32)
    assert s == 4 and diffaug.cutout_side(32) == 6
    for shift in (p.shift_h_N, p.shift_w_N):
        assert shift.min() == -s and shift.max() == s
    for centre in (p.cutout_h_N, p.cutout_w_N):  # even side: centres in [0, 32]
        assert centre.min() == 0 and centre.max() == 32
    assert -0.5 <= p.brightness_N.min() and p.brightness_N.max() < 0.5
    assert 0 <= p.saturation_N.min() and p.saturation_N.max() < 2 and p.saturation_N.max() > 1.9
    assert 0.5 <= p.contrast_N.min() and p.contrast_N.max() < 1.5


def test_diff_augment_seeded_and_per_sample():
    x_NCHW = (torch.rand(1, 3, 32, 32) * 2 - 1).expand(4, 3, 32, 32)  # four identical images
    a = diffaug.diff_augment(x_NCHW, generator=torch.Generator().manual_seed(1))
    b = diffaug.diff_augment(x_NCHW, generator=torch.Generator().manual_seed(1))
    c = diffaug.diff_augment(x_NCHW, generator=torch.Generator().manual_seed(2))
    assert a.shape == x_NCHW.shape and a.dtype == x_NCHW.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert all(not torch.equal(a[i], a[j]) for i in range(4) for j in range(i + 1, 4))
    # Each sample carries its own zero cutout square (exactly zero across all channels).
    assert all(((a[i] == 0).all(0)).sum() >= diffaug.cutout_side(32) ** 2 for i in range(4))


def test_diff_augment_gradcheck():
    """apply_params is differentiable in the image (float64 gradcheck with fixed draws)."""
    p = diffaug.draw_params(N, 6, 6, generator=torch.Generator().manual_seed(3))
    x_NCHW = torch.randn(N, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: diffaug.apply_params(x, p), (x_NCHW,))
    out = diffaug.apply_params(x_NCHW, _params(shift_h_N=torch.tensor([1, 0]), cutout_h_N=torch.tensor([-9, -9])))
    out.sum().backward()
    assert (x_NCHW.grad[0, :, 0] == 0).all() and (x_NCHW.grad[1] != 0).all()  # shifted-out row: no grad


# ---------------------------------------------------------------- classifier guidance


def test_classifier_guidance():
    g = ClassifierGuidance(weights="random")
    g.train()
    assert not any(m.training for m in g.modules()) and _trainable(g) == 0
    x_NCHW = (torch.rand(N, 3, 32, 32) * 2 - 1).requires_grad_(True)
    c_NC = _onehot([3, 999], 1000)
    loss = g(x_NCHW, c_NC)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x_NCHW.grad).all() and x_NCHW.grad.abs().sum() > 0
    assert all(p.grad is None for p in g.parameters())
    with torch.no_grad():
        # Manual pipeline: (x+1)/2, ImageNet normalization, resize to 224, average of both heads.
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        x = ((x_NCHW + 1) / 2 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
        tokens = g.classifier.forward_features(x)
        logits = (g.classifier.head(tokens[:, 0]) + g.classifier.head_dist(tokens[:, 1])) / 2
        assert_close(g.logits(x_NCHW), logits, scale=10)
        assert_close(loss.detach(), F.cross_entropy(logits, torch.tensor([3, 999])), scale=10)
    with pytest.raises(ValueError, match="one-hot"):
        g(x_NCHW, torch.zeros(N, 1001))
