"""Blur, loss reductions and schedules against hand computations of the spec's formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.config import TrainConfig
from engine.losses import blur, d_loss, g_loss, reduce_terms
from tests.conftest import assert_close


def _np_blur(img, sigma):
    r = int(math.floor(3 * sigma))
    if r == 0:
        return img
    x = np.arange(-r, r + 1)
    f = 2.0 ** (-((x / sigma) ** 2))
    f /= f.sum()
    pad = np.pad(img, ((0, 0), (0, 0), (r, r), (r, r)))
    out = np.zeros_like(img)
    h, w = img.shape[2:]
    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = np.einsum("ncij,i,j->nc", pad[:, :, i:i + 2 * r + 1, j:j + 2 * r + 1], f, f)
    return out


@pytest.mark.parametrize("sigma", [2.0, 1.3, 0.5, 0.3, 0.0])
def test_blur_matches_base2_gaussian(sigma):
    img = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    assert_close(blur(img, sigma), torch.from_numpy(_np_blur(img.numpy(), sigma)))


def test_reductions():
    logits = torch.tensor([[1.0, 3.0, -2.0], [0.0, 1.0, 5.0]])
    split = (2, 1)  # backbone A has 2 logits per sample, backbone B 1
    # sum: per sample and backbone the mean, summed: (2 + -2) + (0.5 + 5)
    assert reduce_terms(logits, split, "sum").item() == pytest.approx(5.5)
    assert reduce_terms(logits, split, "mean").item() == pytest.approx((2 + 0.5) / 2 + (-2 + 5) / 2)
    assert g_loss(logits, split, "sum").item() == pytest.approx(-5.5)
    fake, real = torch.tensor([[-2.0, 0.0, 1.0]]), torch.tensor([[2.0, 0.5, -1.0]])
    # relu(1 + fake): A mean(0, 1) = 0.5, B 2; relu(1 - real): A mean(0, 0.5) = 0.25, B 2
    assert d_loss(fake, real, split, "sum").item() == pytest.approx(0.5 + 2 + 0.25 + 2)


def test_ema_beta_and_blur_schedule():
    cfg = TrainConfig(stage=16, batch=64, batch_gpu=8)
    assert cfg.ema_beta(10**9) == pytest.approx(0.997784, abs=1e-6)  # SPEC 5.7
    assert cfg.ema_beta(6250 * 64 // 2) < cfg.ema_beta(10**9)  # still ramping up
    assert cfg.blur_sigma(0) == 2.0 and cfg.blur_sigma(150_000) == pytest.approx(1.0) and cfg.blur_sigma(400_000) == 0.0
    assert cfg.optim.adam("G")["lr"] == pytest.approx(0.002)
    assert cfg.optim.adam("D")["betas"][1] == pytest.approx(0.99 ** (16 / 17))
    with pytest.raises(ValueError, match="multiple of batch_gpu"):
        TrainConfig(stage=16, batch=30, batch_gpu=8)
    with pytest.raises(ValueError, match="stage"):
        TrainConfig(stage=24)
