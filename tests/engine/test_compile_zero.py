"""torch.compile x DeepSpeed ZeRO stage {0, 2, 3} x both networks, on CPU (gloo, rank 0 of 1).

The GPU recipe compiles G and D and wraps each in a DeepSpeed engine; on a GPU that combination
had never run (fullgraph compile of the modules' __call__ met DeepSpeed's hooks and stopped at
the first forward, at every ZeRO stage). Here each combination runs two real iterations through
the backend with `compile=True` and is compared with the eager plain-PyTorch iteration:
- compiled regions exist for G and for D and actually ran (Dynamo compiled frames);
- the second iteration runs under `fail_on_recompile` (one graph per phase, phase toggles
  included);
- the weight updates match eager within a tolerance measured on this machine: compiled kernels
  sum in another order, and D's random trunk amplifies that in the gradients (G's gradient
  differs by ~0.5% of its norm); Adam's first steps turn a gradient into about lr * sign(g),
  so the updates are compared with an absolute tolerance in units of the learning rate;
- under ZeRO-3 no frozen parameter is partitioned, every trainable one is, and the ZeRO-3 case
  uses a grown 32² G so that G has frozen blocks to compile too.
"""

from __future__ import annotations

import copy

import pytest
import torch

from engine.compile import uncompiled_copy
from engine.distributed import DeepSpeedBackend, PlainBackend, frozen_params_as_buffers
from model.discriminator import ProjectedDiscriminator
from model.generator import build_generator, grow
from tests.engine import ds_steps
from tests.engine.test_distributed import ds_world, needs_ds  # noqa: F401 (fixture)

CHUNKS = [slice(0, 2), slice(2, 4)]
# Measured here (2 cores): mean 0.027 lr (G) / 0.040 lr (D), 1.2% (G) / 0.5% (D) of the elements
# above lr / 2, the same for ZeRO-0 and ZeRO-2. An untrained, frozen or sign-flipped network
# gives a mean of O(1) lr with most elements far off.
MEAN_TOL_LR = 0.15  # mean |compiled update - eager update| over a network's elements, in lr
FAR_FRACTION = 0.05  # fraction of elements whose updates differ by more than lr / 2


def _models(res: int):
    G, D = ds_steps.build_models(seed=0)
    if res == 32:
        torch.manual_seed(1)
        G = grow(G)
    return G, D


def _batch(res: int, z_dim: int) -> dict:
    b = ds_steps.make_batch(7, ds_steps.BATCH, z_dim)
    if res != 16:
        b["real"] = torch.nn.functional.interpolate(b["real"], size=(res, res), mode="bilinear")
    return b


def _run(be, G0, D0, batch, res, compile: bool, iters: int = 2):
    G, D = copy.deepcopy(G0), copy.deepcopy(D0)
    torch.manual_seed(0)
    torch._dynamo.reset()
    be.setup(G, D, ds_steps.OPTIM, compile=compile)
    info = {"G_regions": sum("forward" in m.__dict__ for m in G.modules()),
            "D_regions": sum("forward" in m.__dict__ for m in D.modules()),
            "partitioned": [hasattr(p, "ds_tensor") for p in be.trainable["G"] + be.trainable["D"]],
            "frozen_partitioned": [hasattr(t, "ds_tensor") for m in (G, D) for t in m.state_dict(keep_vars=True).values()
                                   if isinstance(t, torch.nn.Parameter) and not t.requires_grad]}
    for it in range(iters):
        if it == 0:
            ds_steps.iteration(be, batch, CHUNKS, D.num_logits(res), ema_beta=0.5)
        else:
            with torch.compiler.set_stance("fail_on_recompile"):
                ds_steps.iteration(be, batch, CHUNKS, D.num_logits(res), ema_beta=0.5)
    info["frames"] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    parts = be.state_dicts()
    be.close()
    return parts, info


def _update_error_in_lr(got: dict, want: dict, init: dict, part: str, lr: float) -> tuple[float, float]:
    """(mean, fraction above 0.5) over the trained tensors' elements of |(got - init) - (want - init)| / lr."""
    errs = [((got[part][k] - want[part][k]).abs() / lr).flatten() for k in want[part]
            if want[part][k].is_floating_point() and not torch.equal(want[part][k], init[k])]
    errs = torch.cat(errs)
    return float(errs.mean()), float((errs > 0.5).float().mean())


@pytest.fixture(scope="module")
def eager_refs():
    refs = {}
    for res in (16, 32):
        G0, D0 = _models(res)
        batch = _batch(res, G0.cfg.z_dim)
        refs[res] = (G0, D0, batch, _run(PlainBackend(), G0, D0, batch, res, compile=False)[0])
    return refs


@needs_ds
@pytest.mark.parametrize("stage,res", [(0, 16), (2, 16), (3, 32)])
def test_compiled_deepspeed_matches_eager(stage, res, ds_world, eager_refs):  # noqa: F811
    G0, D0, batch, want = eager_refs[res]
    got, info = _run(DeepSpeedBackend(zero_stage=stage, batch_gpu=2), G0, D0, batch, res, compile=True)
    assert info["G_regions"] >= 1 and info["D_regions"] >= 1, info
    assert info["frames"] >= 2, info  # compiled code ran (several graphs: phases, regions)
    if stage == 3:
        assert all(info["partitioned"]), "every trainable parameter is partitioned under ZeRO-3"
        frozen = info["frozen_partitioned"]
        assert frozen and not any(frozen), "frozen parameters became buffers (never partitioned)"
    for part, init, net in (("G", G0.state_dict(), "G"), ("D", D0.state_dict(), "D")):
        lr = ds_steps.OPTIM.adam(net)["lr"]
        mean, far = _update_error_in_lr(got, want, init, part, lr)
        print(f"ZeRO-{stage} {part}: update error mean {mean:.4f} lr, {far:.4f} of the elements above lr / 2")
        assert mean <= MEAN_TOL_LR and far <= FAR_FRACTION, (part, mean, far)
    mean, far = _update_error_in_lr(got, want, G0.state_dict(), "G_ema", ds_steps.OPTIM.adam("G")["lr"])
    assert mean <= MEAN_TOL_LR and far <= FAR_FRACTION, ("G_ema", mean, far)


def test_frozen_params_as_buffers_keeps_state_and_function():
    """The ZeRO-3 transform: same state dict, same output and input gradient, no frozen parameters."""
    _, D = ds_steps.build_models(seed=0)
    D.eval()
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    c = torch.eye(ds_steps.C_DIM)[:2]
    want_sd = {k: v.clone() for k, v in D.state_dict().items()}
    want = D(x, c)
    (gx_want,) = torch.autograd.grad(want.sum(), x)
    restore = frozen_params_as_buffers(D)
    assert all(p.requires_grad for p in D.parameters())
    assert D.state_dict().keys() == want_sd.keys()
    got = D(x, c)
    (gx_got,) = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(gx_got, gx_want)
    restore()
    assert list(D.state_dict()) == list(want_sd) and any(not p.requires_grad for p in D.parameters())


def test_ema_copy_computes_with_its_own_weights():
    """A per-instance forward (compiled, or activation-checkpointed) copied by deepcopy would still
    call the original module: the EMA generator would render the training weights."""
    from engine.memory import checkpoint_synthesis

    G = build_generator("tiny", 16, 0)
    checkpoint_synthesis(G, 16)
    G.forward = torch.compile(G.forward, backend="eager", fullgraph=True)
    copy_ = uncompiled_copy(G)
    with torch.no_grad():
        for p in copy_.parameters():
            p.mul_(0.5)
    z = torch.randn(2, G.cfg.z_dim)
    fresh = build_generator("tiny", 16, 0)
    fresh.load_state_dict(copy_.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(copy_(z), fresh(z))
        assert not torch.allclose(copy_(z), G(z))


@needs_ds
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_gradients_are_reduced_in_fp32_under_bf16_autocast(stage, ds_world):  # noqa: F811
    """D under DeepSpeed's torch_autocast: by default DeepSpeed marks every Conv2d/Linear parameter
    for bf16 gradient communication; the engine keeps every reduction in fp32 (REDUCE_DTYPE)."""
    from deepspeed.runtime.torch_autocast import get_comm_dtype

    from engine.distributed import REDUCE_DTYPE

    G, D = ds_steps.build_models(seed=0, c_dim=0)
    be = DeepSpeedBackend(zero_stage=stage, batch_gpu=2, precision={"D": "autocast_bf16"})
    cfg = be.config("D", ds_steps.OPTIM)
    assert cfg["communication_data_type"] == "fp32" and cfg["torch_autocast"]["lower_precision_safe_modules"] == []
    be.setup(G, D, ds_steps.OPTIM)
    try:
        assert REDUCE_DTYPE == torch.float32
        for net in ("G", "D"):
            engine = be.engines[net]
            assert engine.communication_data_type == REDUCE_DTYPE, net
            assert {get_comm_dtype(p) for p in be.trainable[net]} == {REDUCE_DTYPE}, net
            buckets = getattr(engine.optimizer, "ipg_buckets", None)
            if stage > 0:
                assert set(buckets) == {REDUCE_DTYPE}, (net, set(buckets))
    finally:
        be.close()
