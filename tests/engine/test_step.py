"""engine/step.py, the one training iteration: EMA against a hand computation (beta != 0.5, where
beta and 1 - beta differ), the EMA schedule with its ramp-up, which phase trains what, the profiler
ranges, and the per-phase losses kept on the device."""

from __future__ import annotations

import math

import pytest
import torch

from engine.config import TrainConfig
from engine.distributed import PlainBackend
from engine.step import PathLength, PhaseLosses, onehot, train_iteration
from tests.engine import ds_steps


def _setup(c_dim: int = ds_steps.C_DIM):
    G, D = ds_steps.build_models(seed=0, c_dim=c_dim)
    be = PlainBackend()
    be.setup(G, D, ds_steps.OPTIM)
    return be, D.num_logits(ds_steps.RES)


def _draws(seed: int, n: int = 2, c_dim: int = ds_steps.C_DIM):
    """A draw() of fixed latents and integer labels, and one chunk of reals."""
    g = torch.Generator().manual_seed(seed)
    z = {ph: torch.randn(n, 64, generator=g) for ph in ("G", "pl", "D")}
    c = {ph: torch.randint(0, c_dim, (n,), generator=g) for ph in ("G", "pl", "D")}
    reals = [(torch.rand(n, 3, ds_steps.RES, ds_steps.RES, generator=g) * 2 - 1, torch.randint(0, c_dim, (n,), generator=g))]
    return reals, (lambda phase, r, k: (z[phase][:k], c[phase][:k]))


def _g_params(be) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in be.g_module.named_parameters()}


def test_ema_after_two_iterations_equals_hand_computation():
    """G_ema = beta * G_ema + (1 - beta) * G after each iteration, every parameter (frozen ones
    too); beta = 0.8 so that a swapped weight (1 - beta) gives a different answer."""
    be, split = _setup()
    beta = 0.8
    g0 = _g_params(be)
    snapshots = []
    for it in range(2):
        reals, draw = _draws(it)
        train_iteration(be, reals, draw, split=split, c_dim=ds_steps.C_DIM, ema_beta=beta)
        snapshots.append(_g_params(be))
    g1, g2 = snapshots
    ema = be.ema_state_dict()
    moved = 0
    for k in g0:
        want = beta * (beta * g0[k].double() + (1 - beta) * g1[k].double()) + (1 - beta) * g2[k].double()
        torch.testing.assert_close(ema[k].double(), want, rtol=1e-5, atol=1e-6, msg=f"G_ema {k}")
        moved += not torch.equal(g2[k], g0[k])
    assert moved > len(g0) // 2, "G's trainable parameters should have moved"


@pytest.mark.parametrize("cur_nimg,expected", [
    (0, 0.0),  # ramp-up: the EMA starts as a copy of G
    (100_000, 0.5 ** (32 / 5_000)),  # ramp-up: half-life = 0.05 * 100k images = 5k
    (1_000_000, 0.5 ** (32 / 10_000)),  # past the ramp-up: the 10 kimg half-life
])
def test_ema_beta_schedule(cur_nimg, expected):
    cfg = TrainConfig(stage=16, batch=32, batch_gpu=8, ema_kimg=10, ema_rampup=0.05)
    assert math.isclose(cfg.ema_beta(cur_nimg), expected, rel_tol=1e-12, abs_tol=1e-300)
    # Written out: 0.99557368 and 0.99778439 per iteration of 32 images.
    assert cfg.ema_beta(1_000_000) == pytest.approx(0.9977843871, abs=1e-10)
    assert cfg.ema_beta(100_000) == pytest.approx(0.9955736832, abs=1e-10)


def test_no_rampup_default_half_life():
    cfg = TrainConfig(stage=16, batch=8, batch_gpu=8, ema_rampup=None)  # half-life batch * 10 / 32 kimg = 2.5k
    assert cfg.ema_beta(0) == pytest.approx(0.5 ** (8 / 2500), rel=1e-12)


def test_phases_train_their_network_and_show_in_a_profile():
    """G's phase moves G's trainable parameters only, D's phase D's heads only (the feature networks
    stay frozen), the path-length phase runs when asked; each phase is a named profiler range."""
    be, split = _setup()
    d0 = {k: v.detach().clone() for k, v in be.d_module.named_parameters()}
    g0 = _g_params(be)
    reals, draw = _draws(0)
    pl = PathLength(batch=2, weight=2.0, decay=0.01, mean=torch.tensor(0.0))
    losses = PhaseLosses(torch.device("cpu"))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        train_iteration(be, reals, draw, split=split, c_dim=ds_steps.C_DIM, ema_beta=0.9, pl=pl, losses=losses,
                        sigma=torch.tensor(1.0))
    names = {e.name for e in prof.events()}
    assert {"G_main", "G_pl", "D_main", "G_ema"} <= names
    assert pl.mean.item() > 0, "the path-length mean should have been updated"
    d1 = dict(be.d_module.named_parameters())
    assert any(not torch.equal(d0[k], d1[k]) for k in d0 if k.startswith("discriminators."))
    assert all(torch.equal(d0[k], d1[k]) for k in d0 if k.startswith("feature_networks."))
    assert any(not torch.equal(g0[k], v) for k, v in be.g_module.named_parameters())
    read = losses.read()
    assert set(read) == {"G", "pl", "D"} and all(math.isfinite(v) for v in read.values())
    assert losses.read() == {}, "read() clears the sums"


def test_phase_losses_are_means_kept_on_the_device():
    losses = PhaseLosses(torch.device("cpu"))
    for v in (1.0, 2.0, 6.0):
        losses.add("D", torch.tensor([v]))
    losses.add("G", torch.tensor(-1.0))
    assert all(isinstance(t, torch.Tensor) for t in losses.sums.values())
    assert losses.read() == {"D": 3.0, "G": -1.0}


def test_onehot():
    c = torch.tensor([2, 0])
    assert torch.equal(onehot(c, 3), torch.tensor([[0.0, 0, 1], [1, 0, 0]]))
    f = torch.rand(2, 3)
    assert onehot(f, 3) is f and onehot(None, 3) is None


def test_every_forward_gets_the_labels_it_belongs_to():
    """Class conditioning is wired through: G generates each chunk with the labels drawn for it, D
    scores those fakes with the same labels (one-hot) and the reals with their own. A G that
    trains against mismatched labels still lowers FID and learns some class signal from D, so
    the learning test alone cannot see this (measured: tests/engine/test_learning.py)."""
    be, split = _setup()
    reals, draw = _draws(5, n=2)
    calls, forward = [], be.forward

    def recording(net, *args, **kwargs):
        calls.append((net, args[1].clone()))
        return forward(net, *args, **kwargs)

    be.forward = recording
    train_iteration(be, reals, draw, split=split, c_dim=ds_steps.C_DIM, ema_beta=0.5)
    c_of = {ph: draw(ph, 0, 2)[1] for ph in ("G", "D")}
    oh = lambda c: onehot(c, ds_steps.C_DIM)  # noqa: E731
    assert [n for n, _ in calls] == ["G", "D", "G", "D", "D"]
    (_, g_c), (_, d_c), (_, g2_c), (_, fake_c), (_, real_c) = calls
    assert torch.equal(g_c, c_of["G"]) and torch.equal(d_c, oh(c_of["G"]))  # G phase: G(z, c) then D(img, c)
    assert torch.equal(g2_c, c_of["D"]) and torch.equal(fake_c, oh(c_of["D"]))  # D phase: fakes with their labels
    assert torch.equal(real_c, oh(reals[0][1]))  # reals with their own
    assert not torch.equal(c_of["G"], c_of["D"])  # the seed draws different labels per phase: the test can tell
